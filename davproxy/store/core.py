"""davproxy's own state: share records, notifications and what they need, in SQLite
(the embedded default) or PostgreSQL (several processes or hosts), behind one set of
verbs (store/engines.py runs the SQL on either).

All SQL lives in the store's modules (and, for subscriptions, feeds/store.py), behind
verbs that return plain values, so handlers never see a cursor; errors leave as
``StoreError``/``StoreConflict``, never as a driver's.  The schema evolves by numbered
migrations (store/migrations.py) applied in order, each in its own transaction,
recorded in ``schema_migrations``, one process at a time; a store written by a newer
davproxy is refused rather than damaged.

Blocking on the event loop is bounded by design: the verbs the request path calls are
indexed lookups and small writes (a user's shares, one notification), and a transaction
never spans an ``await``, so within one process no request waits for another's lock.
Write transactions exclude each other across processes too (``Engine.begin``), which
keeps revisions in commit order.  The one bulk writer, a whole-feed import, runs in a
worker thread on its own connection (``FeedStore.in_worker``; ``bench/loop_stall.py``
measures what remains).  Another process's writer can make a write wait up to 5 s
(SQLite's busy_timeout, PostgreSQL's lock_timeout), then the write fails.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from davproxy.store.clock import ChangeClock
from davproxy.store.engines import (
    Cursor,
    Engine,
    Params,
    PostgresEngine,
    StoreConflict,
    StoreError,
    open_engine,
)
from davproxy.store.migrations import MIGRATIONS, Schema
from davproxy.store.notification_rows import NotificationRows
from davproxy.store.records import NewShare, Share

__all__ = ["Store", "StoreConflict", "StoreError", "StoreInfo"]

log = logging.getLogger("davproxy.store")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoreInfo:
    location: str  # a path, or a URL without its password
    schema_version: int
    instance_id: str
    details: dict[str, str]  # backend, journal mode or server version


class Store(NotificationRows):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.location = engine.location
        # lookups made on every request, kept until the database changes (remembered)
        self._remembered: dict[tuple[object, ...], object] = {}
        self._remembered_at = -1  # the engine's local_writes when they were made
        self._clock: ChangeClock | None = None
        self._clock_seen = -1
        if isinstance(engine, PostgresEngine):
            self._clock = ChangeClock(engine.url, engine.password, engine.location)

    @classmethod
    def open(cls, location: str | Path, password: str | None = None) -> Store:
        """The store at a path (SQLite) or a ``postgresql://`` URL, migrated."""
        store = cls(open_engine(location, password))
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
        return store

    def reopen(self) -> Store:
        """Another connection to the same store (for a worker thread)."""
        return Store(self.engine.reopen())

    @property
    def dialect(self) -> str:
        return self.engine.dialect

    def migrate(self) -> int:
        engine = self.engine
        schema = Schema(engine)
        try:
            engine.migration_lock()
        except StoreError as exc:
            raise StoreError(
                f"store {self.location} is not a usable {engine.dialect} database: {exc}"
            ) from None
        try:
            try:
                schema.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL,"
                    " applied_at REAL NOT NULL)"
                )
                applied = {r[0] for r in engine.execute("SELECT version FROM schema_migrations")}
            except StoreError as exc:
                raise StoreError(
                    f"store {self.location} is not a usable {engine.dialect} database: {exc}"
                ) from None
            known = {version for version, _, _ in MIGRATIONS}
            if applied - known:
                raise StoreError(
                    f"store {self.location} has schema version {max(applied)}, newer than "
                    f"this davproxy knows ({max(known)}); upgrade davproxy or use another store"
                )
            for version, name, migration in MIGRATIONS:
                if version in applied:
                    continue
                engine.begin()
                try:
                    # another process may have applied it since we looked
                    done = engine.execute(
                        "SELECT 1 FROM schema_migrations WHERE version = ?", (version,)
                    ).fetchone()
                    if done is None:
                        migration(schema)
                        engine.execute(
                            "INSERT INTO schema_migrations (version, name, applied_at)"
                            " VALUES (?, ?, ?)",
                            (version, name, time.time()),
                        )
                except StoreError as exc:
                    engine.rollback()
                    raise StoreError(
                        f"store {self.location}: migration {version:03d} {name} failed: {exc}"
                    ) from None
                except BaseException:
                    engine.rollback()
                    raise
                engine.commit()
                if done is None:
                    log.info("store %s: applied migration %03d %s", self.location, version, name)
        finally:
            with contextlib.suppress(StoreError):  # never hide why migrating failed
                engine.migration_unlock()
        return self.schema_version()

    def schema_version(self) -> int:
        row = self.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def info(self) -> StoreInfo:
        instance = self.execute("SELECT value FROM meta WHERE key = 'instance_id'").fetchone()
        return StoreInfo(self.location, self.schema_version(), instance[0], self.engine.describe())

    def check_writable(self) -> None:
        """Raise StoreError unless the store can take its write lock right now."""
        if self.engine.in_transaction:
            return
        self.engine.begin()
        self.engine.rollback()

    def share_counts(self) -> list[tuple[str, str, int]]:
        rows = self.execute(
            "SELECT upstream, status, COUNT(*) FROM shares GROUP BY upstream, status"
        )
        return [(r[0], r[1], int(r[2])) for r in rows]

    def notification_counts(self) -> list[tuple[str, int]]:
        rows = self.execute(
            "SELECT upstream, COUNT(*) FROM notifications WHERE deleted = 0 GROUP BY upstream"
        )
        return [(r[0], int(r[1])) for r in rows]

    def feed_counts(self) -> list[tuple[str, int]]:
        rows = self.execute(
            "SELECT status, COUNT(*) FROM feed_sources WHERE url NOT LIKE 'upstream:%'"
            " GROUP BY status"
        )
        return [(r[0], int(r[1])) for r in rows]

    def subscription_count(self) -> int:
        row = self.execute("SELECT COUNT(*) FROM feed_subscriptions").fetchone()
        return int(row[0])

    def integrity_ok(self) -> bool:
        return self.engine.integrity_ok()

    def close(self) -> None:
        self.engine.close()

    async def aclose(self) -> None:
        """Close, the change clock's connection included (from the event loop)."""
        if self._clock is not None:
            await self._clock.close()
        self.close()

    # -- transactions ---------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All-or-nothing: a share and its notifications land together or not at all."""
        engine = self.engine
        if engine.in_transaction:
            yield
            return
        engine.begin()
        try:
            yield
        except BaseException:
            engine.rollback()
            raise
        else:
            try:
                engine.commit()
            except BaseException:
                engine.rollback()
                raise
        finally:
            self._remembered.clear()  # whatever was read inside may have been rolled back

    # -- lookups made on every request ----------------------------------------------------

    def remembered(self, key: tuple[object, ...], compute: Callable[[], T]) -> T:
        """``compute()``, remembered until anything in the database changes.

        A write on this connection counts in the engine's ``local_writes``; another
        connection's commit (the feed worker, ``davproxy admin``, another process or
        host) is noticed by ``notice_changes`` at the start of each request, so a
        revocation committed anywhere applies from the next request on.  Nothing is
        remembered inside a transaction.  ``compute`` must return something immutable."""
        engine = self.engine
        if engine.in_transaction:
            return compute()
        if engine.local_writes != self._remembered_at or len(self._remembered) > 10_000:
            self._remembered.clear()
            self._remembered_at = engine.local_writes
        if key in self._remembered:
            return self._remembered[key]  # type: ignore[return-value]
        value = self._remembered[key] = compute()
        return value

    def notice_changes(self) -> None:
        """Forget what is remembered if another connection has committed since."""
        if self.engine.others_wrote():
            self._remembered.clear()

    async def changes_noticed(self) -> bool:
        """``notice_changes`` for a request on the event loop; True if anything changed.

        On PostgreSQL the clock is read on a connection of its own without stopping the
        loop, one read shared by the requests that arrived before it was sent
        (store/clock.py); SQLite's check is a local read, made at once."""
        if self._clock is None:
            changed = self.engine.others_wrote()
        else:
            version = await self._clock.read()
            changed, self._clock_seen = version != self._clock_seen, version
        if changed:
            self._remembered.clear()
        return changed

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        """One SQL statement (SQLite's dialect, as engines.py describes), for the store
        verbs of a feature that owns its tables (feeds/store.py, ...)."""
        return self.engine.execute(sql, params)

    def _next_revision(self) -> int:
        row = self.execute(
            "UPDATE counters SET value = value + 1 WHERE name = 'revision' RETURNING value"
        ).fetchall()  # all: SQLite finishes the statement only once its rows are read
        return int(row[0][0])

    # -- shares -----------------------------------------------------------------------

    def _shares(self, where: str, params: tuple[object, ...]) -> list[Share]:
        rows = self.execute(f"SELECT {_SHARE_COLUMNS} FROM shares WHERE {where}", params)
        return [Share(*row) for row in rows]

    def share(self, share_id: int) -> Share | None:
        found = self._shares("id = ?", (share_id,))
        return found[0] if found else None

    def share_by_uid(self, invite_uid: str) -> Share | None:
        found = self._shares("invite_uid = ?", (invite_uid,))
        return found[0] if found else None

    def share_for(self, upstream: str, collection: str, sharee: str) -> Share | None:
        found = self._shares(
            "upstream = ? AND collection = ? AND sharee = ?", (upstream, collection, sharee)
        )
        return found[0] if found else None

    def shares_of_collection(self, upstream: str, collection: str) -> list[Share]:
        return self._shares("upstream = ? AND collection = ? ORDER BY id", (upstream, collection))

    def deletion_begin(self, upstream: str, owner: str, path: str) -> None:
        self.execute(
            "INSERT INTO pending_deletions (upstream, owner, path, created) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (upstream, owner, path) DO UPDATE SET created = excluded.created",
            (upstream, owner, path, time.time()),
        )

    def deletion_end(self, upstream: str, owner: str, path: str) -> None:
        self.execute(
            "DELETE FROM pending_deletions WHERE upstream = ? AND owner = ? AND path = ?",
            (upstream, owner, path),
        )

    def pending_deletions(self, upstream: str) -> tuple[tuple[str, str], ...]:
        """(owner, path) of deletions whose outcome davproxy never learned."""

        def read() -> tuple[tuple[str, str], ...]:
            rows = self.execute(
                "SELECT owner, path FROM pending_deletions WHERE upstream = ?", (upstream,)
            )
            return tuple((r[0], r[1]) for r in rows)

        return self.remembered(("pending_deletions", upstream), read)

    def all_shares(self) -> list[Share]:
        return self._shares("1 = 1 ORDER BY upstream, owner, collection, sharee", ())

    def shares_by_owner(self, upstream: str, owner: str) -> list[Share]:
        return self._shares("upstream = ? AND owner = ? ORDER BY id", (upstream, owner))

    def share_owners(self, upstream: str) -> set[str]:
        rows = self.execute("SELECT DISTINCT owner FROM shares WHERE upstream = ?", (upstream,))
        return {row[0] for row in rows}

    def shares_under(self, upstream: str, path: str) -> list[Share]:
        """Shares of the collection at ``path`` or of any collection below it."""
        return self._shares(
            "upstream = ? AND substr(collection, 1, ?) = ? ORDER BY id",
            (upstream, len(path), path),
        )

    def mounts_of(self, upstream: str, sharee: str) -> tuple[Share, ...]:
        """The accepted shares a user has a copy of, with its path."""
        return self.remembered(
            ("mounts_of", upstream, sharee),
            lambda: tuple(
                self._shares(
                    "upstream = ? AND sharee = ? AND status = 'accepted' AND mount IS NOT NULL"
                    " ORDER BY mount",
                    (upstream, sharee),
                )
            ),
        )

    def mount_taken(self, upstream: str, mount: str) -> bool:
        """A share's copy is there, or was and the upstream may still serve it."""
        row = self.execute(
            "SELECT 1 FROM shares WHERE upstream = ? AND mount = ?"
            " UNION ALL SELECT 1 FROM upstream_removals WHERE upstream = ? AND mount = ?",
            (upstream, mount, upstream, mount),
        ).fetchone()
        return row is not None

    def share_users(self, upstream: str) -> set[str]:
        """Every owner and (valid) sharee of a share on this upstream."""
        rows = self.execute(
            "SELECT owner FROM shares WHERE upstream = ?"
            " UNION SELECT sharee FROM shares WHERE upstream = ? AND status != 'invalid'",
            (upstream, upstream),
        )
        return {row[0] for row in rows}

    # -- copies the upstream may still serve (radicale-native) --------------------------

    def removal_add(self, upstream: str, owner: str, sharee: str, mount: str) -> None:
        """Record, with the change that ended a share, that its copy must still go upstream."""
        self.execute(
            "INSERT INTO upstream_removals (upstream, owner, sharee, mount, created)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (upstream, sharee, mount)"
            " DO UPDATE SET owner = excluded.owner, created = excluded.created",
            (upstream, owner, sharee, mount, time.time()),
        )

    def removals(self, upstream: str) -> list[tuple[str, str, str]]:
        """(owner, sharee, mount) of ended copies the upstream has not confirmed gone."""
        rows = self.execute(
            "SELECT owner, sharee, mount FROM upstream_removals WHERE upstream = ?"
            " ORDER BY owner, sharee, mount",
            (upstream,),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    def removals_of_sharee(self, upstream: str, sharee: str) -> list[str]:
        rows = self.execute(
            "SELECT mount FROM upstream_removals WHERE upstream = ? AND sharee = ?",
            (upstream, sharee),
        )
        return [r[0] for r in rows]

    def removals_done(self, upstream: str, owner: str, before: float) -> int:
        """The upstream now matches the store for ``owner`` as it stood at ``before``:
        removals recorded until then are done (later ones wait for the next apply)."""
        cursor = self.execute(
            "DELETE FROM upstream_removals WHERE upstream = ? AND owner = ? AND created <= ?",
            (upstream, owner, before),
        )
        return int(cursor.rowcount)

    def removal_cancel(self, upstream: str, sharee: str, mount: str) -> None:
        """The copy at ``mount`` is the sharee's again (granted anew): nothing to remove."""
        self.execute(
            "DELETE FROM upstream_removals WHERE upstream = ? AND sharee = ? AND mount = ?",
            (upstream, sharee, mount),
        )

    # -- small settings ------------------------------------------------------------------

    def setting(self, key: str) -> str | None:
        row = self.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, key: str, value: str) -> None:
        self.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def share_upsert(self, new: NewShare) -> tuple[Share, bool]:
        """Create or update the sharee's instance; returns (share, created)."""
        now = time.time()
        existing = self.share_for(new.upstream, new.collection, new.sharee)
        if existing is None:
            self.execute(
                "INSERT INTO shares (upstream, owner, collection, kind, sharee, sharee_href,"
                " access, status, invite_uid, comment, sharee_name, summary, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    new.upstream, new.owner, new.collection, new.kind, new.sharee,
                    new.sharee_href, new.access, new.status, uuid.uuid4().hex, new.comment,
                    new.sharee_name, new.summary, now, now,
                ),
            )  # fmt: skip
            created = self.share_for(new.upstream, new.collection, new.sharee)
            assert created is not None
            return created, True
        # A change of access keeps the current status (draft-pot-webdav-resource-sharing
        # §4.4), except that an invalid sharee stays invalid and a declined one is
        # invited again.
        status = existing.status if existing.status in ("accepted", "noresponse") else new.status
        self.execute(
            "UPDATE shares SET access = ?, status = ?, comment = ?, sharee_name = ?,"
            " summary = ?, sharee_href = ?, kind = ?, updated = ? WHERE id = ?",
            (
                new.access, status, new.comment, new.sharee_name or existing.sharee_name,
                new.summary, new.sharee_href, new.kind, now, existing.id,
            ),
        )  # fmt: skip
        updated = self.share(existing.id)
        assert updated is not None
        return updated, False

    def share_set_status(
        self, share: Share, status: str, mount: str | None = None, expect: str | None = None
    ) -> Share | None:
        """Set a share's status (and copy path); with ``expect``, only if the share is
        still in that status: None when it is gone or was changed meanwhile (a racing
        reply or revocation), so two answers can never both win.  The invitation id is
        part of the match: SQLite reuses row ids, and a newer share must never be
        changed on behalf of an older one."""
        query = (
            "UPDATE shares SET status = ?, mount = ?, updated = ? WHERE id = ? AND invite_uid = ?"
        )
        params: tuple[object, ...] = (status, mount, time.time(), share.id, share.invite_uid)
        if expect is not None:
            query += " AND status = ?"
            params += (expect,)
        before = self.share(share.id)
        if self.execute(query, params).rowcount != 1:
            return None
        if before is not None and before.mount and before.mount != mount:
            self._copy_ended(before)
        if mount:
            self.ended_copy_clear(share.upstream, mount)
        return self.share(share.id)

    def share_is_current(self, share: Share) -> bool:
        """The share row still stands for this invitation (ids are reused)."""
        current = self.share(share.id)
        return current is not None and current.invite_uid == share.invite_uid

    def share_delete(self, share_id: int) -> None:
        share = self.share(share_id)
        if share is not None and share.mount:
            self._copy_ended(share)
        self.execute("DELETE FROM shares WHERE id = ?", (share_id,))

    # -- where copies were --------------------------------------------------------------

    def _copy_ended(self, share: Share) -> None:
        assert share.mount is not None
        self.execute(
            "INSERT INTO ended_copies (upstream, sharee, mount, ended, invite_uid)"
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (upstream, mount) DO UPDATE SET sharee = excluded.sharee,"
            " ended = excluded.ended, invite_uid = excluded.invite_uid",
            (share.upstream, share.sharee, share.mount, time.time(), share.invite_uid),
        )

    def ended_copy(self, upstream: str, sharee: str, path: str) -> str | None:
        """The path of an ended copy of ``sharee``'s that ``path`` lies in (or is)."""
        mounts = self.remembered(
            ("ended_copies", upstream, sharee),
            lambda: tuple(
                row[0]
                for row in self.execute(
                    "SELECT mount FROM ended_copies WHERE upstream = ? AND sharee = ?",
                    (upstream, sharee),
                )
            ),
        )
        for mount in mounts:
            if path.startswith(mount) or path + "/" == mount:
                return str(mount)
        return None

    def ended_copy_of(self, share: Share) -> str | None:
        """Where this invitation's copy was, if it ended and nothing stands there since."""
        row = self.execute(
            "SELECT mount FROM ended_copies WHERE upstream = ? AND invite_uid = ? AND sharee = ?"
            " ORDER BY ended DESC LIMIT 1",
            (share.upstream, share.invite_uid, share.sharee),
        ).fetchone()
        return str(row[0]) if row is not None else None

    def ended_copy_clear(self, upstream: str, mount: str) -> None:
        """Something new stands at ``mount`` (a new copy, or the sharee's own collection)."""
        self.execute("DELETE FROM ended_copies WHERE upstream = ? AND mount = ?", (upstream, mount))

    # -- per-sharee properties ------------------------------------------------------------

    def instance_props(self, share_id: int) -> dict[str, str]:
        """A sharee's own properties of a copy (remembered: every listing shows them)."""

        def read() -> tuple[tuple[str, str], ...]:
            rows = self.execute(
                "SELECT name, value FROM instance_props WHERE share_id = ?", (share_id,)
            )
            return tuple((r[0], r[1]) for r in rows)

        return dict(self.remembered(("instance_props", share_id), read))

    def set_instance_prop(self, share_id: int, name: str, value: str | None) -> None:
        if value is None:
            self.execute(
                "DELETE FROM instance_props WHERE share_id = ? AND name = ?", (share_id, name)
            )
        else:
            self.execute(
                "INSERT INTO instance_props (share_id, name, value) VALUES (?, ?, ?)"
                " ON CONFLICT (share_id, name) DO UPDATE SET value = excluded.value",
                (share_id, name, value),
            )


_SHARE_COLUMNS = (
    "id, upstream, owner, collection, kind, sharee, sharee_href, access, status, invite_uid,"
    " comment, sharee_name, summary, mount, created, updated"
)
