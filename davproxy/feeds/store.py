"""Subscriptions' state in the store: sources, their items with a change log, subscriptions.

The items table is its own change log: every row carries the revision of its last change
(one revision per change, counted per source) and deletions stay as tombstones, so "what
changed since revision R" is one indexed range query, a page can be cut after any row, and
a URL appears at most once (RFC 6578 §3.2).  Pruning old tombstones raises the source's
``min_revision``: older tokens are then refused as invalid rather than answered wrongly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from davproxy.feeds.split import Resource
from davproxy.store import Store

T = TypeVar("T")

CALENDAR_END = "END:VCALENDAR\r\n"


@dataclass(frozen=True, slots=True)
class FeedSource:
    id: int
    url: str
    fetch_url: str
    tag: str
    etag: str | None
    last_modified: str | None
    body_hash: str | None
    suspect_hash: str | None
    meta: str
    timezones: str
    revision: int
    min_revision: int
    status: str  # new | ok | error
    error: str
    failures: int
    last_attempt: float | None
    last_success: float | None
    last_change: float | None
    next_fetch: float
    interval: int | None
    bytes: int
    created: float

    @property
    def token_prefix(self) -> str:
        """RFC 6578 tokens, enhanced-GET tokens and CS:getctag share one token space."""
        return "urn:x-davproxy:feed:"

    @property
    def meta_data(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.meta)
        return data

    @property
    def timezone_texts(self) -> dict[str, str]:
        data: dict[str, str] = json.loads(self.timezones)
        return data


@dataclass(frozen=True, slots=True)
class FeedItem:
    source_id: int
    href: str
    uid: str
    kind: str
    text: str
    body_start: int
    tzids: str
    fingerprint: str
    etag: str
    revision: int
    modified: float
    deleted: bool

    @property
    def components(self) -> str:
        """The object's own components, without the VCALENDAR wrapper and time zones."""
        return self.text[self.body_start : len(self.text) - len(CALENDAR_END)]

    @property
    def tzid_list(self) -> list[str]:
        data: list[str] = json.loads(self.tzids)
        return data


@dataclass(frozen=True, slots=True)
class Subscription:
    id: int
    upstream: str
    owner: str  # "" for a feed the operator configured
    path: str  # below the upstream root, ends with "/"
    name: str
    source_id: int
    props: str  # JSON: client-set displayname, colour, order...
    created: float

    @property
    def prop_data(self) -> dict[str, str]:
        data: dict[str, str] = json.loads(self.props)
        return data


_SOURCE_COLUMNS = ", ".join(f.name for f in fields(FeedSource))
_ITEM_NAMES = tuple(f.name for f in fields(FeedItem) if f.name != "deleted")
_ITEM_COLUMNS = ", ".join((*_ITEM_NAMES, "deleted"))
_SUBSCRIPTION_COLUMNS = ", ".join(f.name for f in fields(Subscription))
_SOURCE_FIELDS = frozenset(f.name for f in fields(FeedSource)) - {"id", "url", "tag", "created"}


