"""Collection sharing in both wire flavours.

Share records, requests, properties, notifications, sharees' copies.
"""
