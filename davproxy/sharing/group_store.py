"""The store verbs of sharing with groups: the tables of migration 10, and only those.

Like the feed store, this module owns its tables' SQL and reaches the database through
``Store.execute``; callers get plain values.  Member shares themselves stay ordinary
``shares`` rows (the store's own verbs).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from davproxy.store import Store


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """One group as last applied from the mapping file."""

    id: str
    display_name: str
    emails: tuple[str, ...]
    members: tuple[str, ...]  # direct: user ids and group ids
    expanded: frozenset[str]  # the users, through nested groups


@dataclass(frozen=True, slots=True)
class GroupShare:
    """A collection shared with a group: the group's own access."""

    upstream: str
    collection: str
    group_id: str
    owner: str
    kind: str
    href: str  # as the sharer wrote it
    access: str
    comment: str
    created: float = 0.0


class GroupStore:
    def __init__(self, store: Store, upstream: str) -> None:
        self.store = store
        self.name = upstream

    # -- the applied directory -------------------------------------------------------

    def groups(self) -> dict[str, GroupRecord]:
        """The applied directory (remembered: principal searches and listings ask)."""

        def read() -> tuple[tuple[str, GroupRecord], ...]:
            rows = self.store.execute(
                "SELECT id, display_name, emails, members, expanded FROM directory_groups"
                " WHERE upstream = ? ORDER BY id",
                (self.name,),
            )
            return tuple(
                (
                    row[0],
                    GroupRecord(
                        row[0],
                        row[1],
                        tuple(json.loads(row[2])),
                        tuple(json.loads(row[3])),
                        frozenset(json.loads(row[4])),
                    ),
                )
                for row in rows
            )

        return dict(self.store.remembered(("directory_groups", self.name), read))

    def put_group(self, group: GroupRecord) -> None:
        self.store.execute(
            "INSERT INTO directory_groups VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (upstream, id) DO UPDATE SET display_name = excluded.display_name,"
            " emails = excluded.emails, members = excluded.members,"
            " expanded = excluded.expanded",
            (
                self.name, group.id, group.display_name, json.dumps(list(group.emails)),
                json.dumps(list(group.members)), json.dumps(sorted(group.expanded)),
            ),
        )  # fmt: skip

    def delete_group(self, group_id: str) -> None:
        self.store.execute(
            "DELETE FROM directory_groups WHERE upstream = ? AND id = ?", (self.name, group_id)
        )

    # -- collections shared with groups --------------------------------------------------

    def _shares(self, where: str, params: tuple[object, ...]) -> list[GroupShare]:
        rows = self.store.execute(
            "SELECT upstream, collection, group_id, owner, kind, href, access, comment, created"
            f" FROM group_shares WHERE upstream = ? AND {where} ORDER BY created, group_id",
            (self.name, *params),
        )
        return [GroupShare(*row) for row in rows]

    def of_collection(self, collection: str) -> list[GroupShare]:
        return self._shares("collection = ?", (collection,))

    def of_group(self, group_id: str) -> list[GroupShare]:
        return self._shares("group_id = ?", (group_id,))

    def all(self) -> list[GroupShare]:
        return self._shares("1 = 1", ())

    def put_share(self, share: GroupShare) -> None:
        self.store.execute(
            "INSERT INTO group_shares VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (upstream, collection, group_id) DO UPDATE SET"
            " href = excluded.href, access = excluded.access, comment = excluded.comment,"
            " kind = excluded.kind",
            (
                self.name, share.collection, share.group_id, share.owner, share.kind,
                share.href, share.access, share.comment, time.time(),
            ),
        )  # fmt: skip

    def delete_share(self, collection: str, group_id: str) -> None:
        self.store.execute(
            "DELETE FROM group_shares WHERE upstream = ? AND collection = ? AND group_id = ?",
            (self.name, collection, group_id),
        )

    def any_under(self, path: str) -> bool:
        row = self.store.execute(
            "SELECT 1 FROM group_shares WHERE upstream = ? AND substr(collection, 1, ?) = ?"
            " LIMIT 1",
            (self.name, len(path), path),
        ).fetchone()
        return row is not None

    def delete_under(self, path: str) -> None:
        """The collection at ``path`` or below it is gone: its group shares end."""
        self.store.execute(
            "DELETE FROM group_shares WHERE upstream = ? AND substr(collection, 1, ?) = ?",
            (self.name, len(path), path),
        )

    # -- which member shares exist through groups ----------------------------------------

    def binds(self, collection: str) -> dict[int, str | None]:
        """share id -> the access given individually (None: through groups only)."""
        rows = self.store.execute(
            "SELECT b.share_id, b.individual FROM group_binds b JOIN shares s"
            " ON s.id = b.share_id WHERE s.upstream = ? AND s.collection = ?",
            (self.name, collection),
        )
        return {int(row[0]): row[1] for row in rows}

    def bind(self, share_id: int) -> tuple[bool, str | None]:
        row = self.store.execute(
            "SELECT individual FROM group_binds WHERE share_id = ?", (share_id,)
        ).fetchone()
        return (False, None) if row is None else (True, row[0])

    def put_bind(self, share_id: int, individual: str | None) -> None:
        self.store.execute(
            "INSERT INTO group_binds VALUES (?, ?)"
            " ON CONFLICT (share_id) DO UPDATE SET individual = excluded.individual",
            (share_id, individual),
        )

    def delete_bind(self, share_id: int) -> None:
        self.store.execute("DELETE FROM group_binds WHERE share_id = ?", (share_id,))
