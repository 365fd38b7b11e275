"""Where davproxy keeps each sharee's per-user calendar data (store migration 9).

One row per (share, member): the object's UID when the data was written, the sharee's
entries (``sharing/peruser.py``: personal text by instance key) as JSON, and a revision
from one counter, so a sharee's ETags and sync tokens change when their own data does
(per-user-data digest §7.3, §8.1).  A row whose entries are all gone stays, empty, so
that the change still reaches the sharee's next sync.  Rows end with their share (the
schema's cascade and trigger); ``forget`` removes an object's rows for every share.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from davproxy.store import Store
from davproxy.store.records import Share


@dataclass(frozen=True, slots=True)
class Entry:
    uid: str
    personal: dict[str, str]
    revision: int


def sharee_etag(upstream_etag: str, revision: int) -> str:
    """The ETag a sharee sees: the upstream's and their own data's revision together."""
    digest = hashlib.sha256(f"{upstream_etag}\0{revision}".encode()).hexdigest()[:32]
    return f'"{digest}"'


class PerUserStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    def revision(self) -> int:
        def read() -> int:
            row = self.store.execute("SELECT value FROM counters WHERE name = 'peruser'").fetchone()
            return int(row[0]) if row else 0

        return self.store.remembered(("peruser_revision",), read)

    def entry(self, share: Share, href: str) -> Entry | None:
        row = self.store.execute(
            "SELECT uid, data, revision FROM peruser_data WHERE share_id = ? AND href = ?",
            (share.id, href),
        ).fetchone()
        return None if row is None else Entry(row[0], json.loads(row[1]), int(row[2]))

    def entries(self, share: Share) -> Mapping[str, Entry]:
        """All of a share's rows by member (one query for a whole REPORT answer),
        remembered until the store changes: a sharee's client asks again and again."""

        def read() -> Mapping[str, Entry]:
            rows = self.store.execute(
                "SELECT href, uid, data, revision FROM peruser_data WHERE share_id = ?",
                (share.id,),
            )
            return MappingProxyType({r[0]: Entry(r[1], json.loads(r[2]), int(r[3])) for r in rows})

        return self.store.remembered(("peruser_entries", share.id), read)

    def changed_since(self, share: Share, revision: int) -> list[str]:
        rows = self.store.execute(
            "SELECT href FROM peruser_data WHERE share_id = ? AND revision > ? ORDER BY href",
            (share.id, revision),
        )
        return [r[0] for r in rows]

    def newest(self, share: Share) -> int:
        def read() -> int:
            row = self.store.execute(
                "SELECT MAX(revision) FROM peruser_data WHERE share_id = ?", (share.id,)
            ).fetchone()
            return int(row[0] or 0)

        return self.store.remembered(("peruser_newest", share.id), read)

    def put(self, share: Share, href: str, uid: str, personal: dict[str, str]) -> int:
        """Keep the sharee's entries for ``href``; their new revision (the old one when
        nothing changed)."""
        with self.store.transaction():
            old = self.entry(share, href)
            if old is not None and old.uid == uid and old.personal == personal:
                return old.revision
            if old is None and not personal:
                return 0
            self.store.execute("UPDATE counters SET value = value + 1 WHERE name = 'peruser'")
            revision = self.revision()
            self.store.execute(
                "INSERT INTO peruser_data (share_id, href, uid, data, revision)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (share_id, href) DO UPDATE SET"
                " uid = excluded.uid, data = excluded.data, revision = excluded.revision",
                (share.id, href, uid, json.dumps(personal, sort_keys=True), revision),
            )
            return revision

    def forget(self, upstream: str, collection: str, href: str) -> None:
        """The object at ``href`` of ``collection`` is gone (deleted by its owner or a
        sharee, or found missing): everybody's data of it goes."""
        with self.store.transaction():
            self.store.execute(
                "DELETE FROM peruser_data WHERE href = ? AND share_id IN"
                " (SELECT id FROM shares WHERE upstream = ? AND collection = ?)",
                (href, upstream, collection),
            )
