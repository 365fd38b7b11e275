"""The default access backend: davproxy enforces every share itself.

A sharee's copy exists only in davproxy: requests under it are forwarded to the owner's
collection as the owner, after davproxy has checked the sharee's access
(``sharing/copies.py``).  The upstream's rights never change, so there is nothing to
grant, apply or reconcile, and a revocation takes effect at the commit.
"""

from __future__ import annotations

from davproxy.access.foreign import ForeignShare
from davproxy.store.records import Share


class ProxyEnforced:
    name = "proxy-enforced"
    upstream_rights = False
    upstream_serves_copies = False
    upstream_enforces = False

    def reserved(self, rest: str) -> bool:
        return False

    def withdrawn(self, user: str, rest: str) -> bool:
        return False

    async def grant(self, share: Share, mount: str) -> None:
        return None

    async def apply(self, owner: str, without: str | None = None) -> None:
        return None

    def ended(self, share: Share) -> None:
        return None

    adopting = False
    needs_full = False

    def mark_adopted(self) -> None:
        return None

    async def foreign_shares(self) -> list[ForeignShare]:
        return []

    async def reconcile_all(self, dry_run: bool = False) -> list[str]:
        return []

    def unsettled(self) -> bool:
        return False

    async def settle(self) -> None:
        return None
