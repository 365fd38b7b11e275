"""davproxy: sharing, notifications and sync-capable subscriptions in front of a DAV server."""

__version__ = "0.1.0"
