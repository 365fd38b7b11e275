"""davproxy's own state behind one interface: SQLite or PostgreSQL (engines.py).

Share records, notifications, and the migrations that shape them.
"""

from davproxy.store.core import Store, StoreInfo
from davproxy.store.engines import StoreConflict, StoreError

__all__ = ["Store", "StoreConflict", "StoreError", "StoreInfo"]
