"""Sharing with groups: a group as sharee, and members' shares kept in step with it.

A ``D:sharee``/``CS:set`` href may name a group of the mapping file (its principal
URL, ``mailto:`` address, ``urn:x-uid:`` or Nextcloud's ``principal:principals/groups/``
form, or its id), resolved after users as CalendarServer does.  The group gets one
``group_shares`` row; each member gets an ordinary share (the model's per-user
machinery: invitation, answer, copy, per-user properties) whose access is the highest
of what the member was given individually and through each group shared with them
(CalendarServer's group sharing, digest groups.md §4–§6).  ``reconcile`` is the one
mechanism that brings the members' shares in line with the groups: after a group share,
a group revocation, and a change of the group directory (``apply_directory``, run at
start-up and on reload).  Members who declined or deleted their copy stay declined
until the group is shared again; the sharer is never invited.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Protocol
from urllib.parse import quote, unquote

from davproxy.config.groups import DirectoryGroup, expand
from davproxy.dav.davxml import href_path
from davproxy.dav.paths import PathRejected, resolve_path
from davproxy.sharing.group_store import GroupRecord, GroupShare, GroupStore
from davproxy.sharing.replies import SharingCore
from davproxy.sharing.requests import ShareeRequest
from davproxy.store.records import NewShare, Share

log = logging.getLogger("davproxy.sharing.groups")

GROUPS_SEGMENT = "groups"  # <prefix>.davproxy/groups/<id>/: the group principals
_RANK = {None: 0, "read": 1, "read-write": 2}


def higher(a: str | None, b: str | None) -> str | None:
    return a if _RANK[a] >= _RANK[b] else b


class CollectionFacts(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def displayname(self) -> str: ...

    @property
    def components(self) -> tuple[str, ...]: ...


class GroupCore(SharingCore, Protocol):
    """What group sharing needs of ``sharing.model.Sharing`` besides what the sharee's
    side does (a seam, not an import)."""

    def notify_invite(self, share: Share, info: CollectionFacts, access: str) -> None: ...

    def end_share(self, share: Share, info: CollectionFacts | None) -> None: ...

    async def owner_collection_info(self, owner: str, collection: str) -> CollectionFacts: ...


class GroupSharing:
    def __init__(self, core: GroupCore) -> None:
        self.core = core
        self.store = core.store
        self.upstream = core.upstream
        self.name = core.upstream.name
        self.table = GroupStore(core.store, core.upstream.name)
        self._applying = asyncio.Lock()  # two reloads in a row apply one after the other

    # -- the directory of groups -----------------------------------------------------

    def groups(self) -> dict[str, GroupRecord]:
        return self.table.groups()

    def principal(self, group_id: str) -> str:
        return f"{self.upstream.paths.public}.davproxy/{GROUPS_SEGMENT}/{quote(group_id)}/"

    def resolve(self, value: str) -> str | None:
        """The group a sharee href names, or None (users are resolved first, elsewhere)."""
        value = value.strip()
        groups = self.groups()
        lowered = value.lower()
        if lowered.startswith("mailto:"):
            email = unquote(value[7:]).strip().lower()
            return next((g.id for g in groups.values() if email in g.emails), None)
        for prefix in ("urn:x-uid:", "principal:principals/groups/"):
            if lowered.startswith(prefix):
                value = unquote(value[len(prefix) :]).strip("/")
                break
        else:
            if "/" in value or lowered.startswith(("http://", "https://")):
                try:
                    path = resolve_path(href_path(value).partition("?")[0])
                except PathRejected:
                    return None
                below = self.upstream.paths.rest(path)
                parts = (below or "").strip("/").split("/")
                if len(parts) != 3 or parts[:2] != [".davproxy", GROUPS_SEGMENT]:
                    return None
                value = unquote(parts[2])
        return value if value in groups else None

    def memberships(self, user_or_group: str) -> list[str]:
        """The groups this principal is a direct member of (``D:group-membership``)."""
        return [g.id for g in self.groups().values() if user_or_group in g.members]

    def via_groups(self, collection: str, user: str) -> str | None:
        """The highest access the user has on the collection through its groups."""
        shares = self.table.of_collection(collection)
        groups = self.groups() if shares else {}
        best: str | None = None
        for share in shares:
            group = groups.get(share.group_id)
            if group is not None and user in group.expanded and user != share.owner:
                best = higher(best, share.access)
        return best

    def entries(self, collection: str) -> list[tuple[GroupShare, str]]:
        """The groups a collection is shared with, with their display names."""
        shares = self.table.of_collection(collection)
        groups = self.groups() if shares else {}  # most collections have none: one query
        return [
            (share, groups[share.group_id].display_name if share.group_id in groups else "")
            for share in shares
        ]

    def shared_with(self, collection: str, group_id: str) -> GroupShare | None:
        found = [s for s in self.table.of_collection(collection) if s.group_id == group_id]
        return found[0] if found else None

    def via(self, share: Share) -> str:
        """How a member has their share: the groups, and "direct" for a share by name
        (``davproxy admin shares``)."""
        has_bind, individual = self.table.bind(share.id)
        if not has_bind:
            return "direct"
        groups = self.groups()
        names = [
            "group:" + s.group_id
            for s in self.table.of_collection(share.collection)
            if s.group_id in groups and share.sharee in groups[s.group_id].expanded
        ]
        return "+".join(names + (["direct"] if individual else [])) or "-"

    def listing(self) -> list[tuple[Share, str]]:
        """Each group share as a row of ``davproxy admin shares``, with its member count."""
        groups = self.groups()
        rows = []
        for g in self.table.all():
            count = len(groups[g.group_id].expanded - {g.owner}) if g.group_id in groups else 0
            row = Share(
                0, self.name, g.owner, g.collection, g.kind, "group:" + g.group_id, g.href,
                g.access, "shared", "", g.comment, "", "", None, g.created, g.created,
            )  # fmt: skip
            rows.append((row, f"{count} member(s)"))
        return rows

    # -- share requests (inside the model's transaction) ---------------------------------

    def share_group(
        self,
        owner: str,
        collection: str,
        info: CollectionFacts,
        group_id: str,
        wanted: ShareeRequest,
    ) -> None:
        """Share with (or, with no-access, stop sharing with) a group; every member is
        invited again, as a new CS:set of a group does in CalendarServer."""
        if wanted.access == "no-access":
            self.table.delete_share(collection, group_id)
            self.reconcile(owner, collection, info)
            log.info("%s stopped sharing %s with group %s", owner, collection, group_id)
            return
        self.table.put_share(
            GroupShare(
                self.name, collection, group_id, owner, info.kind, wanted.href, wanted.access,
                wanted.comment,
            )
        )  # fmt: skip
        group = self.groups()[group_id]
        self.reconcile(owner, collection, info, group.expanded, wanted.comment)
        log.info(
            "%s shared %s with group %s (%s, %d member(s))",
            owner, collection, group_id, wanted.access, len(group.expanded - {owner}),
        )  # fmt: skip

    def with_individual(self, collection: str, user: str, individual: str) -> str:
        """The access a member gets when given ``individual`` by name."""
        return higher(individual, self.via_groups(collection, user)) or individual

    def note_individual(self, share: Share, individual: str) -> None:
        """Remember what the member was given by name when groups also give access."""
        if self.via_groups(share.collection, share.sharee) is not None:
            self.table.put_bind(share.id, individual)
        else:
            self.table.delete_bind(share.id)

    def individual_removed(self, share: Share, info: CollectionFacts) -> bool:
        """The sharer removed a member's individual share: True when a group share keeps
        the member in (now at the groups' access, and told), False to end it."""
        through = self.via_groups(share.collection, share.sharee)
        if through is None:
            return False
        self.table.put_bind(share.id, None)
        self._set_access(share, through, info)
        return True

    def holds(self, path: str) -> bool:
        """Whether a collection at or below ``path`` is shared with a group."""
        return self.table.any_under(path)

    def collection_gone(self, collection: str) -> None:
        self.table.delete_under(collection)

    # -- bringing members in line ---------------------------------------------------------

    def reconcile(
        self,
        owner: str,
        collection: str,
        info: CollectionFacts,
        renotify: Iterable[str] = (),
        comment: str = "",
    ) -> int:
        """Make the members' shares of one collection match its group shares: invite
        new members, change access where it changed (telling the member), end the
        shares of members no group holds any more unless shared with them by name.
        Members in ``renotify`` (a new share of their group) are invited again, even
        after declining.  Returns how many members' shares changed."""
        groups = self.groups()
        wanted: dict[str, str] = {}
        for group_share in self.table.of_collection(collection):
            group = groups.get(group_share.group_id)
            for user in group.expanded if group is not None else ():
                if user != owner:
                    wanted[user] = higher(wanted.get(user), group_share.access) or "read"
        again = set(renotify)
        binds = self.table.binds(collection)
        current = {s.sharee: s for s in self.store.shares_of_collection(self.name, collection)}
        changed = 0
        for user, through in sorted(wanted.items()):
            share = current.get(user)
            if share is None:
                share, _ = self.store.share_upsert(
                    NewShare(
                        upstream=self.name, owner=owner, collection=collection, kind=info.kind,
                        sharee=user, sharee_href=self.upstream.user_paths(user).principal,
                        access=through, status="noresponse", comment=comment,
                    )
                )  # fmt: skip
                self.table.put_bind(share.id, None)
                self.core.notify_invite(share, info, share.access)
                changed += 1
                continue
            if share.status == "invalid":
                continue
            individual = binds.get(share.id, share.access)
            self.table.put_bind(share.id, individual)
            effective = higher(individual, through) or through
            if user in again:
                changed += self._set_access(share, effective, info, reinvite=True, comment=comment)
            elif effective != share.access:
                changed += self._set_access(share, effective, info)
        for share in current.values():
            if share.id not in binds or share.sharee in wanted:
                continue
            individual = binds[share.id]
            if individual is None:  # no route left: the share ends (the member is told)
                self.core.end_share(share, info)
            else:  # back to what was shared with them by name
                self.table.delete_bind(share.id)
                self._set_access(share, individual, info)
            changed += 1
        return changed

    def _set_access(
        self,
        share: Share,
        access: str,
        info: CollectionFacts,
        reinvite: bool = False,
        comment: str | None = None,
    ) -> int:
        """Change a member's access (and, re-invited, a declined member's status) and
        tell them; a declined member who is not invited again hears nothing."""
        status = "noresponse" if reinvite else share.status
        if access == share.access and status == share.status and not reinvite:
            return 0
        updated, _ = self.store.share_upsert(
            NewShare(
                upstream=share.upstream, owner=share.owner, collection=share.collection,
                kind=share.kind, sharee=share.sharee, sharee_href=share.sharee_href,
                access=access, status=status,
                comment=share.comment if comment is None else comment,
                sharee_name=share.sharee_name, summary=share.summary,
            )
        )  # fmt: skip
        if updated.status != "declined":
            self.core.notify_invite(updated, info, updated.access)
        return 1

    async def apply_directory(self, wanted: tuple[DirectoryGroup, ...]) -> int:
        """Bring the stored group directory (and every share through a changed group)
        in line with the mapping file's groups: one transaction per changed group, its
        members told.  Start-up and reload both come here.  Returns the groups changed."""
        async with self._applying:
            return await self._apply_directory(wanted)

    async def _apply_directory(self, wanted: tuple[DirectoryGroup, ...]) -> int:
        members = {g.id: g.members for g in wanted}
        new = {
            g.id: GroupRecord(
                g.id, g.display_name or g.id, g.emails, g.members, expand(members, g.id)
            )
            for g in wanted
        }
        old = self.groups()
        changed = [gid for gid in sorted(set(old) | set(new)) if old.get(gid) != new.get(gid)]
        owners: set[str] = set()
        for group_id in changed:
            group_shares = self.table.of_group(group_id)
            infos = {
                s.collection: await self.core.owner_collection_info(s.owner, s.collection)
                for s in group_shares
            }
            with self.store.transaction():
                if group_id in new:
                    self.table.put_group(new[group_id])
                else:  # gone from the directory: its shares end with it
                    self.table.delete_group(group_id)
                    for share in group_shares:
                        self.table.delete_share(share.collection, group_id)
                for share in group_shares:
                    self.reconcile(share.owner, share.collection, infos[share.collection])
                    owners.add(share.owner)
            before, after = old.get(group_id), new.get(group_id)
            log.info(
                "group %s %s: %d member(s) before, %d now; %d shared collection(s) brought in line",
                group_id,
                "added" if before is None else "removed" if after is None else "changed",
                len(before.expanded) if before else 0,
                len(after.expanded) if after else 0,
                len(group_shares),
            )
        for owner in sorted(owners):
            await self.core.access.apply(owner)
        return len(changed)
