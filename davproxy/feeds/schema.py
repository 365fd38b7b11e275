"""The feed tables: sources (one per URL), their items and users' subscriptions.

Applied as migration 4 by the store (``store/migrations.py``); the verbs over them are
in ``feeds/store.py``.
"""

from __future__ import annotations

from typing import Protocol


class _Schema(Protocol):  # store/migrations.py's Schema
    def execute(self, sql: str) -> None: ...


def feed_tables(db: _Schema) -> None:
    # One row per unique source URL, shared by every subscriber: one origin fetch each.
    # ``tag`` is random so a sync token of a deleted source never matches a new one.
    db.execute(
        """CREATE TABLE feed_sources (
            id INTEGER PRIMARY KEY,
            url TEXT NOT NULL UNIQUE,
            fetch_url TEXT NOT NULL,
            tag TEXT NOT NULL UNIQUE,
            etag TEXT,
            last_modified TEXT,
            body_hash TEXT,
            suspect_hash TEXT,
            meta TEXT NOT NULL DEFAULT '{}',
            timezones TEXT NOT NULL DEFAULT '{}',
            revision INTEGER NOT NULL DEFAULT 0,
            min_revision INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL DEFAULT 'new',
            error TEXT NOT NULL DEFAULT '',
            failures INTEGER NOT NULL DEFAULT 0,
            last_attempt REAL,
            last_success REAL,
            last_change REAL,
            next_fetch REAL NOT NULL DEFAULT 0,
            interval INTEGER,
            bytes INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL
        )"""
    )
    # One row per calendar object resource (UID); deletions stay as tombstones so
    # sync-collection and enhanced GET can report them; one revision per change.
    db.execute(
        """CREATE TABLE feed_items (
            source_id INTEGER NOT NULL REFERENCES feed_sources (id) ON DELETE CASCADE,
            href TEXT NOT NULL,
            uid TEXT NOT NULL,
            kind TEXT NOT NULL,
            text TEXT NOT NULL,
            body_start INTEGER NOT NULL,
            tzids TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            etag TEXT NOT NULL,
            revision INTEGER NOT NULL,
            modified REAL NOT NULL,
            deleted INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (source_id, href)
        )"""
    )
    db.execute("CREATE INDEX feed_items_by_revision ON feed_items (source_id, revision)")
    # Where a feed is visible: operator feeds (owner '') and users' own subscriptions.
    db.execute(
        """CREATE TABLE feed_subscriptions (
            id INTEGER PRIMARY KEY,
            upstream TEXT NOT NULL,
            owner TEXT NOT NULL,
            path TEXT NOT NULL,
            name TEXT NOT NULL,
            source_id INTEGER NOT NULL REFERENCES feed_sources (id),
            props TEXT NOT NULL DEFAULT '{}',
            created REAL NOT NULL,
            UNIQUE (upstream, path)
        )"""
    )
    db.execute("CREATE INDEX feed_subscriptions_by_owner ON feed_subscriptions (upstream, owner)")
