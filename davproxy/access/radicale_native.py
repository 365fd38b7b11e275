"""The radicale-native access backend: Radicale's own map shares enforce each share.

Every accepted share becomes a map share in Radicale (``access/radicale_api.py``): the
sharee's copy is a real path of Radicale, served under the sharee's own identity with
the owner's rights intersected with the share's.  One mechanism serves every change
(share, reply, unbind, delete, start-up): the store is the truth and Radicale's maps of
that owner are reconciled to it.  Until Radicale confirms that an ended share is gone,
davproxy refuses the sharee there itself, so a revoked sharee is cut off at the commit,
not after the upstream call.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote

from davproxy.access.radicale_api import NativeSharingError, RadicaleSharingApi
from davproxy.dav.errors import PlainError
from davproxy.dav.paths import canonical
from davproxy.store.records import Share
from davproxy.store.sqlite import Store
from davproxy.upstream.client import Upstream

log = logging.getLogger("davproxy.sharing")

# Radicale's sharing API and its token shares: davproxy's to drive, never a client's.
_RESERVED = (".sharing/", ".token/", ".sharing", ".token")


class RadicaleNative:
    name = "radicale-native"
    upstream_rights = True
    upstream_serves_copies = True

    def __init__(self, store: Store, upstream: Upstream, api: RadicaleSharingApi) -> None:
        self.store = store
        self.upstream = upstream
        self.api = api
        # The (sharee, copy path) pairs Radicale maps per owner, as last applied, and the
        # pairs the store has ended but Radicale may still map.
        self._applied: dict[str, set[tuple[str, str]]] = {}
        self._withdrawn: dict[str, set[tuple[str, str]]] = {}

    def reserved(self, rest: str) -> bool:
        return rest.startswith(_RESERVED)

    def _radicale_path(self, rest: str) -> str:
        return unquote(self.upstream.target(rest)[0])

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

    async def apply(self, owner: str, without: str | None = None) -> None:
        """Make Radicale's map shares of ``owner`` equal the store's accepted shares
        (``without``: Radicale refuses to delete a collection that is still mapped)."""
        name = self.upstream.name
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
        # No await since the store changed: this runs as one step with the commit.
        pairs = {(share.sharee, share.mount or "") for share in kept}
        ended = self._applied.get(owner, set()) - pairs
        if ended:
            self._withdrawn.setdefault(owner, set()).update(ended)
        try:
            changed, removed = await self.api.reconcile(wanted, {owner})
        except (NativeSharingError, ValueError) as exc:
            log.error(
                "upstream %s: could not apply %s's shares (%d ended share(s) refused by "
                "davproxy until it can): %s",
                name, owner, len(self._withdrawn.get(owner, ())), exc,
            )  # fmt: skip
            raise PlainError(502, f"Upstream {name} could not apply the share change") from None
        self._applied[owner] = pairs
        self._withdrawn.pop(owner, None)
        if changed or removed:
            log.info(
                "upstream %s: %s's shares applied natively (%d set, %d removed)",
                name, owner, changed, removed,
            )  # fmt: skip

    def withdrawn(self, user: str, rest: str) -> bool:
        if not self._withdrawn:
            return False
        key = canonical(rest)
        return any(
            sharee == user and (key.startswith(mount) or key + "/" == mount)
            for pairs in self._withdrawn.values()
            for sharee, mount in pairs
        )

    async def reconcile_all(self) -> None:
        for owner in sorted(self.store.share_owners(self.upstream.name)):
            await self.apply(owner)
