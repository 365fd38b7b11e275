"""The notification rows of the store: one user's notifications, their revisions and
tombstones (the RFC 6578 log of a notification collection).  A part of ``Store``."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import TypeVar

from davproxy.store.engines import Cursor, Params
from davproxy.store.records import Notification

T = TypeVar("T")

_NOTIFICATION_COLUMNS = "id, upstream, user, name, type, body, etag, revision, created, deleted"


class NotificationRows:
    """Mixed into ``Store``, which gives it its connection and revision counter."""

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        raise NotImplementedError

    def _next_revision(self) -> int:
        raise NotImplementedError

    def remembered(self, key: tuple[object, ...], compute: Callable[[], T]) -> T:
        raise NotImplementedError

    def _notifications(self, where: str, params: tuple[object, ...]) -> list[Notification]:
        rows = self.execute(
            f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications WHERE {where}", params
        )
        return [
            Notification(
                id=row[0],
                upstream=row[1],
                user=row[2],
                name=row[3],
                type=row[4],
                body=row[5],
                etag=row[6],
                revision=row[7],
                created=row[8],
                deleted=bool(row[9]),
            )  # fmt: skip
            for row in rows
        ]

    def notification(self, upstream: str, user: str, name: str) -> Notification | None:
        found = self._notifications(
            "upstream = ? AND user = ? AND name = ? AND deleted = 0", (upstream, user, name)
        )
        return found[0] if found else None

    def notifications(self, upstream: str, user: str) -> list[Notification]:
        return self._notifications(
            "upstream = ? AND user = ? AND deleted = 0 ORDER BY revision", (upstream, user)
        )

    def notification_listing(self, upstream: str, user: str) -> list[tuple[str, str, str, str]]:
        """(name, type, etag, kind) of each live notification, oldest first: what a listing
        shows, without loading bodies (``kind`` is the shared collection's, or '')."""
        rows = self.execute(
            "SELECT name, type, etag, COALESCE(json_extract(body, '$.kind'), '')"
            " FROM notifications WHERE upstream = ? AND user = ? AND deleted = 0"
            " ORDER BY revision",
            (upstream, user),
        )
        return rows.fetchall()

    def notification_put(
        self, upstream: str, user: str, name: str, type_: str, body: str
    ) -> Notification:
        """Create or overwrite (coalesce) one notification; a new revision either way."""
        revision = self._next_revision()
        etag = hashlib.sha256(f"{revision}\0{body}".encode()).hexdigest()[:32]
        self.execute(
            "INSERT INTO notifications (upstream, user, name, type, body, etag, revision,"
            " deleted, created) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)"
            " ON CONFLICT (upstream, user, name) DO UPDATE SET type = excluded.type,"
            " body = excluded.body, etag = excluded.etag, revision = excluded.revision,"
            " deleted = 0, created = excluded.created",
            (upstream, user, name, type_, body, etag, revision, time.time()),
        )
        stored = self.notification(upstream, user, name)
        assert stored is not None
        return stored

    def notification_delete(self, upstream: str, user: str, name: str) -> bool:
        """Turn a notification into a tombstone; False if there was none."""
        if self.notification(upstream, user, name) is None:
            return False
        self.execute(
            "UPDATE notifications SET deleted = 1, revision = ?, body = '', etag = ''"
            " WHERE upstream = ? AND user = ? AND name = ?",
            (self._next_revision(), upstream, user, name),
        )
        return True

    def notification_revision(self, upstream: str, user: str) -> int:
        """The newest revision in a user's collection (0 when it never had anything)."""

        def read() -> int:
            row = self.execute(
                "SELECT MAX(revision) FROM notifications WHERE upstream = ? AND user = ?",
                (upstream, user),
            ).fetchone()
            return int(row[0] or 0)

        return self.remembered(("notification_revision", upstream, user), read)

    def notification_changes(
        self,
        upstream: str,
        user: str,
        since: int,
        limit: int | None = None,
        live_only: bool = False,
    ) -> list[Notification]:
        """Members changed or deleted after revision ``since`` (tombstones included unless
        ``live_only``), oldest first, at most ``limit``."""
        live = " AND deleted = 0" if live_only else ""
        sql = f"upstream = ? AND user = ? AND revision > ?{live} ORDER BY revision"
        params: tuple[object, ...] = (upstream, user, since)
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        return self._notifications(sql, params)
