"""One upstream as its mapping file describes it.

The connection and layout, how users prove who they are, who the users are.
"""
