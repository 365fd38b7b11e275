"""davproxy's own state: one SQLite file through sqlite-utils, in WAL mode.

All SQL lives in this module, behind verbs that return plain values, so handlers never
see a cursor and a server-grade backend can replace this one without touching them.
The schema evolves by numbered migrations applied in order, each in its own
transaction, recorded in ``schema_migrations``; a store written by a newer davproxy is
refused rather than damaged.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

log = logging.getLogger("davproxy.store")


class StoreError(Exception):
    """The store cannot be opened or is not one this davproxy can use."""


Migration = Callable[[sqlite_utils.Database], None]


def _m001_meta(db: sqlite_utils.Database) -> None:
    meta = db.table("meta")
    meta.create({"key": str, "value": str}, pk="key")
    meta.insert({"key": "instance_id", "value": str(uuid.uuid4())})


# Append only: a released migration is never edited, only followed by a new one.
MIGRATIONS: tuple[tuple[int, str, Migration], ...] = ((1, "meta", _m001_meta),)


@dataclass(frozen=True, slots=True)
class StoreInfo:
    path: Path
    schema_version: int
    instance_id: str
    journal_mode: str


class Store:
    def __init__(self, db: sqlite_utils.Database, path: Path) -> None:
        self.db = db
        self.path = path

    @classmethod
    def open(cls, path: Path) -> Store:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA foreign_keys = ON")
            db = sqlite_utils.Database(conn)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                log.warning("store %s: journal mode is %s, not WAL", path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")  # safe with WAL: no corruption on crash
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from None
        store = cls(db, path)
        store.migrate()
        return store

    def migrate(self) -> int:
        conn = self.db.conn
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"store {self.path} is not a usable SQLite database: {exc}") from None
        known = {version for version, _, _ in MIGRATIONS}
        if applied - known:
            raise StoreError(
                f"store {self.path} has schema version {max(applied)}, newer than this "
                f"davproxy knows ({max(known)}); upgrade davproxy or use another store"
            )
        for version, name, migration in MIGRATIONS:
            if version in applied:
                continue
            try:
                conn.execute("BEGIN IMMEDIATE")
                migration(self.db)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, time.time()),
                )
                conn.execute("COMMIT")
            except Exception:
                conn.execute("ROLLBACK")
                raise
            log.info("store %s: applied migration %03d %s", self.path, version, name)
        return self.schema_version()

    def schema_version(self) -> int:
        row = self.db.conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def info(self) -> StoreInfo:
        conn = self.db.conn
        instance = conn.execute("SELECT value FROM meta WHERE key = 'instance_id'").fetchone()
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        return StoreInfo(self.path, self.schema_version(), instance[0], mode)

    def integrity_ok(self) -> bool:
        return bool(self.db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok")

    def close(self) -> None:
        self.db.conn.close()
