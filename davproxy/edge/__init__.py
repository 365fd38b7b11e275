"""The HTTP edge.

Server and application, the route table, forwarding to the upstream, monitoring.
"""
