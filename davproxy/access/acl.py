"""The ``acl`` access backend: the upstream's own WebDAV ACL (RFC 3744) enforces each share.

For servers that implement the ``ACL`` method (DAViCal; Cyrus, SOGo and many others
too).  When a sharee accepts, davproxy grants them the share's privileges on the owner's
collection with an ``ACL`` request; a change of access rewrites that ACE, and revoke,
decline, unbind or the owner's delete remove it.  Requests under the sharee's copy go to
the owner's collection *as the sharee* (``upstream_enforces``), so the upstream itself
refuses what the share does not allow; the copy's path, per-sharee properties and
notifications stay davproxy's (``sharing/copies.py``).  A sharee who reaches the server
directly has exactly the share's privileges there, and loses them on revoke.

Only ACEs davproxy wrote are ever changed.  They are recognisable by the store, not by
the ACL (an ACE has no room for a mark): table ``acl_entries`` (migration 11) holds one
row per (collection, sharee) davproxy has written or is about to write, recorded
*before* the ``ACL`` request so that a kill between the two leaves nothing unknown;
every other ACE is left as it is.  A sharee who already holds an ACE davproxy did not
write (an administrator's) cannot accept: DAV:no-ace-conflict, nothing recorded.

Two ways servers take an ``ACL`` request (``[access] acl_request``):

* ``whole`` (RFC 3744 §8.1): the body is the resource's new ACL.  davproxy sends every
  ACE that is not protected nor inherited as the server wrote it, plus its own; one of
  its own left out is gone.
* ``own-aces`` (DAViCal, the kind preset): the server merges per principal and cannot
  delete an ACE through ``ACL`` (an empty grant stores a deny), and sending others'
  ACEs back would rewrite them (DAViCal turns the ``authenticated`` ACE into defaults and
  drops privileges it does not show).  davproxy sends only its own ACEs; to remove one it
  writes what every authenticated user holds there (the ``authenticated`` ACE), the
  nearest an ``ACL`` request comes to removing it, and keeps recognising it as its own.

Every ``ACL`` is read back: a server that answers 200 but stored something else (DAViCal
turns an unknown privilege into a revoke) is reported, not believed.  Like the other
backends, one mechanism serves every change and start-up: the store is the truth and
each owner's ACEs are brought in line with it (``apply``), retried until the upstream
confirms.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from davproxy.access.acl_document import (
    ACL,
    AUTHENTICATED,
    SHARE_PRIVILEGES,
    Ace,
    acl_body,
    expanded,
    grant_ace,
    parse_acl,
    principal_key,
    refusal,
)
from davproxy.access.foreign import ForeignShare
from davproxy.access.settling import apply_each
from davproxy.dav.davxml import DAV
from davproxy.dav.errors import DavError, PlainError
from davproxy.store import Store
from davproxy.store.records import Share
from davproxy.upstream.client import Upstream, UpstreamError

log = logging.getLogger("davproxy.sharing")

NO_ACE_CONFLICT = f"{{{DAV}}}no-ace-conflict"
# What a share means, compared between what was sent and what the server shows (servers
# hide privileges that do not apply to a collection's type, e.g. free-busy on contacts).
_SIGNIFICANT = frozenset(f"{{{DAV}}}{p}" for p in ("read", "write-content", "bind", "unbind"))


def _meaning(privileges: Iterable[str]) -> frozenset[str]:
    return expanded(privileges) & _SIGNIFICANT


class AclBackend:
    name = "acl"
    upstream_rights = True
    upstream_serves_copies = False
    upstream_enforces = True
    adopting = False  # an ACE does not say where a sharee sees it: nothing to adopt

    def __init__(
        self,
        store: Store,
        upstream: Upstream,
        headers_for: Callable[[str], dict[str, str]],
        whole: bool,
    ) -> None:
        self.store = store
        self.upstream = upstream
        self._headers_for = headers_for  # acting as an owner: they hold write-acl
        self._whole = whole
        self._lock = asyncio.Lock()  # read-modify-write of ACLs, one at a time
        self._dirty: set[str] = set()  # owners whose last apply failed
        self.needs_full = True

    # -- the request path -----------------------------------------------------------------

    def reserved(self, rest: str) -> bool:
        return False

    def withdrawn(self, user: str, rest: str) -> bool:
        return False  # copies exist in davproxy only: an ended one is gone at the commit

    def ended(self, share: Share) -> None:
        return None  # its ACE stays recorded in acl_entries until apply removes it

    def mark_adopted(self) -> None:
        return None

    async def foreign_shares(self) -> list[ForeignShare]:
        return []

    async def grant(self, share: Share, mount: str) -> None:
        """Grant the sharee the share's privileges before the acceptance is recorded
        (DavError 409 no-ace-conflict when they hold an ACE davproxy did not write)."""
        async with self._lock:
            aces = await self._read(share.owner, share.collection)
            if aces is None:
                raise PlainError(404, f"The shared collection /{share.collection} is gone")
            recorded = self._recorded(share.owner).get(share.collection, {})
            principal = self._principal(share.sharee)
            if share.sharee not in recorded and any(a.principal == principal for a in aces):
                log.warning(
                    "upstream %s: %s already holds an ACE on %s that davproxy did not "
                    "write: not accepting the share over it", self.upstream.name,
                    share.sharee, share.collection,
                )  # fmt: skip
                raise DavError(
                    409, NO_ACE_CONFLICT,
                    f"{share.sharee} already has access rights on this collection that "
                    "davproxy did not set (an administrator's); they are left as they are",
                )  # fmt: skip
            wanted = {share.sharee: SHARE_PRIVILEGES[share.access]}
            mine = {k: v for k, v in recorded.items() if k == share.sharee}  # others stay
            try:
                await self._bring(share.owner, share.collection, aces, wanted, mine, False)
            except PlainError:
                if share.sharee not in recorded:
                    self._forget(share.collection, share.sharee)
                raise

    async def apply(
        self, owner: str, without: str | None = None, dry_run: bool = False
    ) -> list[str]:
        """Make the ACEs davproxy holds on ``owner``'s collections equal the store's
        accepted shares (``without``: a collection being deleted, left alone); the
        changes, one a line."""
        wanted: dict[str, dict[str, frozenset[str]]] = {}
        for share in self.store.shares_by_owner(self.upstream.name, owner):
            if share.status == "accepted" and share.mount:
                privileges = SHARE_PRIVILEGES[share.access]
                wanted.setdefault(share.collection, {})[share.sharee] = privileges
        changes: list[str] = []
        failed: list[str] = []
        async with self._lock:
            recorded = self._recorded(owner)
            for collection in sorted(set(wanted) | set(recorded)):
                if without is not None and collection.startswith(without):
                    continue
                try:
                    aces = await self._read(owner, collection)
                    if aces is None:  # the collection is gone, and its ACL with it
                        if not dry_run:
                            self._forget(collection)
                        continue
                    changes += await self._bring(
                        owner, collection, aces, wanted.get(collection, {}),
                        recorded.get(collection, {}), dry_run,
                    )  # fmt: skip
                except PlainError as exc:
                    failed.append(f"/{collection} ({exc.message})")
        if dry_run:
            return changes
        if failed:
            self._dirty.add(owner)
            raise PlainError(
                502, f"Upstream {self.upstream.name} could not apply the ACEs of "
                f"{', '.join(failed)} (retried)",
            )  # fmt: skip
        self._dirty.discard(owner)
        return changes

    # -- one collection -------------------------------------------------------------------

    async def _bring(
        self,
        owner: str,
        collection: str,
        aces: list[Ace],
        wanted: dict[str, frozenset[str]],
        recorded: dict[str, bool],
        dry_run: bool,
    ) -> list[str]:
        """One collection's ACEs of davproxy brought to ``wanted`` (sharee -> privileges);
        ``recorded``: sharee -> whether davproxy's ACE there is a neutralised one."""
        found = {ace.principal: ace for ace in aces if ace.by_href}
        neutral = next(
            (a.privileges for a in aces if a.principal == AUTHENTICATED and a.grant), frozenset()
        )
        writes: dict[str, frozenset[str]] = {}  # sharee -> privileges to send
        removed: list[str] = []
        changes: list[str] = []
        for sharee, privileges in sorted(wanted.items()):
            ace = found.get(self._principal(sharee))
            if ace is not None and sharee not in recorded:
                changes.append(f"leave {sharee}'s ACE on /{collection}: not davproxy's")
                log.warning("upstream %s: %s", self.upstream.name, changes[-1])
                continue
            if ace is None or not ace.grant or _meaning(ace.privileges) != _meaning(privileges):
                writes[sharee] = privileges
                changes.append(f"grant {sharee} {_words(privileges)} on /{collection}")
        for sharee, is_neutral in sorted(recorded.items()):
            if sharee in wanted:
                continue
            ace = found.get(self._principal(sharee))
            if ace is None or (ace.grant and _meaning(ace.privileges) == _meaning(neutral)):
                if not dry_run and (ace is None or not is_neutral):
                    self._settled(owner, collection, sharee, ace is not None, neutral)
                continue  # already gone, or holding only what everyone holds
            removed.append(sharee)
            if not self._whole:
                writes[sharee] = neutral
            changes.append(f"remove {sharee}'s ACE on /{collection}")
        if not writes and not removed:
            return []
        if dry_run:
            return changes
        with self.store.transaction():  # recorded first: a kill now leaves nothing unknown
            for sharee, privileges in writes.items():
                self._record(owner, collection, sharee, privileges, sharee in removed)
        sent = [grant_ace(self._principal(sharee), p) for sharee, p in writes.items()]
        if self._whole:
            ours = {self._principal(s) for s in (*wanted, *recorded)}
            keep = [
                a.node
                for a in aces
                if not a.protected and not a.inherited and a.principal not in ours
            ]
            sent = keep + [
                grant_ace(self._principal(sharee), wanted[sharee])
                for sharee in sorted(wanted)
                if sharee in recorded or sharee in writes
            ]
        await self._send(owner, collection, acl_body(sent))
        after = await self._read(owner, collection)
        shown = {a.principal: a for a in after or [] if a.by_href}
        for sharee, privileges in writes.items():
            ace = shown.get(self._principal(sharee))
            if ace is None or not ace.grant or _meaning(ace.privileges) != _meaning(privileges):
                log.error(
                    "upstream %s accepted the ACL of %s but shows %s with %s, not %s",
                    self.upstream.name, collection, sharee,
                    _words(ace.privileges) if ace else "no ACE", _words(privileges),
                )  # fmt: skip
                raise PlainError(
                    502, f"Upstream {self.upstream.name} did not store the ACL as sent"
                )
        for sharee in removed:
            ace = shown.get(self._principal(sharee))
            if ace is None:
                self._settled(owner, collection, sharee, False, neutral)
            elif _meaning(ace.privileges) != _meaning(neutral) or not ace.grant:
                # a server that merges ACL requests keeps what "whole" leaves out
                log.error(
                    "upstream %s kept %s's ACE on %s that the ACL request left out "
                    "(does it merge ACL requests? then set [access] acl_request = "
                    "\"own-aces\")", self.upstream.name, sharee, collection,
                )  # fmt: skip
                raise PlainError(
                    502, f"Upstream {self.upstream.name} kept an ACE davproxy removed"
                    " (acl_request = \"own-aces\" may be needed)",
                )  # fmt: skip
        log.info("upstream %s: %s", self.upstream.name, "; ".join(changes))
        return changes

    # -- the upstream ---------------------------------------------------------------------

    def _principal(self, user: str) -> str:
        return principal_key(self.upstream.user_paths(user).upstream_principal)

    async def _read(self, owner: str, collection: str) -> list[Ace] | None:
        """The collection's ACL as its owner sees it; None when it does not exist."""
        try:
            status, body = await self.upstream.propfind(collection, [ACL], self._headers_for(owner))
        except UpstreamError as exc:
            raise PlainError(502, exc.message) from None
        if status == 404:
            return None
        aces = parse_acl(body) if status == 207 else None
        if aces is None:
            log.error(
                "upstream %s: no readable DAV:acl on %s for %s (status %d)",
                self.upstream.name, collection, owner, status,
            )  # fmt: skip
            raise PlainError(502, f"Upstream {self.upstream.name} did not show the ACL")
        return aces

    async def _send(self, owner: str, collection: str, body: bytes) -> None:
        path, extra = self.upstream.target(collection)
        headers = {
            **self._headers_for(owner),
            **extra,
            "Content-Type": "application/xml; charset=utf-8",
        }
        try:
            async with self.upstream.request("ACL", path, headers, body) as answer:
                text = await answer.read()
                status = answer.status
        except UpstreamError as exc:
            raise PlainError(502, exc.message) from None
        if 200 <= status < 300:
            return
        why = refusal(text) or f"status {status}"
        log.error(
            "upstream %s refused the ACL of %s (as %s): %s",
            self.upstream.name, collection, owner, why,
        )  # fmt: skip
        raise PlainError(502, f"Upstream {self.upstream.name} refused the ACL change: {why}")

    # -- the store's record of davproxy's ACEs --------------------------------------------

    def _recorded(self, owner: str) -> dict[str, dict[str, bool]]:
        """collection -> sharee -> neutralised, for every ACE of ``owner``'s collections
        davproxy has written."""
        rows = self.store.execute(
            "SELECT collection, sharee, neutral FROM acl_entries WHERE upstream = ? AND owner = ?",
            (self.upstream.name, owner),
        )
        found: dict[str, dict[str, bool]] = {}
        for collection, sharee, neutral in rows:
            found.setdefault(collection, {})[sharee] = bool(neutral)
        return found

    def _owners(self) -> set[str]:
        rows = self.store.execute(
            "SELECT DISTINCT owner FROM acl_entries WHERE upstream = ?", (self.upstream.name,)
        )
        return {row[0] for row in rows}

    def _record(
        self, owner: str, collection: str, sharee: str, privileges: frozenset[str], neutral: bool
    ) -> None:
        self.store.execute(
            "INSERT INTO acl_entries (upstream, owner, collection, sharee, privileges,"
            " neutral, written) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT"
            " (upstream, collection, sharee) DO UPDATE SET owner = excluded.owner,"
            " privileges = excluded.privileges, neutral = excluded.neutral,"
            " written = excluded.written",
            (self.upstream.name, owner, collection, sharee, _words(privileges), int(neutral),
             time.time()),
        )  # fmt: skip

    def _settled(
        self, owner: str, collection: str, sharee: str, present: bool, neutral: frozenset[str]
    ) -> None:
        """A removed ACE confirmed: forgotten when gone, else kept as a neutral one."""
        with self.store.transaction():
            if present:
                self._record(owner, collection, sharee, neutral, True)
            else:
                self._forget(collection, sharee)

    def _forget(self, collection: str, sharee: str | None = None) -> None:
        sql = "DELETE FROM acl_entries WHERE upstream = ? AND collection = ?"
        params: tuple[object, ...] = (self.upstream.name, collection)
        if sharee is not None:
            sql += " AND sharee = ?"
            params += (sharee,)
        with self.store.transaction():
            self.store.execute(sql, params)

    # -- whole reconciliations ------------------------------------------------------------

    async def reconcile_all(self, dry_run: bool = False) -> list[str]:
        """Every owner with shares in the store or ACEs davproxy wrote (also those whose
        last share ended) brought in line; the changes (dry: that would be made)."""
        owners = self.store.share_owners(self.upstream.name) | self._owners()
        changes: list[str] = []
        failed: list[str] = []
        for owner in sorted(owners):
            try:
                changes += await self.apply(owner, dry_run=dry_run)
            except PlainError:
                failed.append(owner)
        if not dry_run:
            self.needs_full = False
        if failed:
            raise PlainError(
                502, f"Upstream {self.upstream.name} could not apply the ACEs of "
                f"{', '.join(failed)}",
            )  # fmt: skip
        return changes

    def unsettled(self) -> bool:
        return self.needs_full or bool(self._dirty)

    async def settle(self) -> None:
        await apply_each(self.apply, set(self._dirty), self.upstream.name)


def _words(privileges: Iterable[str]) -> str:
    """Privileges as a short text: ``read write-content`` (namespaces dropped)."""
    names = sorted(p.rpartition("}")[2] for p in privileges)
    return " ".join(names) if names else "(none)"
