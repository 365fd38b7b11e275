"""The radicale-native access backend: Radicale's own map shares enforce each share.

Every accepted share becomes a map share in Radicale (``access/radicale_api.py``): the
sharee's copy is a real path of Radicale, served under the sharee's own identity with
the owner's rights intersected with the share's.  One mechanism serves every change
(share, reply, unbind, delete, start-up): the store is the truth and Radicale's maps of
that owner are reconciled to it.

A copy that ends is written down in the store (``upstream_removals``) in the very
transaction that ends it, and crossed out only once Radicale's maps of that owner match
the store.  Until then davproxy refuses the sharee there itself, so a revoked sharee is
cut off at the commit, also when Radicale is down or the revocation came from
``davproxy admin`` in another process; and the server retries until Radicale confirms.

Radicale's API lists only the maps the caller owns or receives, so reconciling "every
owner" means asking as every user davproxy knows of (htpasswd, ``[[users]]``, the
store).  Maps davproxy cannot represent are left alone: group and realm shares,
conversions (birthday calendars), maps without read access, maps outside davproxy's
path space, and maps their owner has disabled (they grant nothing).  Maps that were
there before davproxy first reconciled this upstream are adopted, not removed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from davproxy.access.foreign import ForeignShare
from davproxy.access.radicale_api import (
    MapChange,
    NativeSharingError,
    RadicaleSharingApi,
    Reconciled,
    flag,
)
from davproxy.access.settling import apply_each
from davproxy.dav.errors import PlainError
from davproxy.dav.paths import canonical
from davproxy.store import Store
from davproxy.store.records import Share
from davproxy.upstream.client import Upstream

log = logging.getLogger("davproxy.sharing")

# Radicale's sharing API and its token shares: davproxy's to drive, never a client's.
_RESERVED = (".sharing/", ".token/", ".sharing", ".token")
# Store setting: this upstream's own maps have been adopted (first reconciliation done).
ADOPTED = "radicale-native-adopted:"


class RadicaleNative:
    name = "radicale-native"
    upstream_rights = True
    upstream_serves_copies = True
    upstream_enforces = True

    def __init__(
        self,
        store: Store,
        upstream: Upstream,
        api: RadicaleSharingApi,
        users: Callable[[], set[str]] = set,
    ) -> None:
        self.store = store
        self.upstream = upstream
        self.api = api
        self._users = users  # user ids known outside the store (htpasswd, [[users]])
        # The (sharee, copy path) pairs Radicale maps per owner, as last applied, and the
        # pairs granted but not recorded (an acceptance that failed after the grant).
        self._applied: dict[str, set[tuple[str, str]]] = {}
        self._withdrawn: dict[str, set[tuple[str, str]]] = {}
        # Owners whose last apply failed, and whether a whole reconciliation is owed
        # (start-up's has not succeeded yet): the server retries both until done.
        self._dirty: set[str] = set()
        self.needs_full = True

    # -- paths ---------------------------------------------------------------------------

    def reserved(self, rest: str) -> bool:
        return rest.startswith(_RESERVED)

    def _radicale_path(self, rest: str) -> str:
        return unquote(self.upstream.target(rest)[0])

    def _rest_of(self, radicale_path: object) -> str | None:
        """A Radicale collection path as the store writes it (below the upstream root),
        or None when it lies outside what davproxy serves."""
        if not isinstance(radicale_path, str) or not radicale_path.endswith("/"):
            return None
        path = canonical(radicale_path)
        root = "/" if self.upstream.config.href_mapping == "script-name" else None
        root = root or self.upstream.paths.upstream
        if not path.startswith(root) or len(path) <= len(root):
            return None
        return path[len(root) :]

    # -- which maps are davproxy's --------------------------------------------------------

    def _managed(self, row: dict[str, Any]) -> bool:
        """A map davproxy can represent: one user, plain (no conversion), with read
        access, on both ends inside davproxy's path space."""
        user = row.get("User")
        permissions = str(row.get("Permissions") or "")
        return (
            isinstance(user, str)
            and bool(user)
            and not user.startswith((":", "@"))  # group and realm shares
            and str(row.get("Conversion") or "none") == "none"
            and "r" in permissions
            and not ({"u", "U"} & set(permissions))  # a group share resolved for a user
            and self._rest_of(row.get("PathOrToken")) is not None
            and self._rest_of(row.get("PathMapped")) is not None
        )

    def _pending(self) -> set[tuple[str, str]]:
        """(sharee, mount) of ended copies Radicale has not confirmed gone."""
        return {(sharee, mount) for _, sharee, mount in self.store.removals(self.upstream.name)}

    def _foreign(self, row: dict[str, Any], pending: set[tuple[str, str]]) -> bool:
        """A managed, enabled map the store has no share for (nor an ended one)."""
        collection = self._rest_of(row["PathMapped"])
        mount = self._rest_of(row["PathOrToken"])
        assert collection is not None and mount is not None
        sharee = str(row["User"])
        return (
            flag(row.get("EnabledByOwner"))
            and (sharee, mount) not in pending
            and self.store.share_for(self.upstream.name, collection, sharee) is None
        )

    @property
    def adopting(self) -> bool:
        """No reconciliation has finished yet: Radicale's own maps are still to be
        adopted, and until then none of them is removed."""
        return self.store.setting(ADOPTED + self.upstream.name) is None

    def mark_adopted(self) -> None:
        with self.store.transaction():
            self.store.set_setting(ADOPTED + self.upstream.name, str(time.time()))

    # -- the request path -----------------------------------------------------------------

    async def grant(self, share: Share, mount: str) -> None:
        # counted as applied from now on: if the acceptance is not recorded after all,
        # the next apply takes it back and davproxy refuses it meanwhile
        self._applied.setdefault(share.owner, set()).add((share.sharee, mount))
        try:
            await self.api.grant(
                share.owner,
                self._radicale_path(share.collection),
                share.sharee,
                self._radicale_path(mount),
                share.access,
            )
        except NativeSharingError as exc:
            log.error(
                "upstream %s refused to map %s for %s: %s",
                self.upstream.name, mount, share.sharee, exc,
            )  # fmt: skip
            raise PlainError(
                502, f"Upstream {self.upstream.name} could not set up the shared copy"
            ) from None

    def ended(self, share: Share) -> None:
        """In the transaction that ends ``share``: its copy must still go upstream."""
        if share.status == "accepted" and share.mount:
            self.store.removal_add(self.upstream.name, share.owner, share.sharee, share.mount)

    def withdrawn(self, user: str, rest: str) -> bool:
        mounts = [
            mount for pairs in self._withdrawn.values() for sharee, mount in pairs if sharee == user
        ]
        mounts += self.store.removals_of_sharee(self.upstream.name, user)
        if not mounts:
            return False
        key = canonical(rest)
        return any(key.startswith(mount) or key + "/" == mount for mount in mounts)

    async def apply(
        self, owner: str, without: str | None = None, dry_run: bool = False
    ) -> Reconciled:
        """Make Radicale's map shares of ``owner`` equal the store's accepted shares
        (``without``: Radicale refuses to delete a collection that is still mapped)."""
        name = self.upstream.name
        started = time.time()  # removals recorded until now are settled by this apply
        kept = [
            share
            for share in self.store.shares_by_owner(name, owner)
            if share.status == "accepted"
            and share.mount
            and (without is None or not share.collection.startswith(without))
        ]
        wanted = [
            (
                share.owner,
                self._radicale_path(share.collection),
                share.sharee,
                self._radicale_path(share.mount or ""),
                share.access,
            )
            for share in kept
        ]
        pending = self._pending()
        adopting = self.adopting

        def keep(row: dict[str, Any]) -> bool:
            """Not wanted, but left alone."""
            if not self._managed(row):
                return True
            if (row["User"], self._rest_of(row["PathOrToken"])) in pending:
                return False  # an ended share of davproxy's: it goes
            if not flag(row.get("EnabledByOwner")):
                return True  # the owner switched it off in Radicale: grants nothing
            return adopting and self._foreign(row, pending)  # adopted, not removed

        # No await since the store changed: this runs as one step with the commit.
        pairs = {(share.sharee, share.mount or "") for share in kept}
        if not dry_run:
            ended = self._applied.get(owner, set()) - pairs
            if ended:
                self._withdrawn.setdefault(owner, set()).update(ended)
        try:
            report = await self.api.reconcile(wanted, {owner}, keep=keep, dry_run=dry_run)
        except (NativeSharingError, ValueError) as exc:
            if not dry_run:
                self._dirty.add(owner)
            log.error(
                "upstream %s: could not apply %s's shares (ended copies are refused by "
                "davproxy until it can; retried): %s",
                name, owner, exc,
            )  # fmt: skip
            raise PlainError(502, f"Upstream {name} could not apply the share change") from None
        if dry_run:
            return report
        self._applied[owner] = pairs
        self._withdrawn.pop(owner, None)
        self._dirty.discard(owner)
        with self.store.transaction():
            self.store.removals_done(name, owner, started)
        self._log(owner, report, pending)
        return report

    def _log(self, owner: str, report: Reconciled, pending: set[tuple[str, str]]) -> None:
        name = self.upstream.name
        for change in report.changes:
            if change.action != "remove":
                continue
            mount = self._rest_of(change.mount)
            if (change.sharee, mount) not in pending:
                log.warning("upstream %s: %s: no such accepted share in the store", name, change)
        if report.changed or report.removed:
            log.info(
                "upstream %s: %s's shares applied natively (%d set, %d removed)",
                name, owner, report.changed, report.removed,
            )  # fmt: skip

    # -- whole reconciliations ------------------------------------------------------------

    async def _survey(self) -> list[dict[str, Any]]:
        """Every map any known user owns or receives (each once)."""
        name = self.upstream.name
        users = set(self._users()) | self.store.share_users(name)
        for owner, sharee, _ in self.store.removals(name):
            users |= {owner, sharee}
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for user in sorted(users):
            try:
                found = await self.api.visible_rows(user)
            except NativeSharingError as exc:
                raise PlainError(
                    502, f"Upstream {name} did not list the maps of {user}: {exc}"
                ) from None
            for row in found:
                rows.setdefault((str(row["Owner"]), str(row["PathOrToken"])), row)
        return list(rows.values())

    async def foreign_shares(self) -> list[ForeignShare]:
        """Radicale's own map shares that the store does not hold, to adopt."""
        pending = self._pending()
        found = []
        for row in await self._survey():
            if not self._managed(row) or not self._foreign(row, pending):
                continue
            collection = self._rest_of(row["PathMapped"])
            mount = self._rest_of(row["PathOrToken"])
            assert collection is not None and mount is not None
            access = "read-write" if "w" in str(row["Permissions"]) else "read"
            accepted = flag(row.get("EnabledByUser"))
            found.append(
                ForeignShare(
                    str(row["Owner"]), collection, str(row["User"]), mount, access, accepted
                )
            )
        return sorted(found, key=lambda f: (f.owner, f.collection, f.sharee))

    async def reconcile_all(self, dry_run: bool = False) -> list[str]:
        """Every owner with maps in Radicale, shares in the store or copies still to
        remove, brought in line; the changes made (or, dry, that would be made)."""
        name = self.upstream.name
        owners = self.store.share_owners(name) | {o for o, _, _ in self.store.removals(name)}
        owners |= {str(row["Owner"]) for row in await self._survey()}
        if not dry_run:
            self.needs_full = False  # every owner is known: retries need only the failed
        changes: list[MapChange] = []
        failed: list[str] = []
        for owner in sorted(owners):
            try:
                changes += (await self.apply(owner, dry_run=dry_run)).changes
            except PlainError:
                failed.append(owner)  # logged and kept for retries by apply
        if failed:
            raise PlainError(
                502, f"Upstream {name} could not apply the shares of {', '.join(failed)}"
            )
        return [str(change) for change in changes]

    def unsettled(self) -> bool:
        """Something the server must retry: start-up's reconciliation, an owner whose
        apply failed, or an ended copy not yet confirmed gone (maybe by another
        process, ``davproxy admin revoke``)."""
        return self.needs_full or bool(self._dirty) or bool(self.store.removals(self.upstream.name))

    async def settle(self) -> None:
        """Apply again the owners something is owed for (short of a whole reconciliation)."""
        owners = set(self._dirty) | {o for o, _, _ in self.store.removals(self.upstream.name)}
        await apply_each(self.apply, owners, self.upstream.name)