class FeedStore:
    """The verbs subscriptions need, over the shared Store (same file, same transactions)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._worker: FeedStore | None = None
        self._worker_lock = threading.Lock()

    async def in_worker(self, work: Callable[[FeedStore], T]) -> T:
        """Run ``work`` in a worker thread, on a connection of its own to the same store.

        A whole-feed import writes thousands of rows: on the event loop's connection it
        would stall every request for as long (measured: ~1 s for 50,000 events).  In
        WAL mode readers on the loop's connection never wait for this writer; they see
        the import when it commits, all at once.  One worker at a time (the lock), so
        the worker connection is never shared between threads."""

        def run() -> T:
            with self._worker_lock:
                if self._worker is None:
                    self._worker = FeedStore(self.store.reopen())
                return work(self._worker)

        return await asyncio.to_thread(run)

    def close(self) -> None:
        """Close the worker's connection (the loop's store is closed by its owner)."""
        with self._worker_lock:
            if self._worker is not None:
                self._worker.store.close()
                self._worker = None

    def transaction(self) -> AbstractContextManager[None]:
        return self.store.transaction()

    # -- sources ------------------------------------------------------------------------

    def _sources(self, where: str, params: tuple[object, ...]) -> list[FeedSource]:
        rows = self.store.execute(f"SELECT {_SOURCE_COLUMNS} FROM feed_sources {where}", params)
        return [FeedSource(*row) for row in rows]

    def source(self, source_id: int) -> FeedSource | None:
        found = self._sources("WHERE id = ?", (source_id,))
        return found[0] if found else None

    def source_by_url(self, url: str) -> FeedSource | None:
        found = self._sources("WHERE url = ?", (url,))
        return found[0] if found else None

    def sources(self) -> list[FeedSource]:
        return self._sources("ORDER BY id", ())

    def source_ensure(self, url: str, next_fetch: float = 0.0) -> FeedSource:
        """The source for ``url``, created (due at once) if nobody subscribed to it yet."""
        self.store.execute(
            "INSERT INTO feed_sources (url, fetch_url, tag, next_fetch, created)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (url) DO NOTHING",
            (url, url, secrets.token_hex(8), next_fetch, time.time()),
        )
        found = self.source_by_url(url)
        assert found is not None
        return found

    def source_update(self, source_id: int, **values: object) -> None:
        unknown = set(values) - _SOURCE_FIELDS
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in values)
        self.store.execute(
            f"UPDATE feed_sources SET {assignments} WHERE id = ?", (*values.values(), source_id)
        )

    def due_sources(self, now: float, exclude_prefix: str) -> list[FeedSource]:
        return self._sources(
            "WHERE next_fetch <= ? AND substr(url, 1, ?) != ? ORDER BY next_fetch",
            (now, len(exclude_prefix), exclude_prefix),
        )

    def next_due(self, exclude_prefix: str) -> float | None:
        row = self.store.execute(
            "SELECT MIN(next_fetch) FROM feed_sources WHERE substr(url, 1, ?) != ?",
            (len(exclude_prefix), exclude_prefix),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def drop_unused_sources(self) -> int:
        """Delete sources no subscription refers to (their items go with them)."""
        cursor = self.store.execute(
            "DELETE FROM feed_sources WHERE id NOT IN (SELECT source_id FROM feed_subscriptions)"
            " AND url NOT LIKE 'upstream:%'"
        )
        return cursor.rowcount

    # -- items ---------------------------------------------------------------------------

    def _items(self, where: str, params: tuple[object, ...]) -> list[FeedItem]:
        rows = self.store.execute(f"SELECT {_ITEM_COLUMNS} FROM feed_items WHERE {where}", params)
        return [
            FeedItem(**dict(zip(_ITEM_NAMES, row[:-1], strict=True)), deleted=bool(row[-1]))
            for row in rows
        ]

    def item(self, source_id: int, href: str) -> FeedItem | None:
        found = self._items("source_id = ? AND href = ? AND deleted = 0", (source_id, href))
        return found[0] if found else None

    def items(self, source_id: int, hrefs: Iterable[str] | None = None) -> list[FeedItem]:
        """Live items in change order (oldest change first), optionally only ``hrefs``."""
        if hrefs is None:
            return self._items("source_id = ? AND deleted = 0 ORDER BY revision", (source_id,))
        wanted = list(hrefs)
        found: list[FeedItem] = []
        for start in range(0, len(wanted), 500):  # SQLite's variable limit
            chunk = wanted[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            found += self._items(
                f"source_id = ? AND deleted = 0 AND href IN ({marks})", (source_id, *chunk)
            )
        return found

    def fingerprints(self, source_id: int) -> dict[str, str]:
        rows = self.store.execute(
            "SELECT uid, fingerprint FROM feed_items WHERE source_id = ? AND deleted = 0",
            (source_id,),
        )
        return {row[0]: row[1] for row in rows}

    def count(self, source_id: int) -> int:
        row = self.store.execute(
            "SELECT COUNT(*) FROM feed_items WHERE source_id = ? AND deleted = 0", (source_id,)
        ).fetchone()
        return int(row[0])

    def kinds(self, source_id: int) -> list[str]:
        rows = self.store.execute(
            "SELECT DISTINCT kind FROM feed_items WHERE source_id = ? AND deleted = 0"
            " ORDER BY kind",
            (source_id,),
        )
        return [row[0] for row in rows]

    def changes(
        self, source_id: int, since: int, limit: int | None = None, live_only: bool = False
    ) -> list[FeedItem]:
        """Items changed or deleted after ``since``, oldest first, at most ``limit``."""
        live = " AND deleted = 0" if live_only else ""
        sql = f"source_id = ? AND revision > ?{live} ORDER BY revision"
        params: tuple[object, ...] = (source_id, since)
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        return self._items(sql, params)

    def record_changes(
        self,
        source: FeedSource,
        changed: Iterable[Resource],
        removed: Iterable[str],
        now: float,
    ) -> int:
        """Write new/changed resources and tombstones, one new revision each; returns the
        source's new revision (the caller stores it with the rest of the refresh)."""
        revision = source.revision
        for resource in changed:
            revision += 1
            self.store.execute(
                "INSERT INTO feed_items (source_id, href, uid, kind, text, body_start, tzids,"
                " fingerprint, etag, revision, modified, deleted)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"
                " ON CONFLICT (source_id, href) DO UPDATE SET uid = excluded.uid,"
                " kind = excluded.kind, text = excluded.text, body_start = excluded.body_start,"
                " tzids = excluded.tzids, fingerprint = excluded.fingerprint,"
                " etag = excluded.etag, revision = excluded.revision,"
                " modified = excluded.modified, deleted = 0",
                (
                    source.id,
                    resource.href,
                    resource.uid,
                    resource.kind,
                    resource.text,
                    resource.body_start,
                    json.dumps(list(resource.tzids)),
                    resource.fingerprint,
                    item_etag(resource.text),
                    revision,
                    now,
                ),
            )
        for uid in removed:
            revision += 1
            self.store.execute(
                "UPDATE feed_items SET deleted = 1, text = '', body_start = 0, tzids = '[]',"
                " revision = ?, modified = ? WHERE source_id = ? AND uid = ? AND deleted = 0",
                (revision, now, source.id, uid),
            )
        return revision

    def prune_tombstones(self, source: FeedSource, before: float) -> int:
        """Forget deletions older than ``before``; tokens from before them become invalid."""
        row = self.store.execute(
            "SELECT MAX(revision), COUNT(*) FROM feed_items"
            " WHERE source_id = ? AND deleted = 1 AND modified < ?",
            (source.id, before),
        ).fetchone()
        if not row[1]:
            return 0
        self.store.execute(
            "DELETE FROM feed_items WHERE source_id = ? AND deleted = 1 AND modified < ?",
            (source.id, before),
        )
        self.source_update(source.id, min_revision=max(source.min_revision, int(row[0])))
        return int(row[1])

    # -- subscriptions ---------------------------------------------------------------------

    def _subscriptions(self, where: str, params: tuple[object, ...]) -> list[Subscription]:
        rows = self.store.execute(
            f"SELECT {_SUBSCRIPTION_COLUMNS} FROM feed_subscriptions WHERE {where}", params
        )
        return [Subscription(*row) for row in rows]

    def subscription_at(self, upstream: str, path: str) -> Subscription | None:
        found = self._subscriptions("upstream = ? AND path = ?", (upstream, path))
        return found[0] if found else None

    def subscriptions_of(self, upstream: str, owner: str) -> tuple[Subscription, ...]:
        return self.store.remembered(
            ("subscriptions_of", upstream, owner),
            lambda: tuple(
                self._subscriptions("upstream = ? AND owner = ? ORDER BY path", (upstream, owner))
            ),
        )

    def subscriptions(self) -> list[Subscription]:
        return self._subscriptions("1 = 1 ORDER BY upstream, path", ())

    def subscribers(self, source_id: int) -> int:
        row = self.store.execute(
            "SELECT COUNT(*) FROM feed_subscriptions WHERE source_id = ?", (source_id,)
        ).fetchone()
        return int(row[0])

    def subscription_put(
        self,
        upstream: str,
        owner: str,
        path: str,
        name: str,
        source_id: int,
        props: dict[str, str] | None = None,
    ) -> Subscription:
        self.store.execute(
            "INSERT INTO feed_subscriptions (upstream, owner, path, name, source_id, props,"
            " created) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (upstream, path) DO UPDATE"
            " SET owner = excluded.owner, name = excluded.name, source_id = excluded.source_id,"
            " props = excluded.props",
            (upstream, owner, path, name, source_id, json.dumps(props or {}), time.time()),
        )
        found = self.subscription_at(upstream, path)
        assert found is not None
        return found

    def subscription_delete(self, upstream: str, path: str) -> bool:
        cursor = self.store.execute(
            "DELETE FROM feed_subscriptions WHERE upstream = ? AND path = ?", (upstream, path)
        )
        return cursor.rowcount > 0


def item_etag(text: str) -> str:
    """A strong ETag: a hash of the exact bytes served (RFC 4791 §5.3.4)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
