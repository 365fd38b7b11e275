"""Subscriptions.

.ics feeds fetched, split, stored and served as read-only, syncable CalDAV collections.
"""
