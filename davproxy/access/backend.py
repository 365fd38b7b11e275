"""Who enforces a share: the seam between sharing and the upstream's own access rights.

Sharing decides *what* is shared with whom (the store is the truth); an access backend
decides *how* the upstream is made to honour it.  Every share change, reply, deletion
and start-up goes through the same few calls, whatever the backend:

- ``proxy-enforced`` (``access/proxy_enforced.py``): the upstream knows nothing of
  shares; davproxy maps a sharee's copy onto the owner's collection, forwards as the
  owner and checks read/write itself.
- ``radicale-native`` (``access/radicale_native.py``): Radicale's own map shares
  serve and enforce each copy under the sharee's identity; davproxy keeps them equal
  to the store.
- ``acl`` (``access/acl.py``): the upstream's WebDAV ACL (RFC 3744) enforces each
  share; davproxy writes the sharee's ACE on the owner's collection and forwards
  requests under the copy as the sharee.
"""

from __future__ import annotations

from typing import Protocol

from davproxy.access.acl import AclBackend
from davproxy.access.foreign import ForeignShare
from davproxy.access.proxy_enforced import ProxyEnforced
from davproxy.access.radicale_api import RadicaleSharingApi
from davproxy.access.radicale_native import RadicaleNative
from davproxy.store import Store
from davproxy.store.records import Share
from davproxy.upstream.client import Upstream
from davproxy.upstream.identity import Authenticator


class AccessBackend(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def upstream_rights(self) -> bool:
        """Whether the upstream holds rights for shares (then they can drift from the
        store, and ``reconcile_all`` brings them back in line)."""
        ...

    @property
    def upstream_serves_copies(self) -> bool:
        """Whether a sharee's copy is a real path of the upstream, served to the sharee
        under their own identity (else davproxy maps it onto the owner's collection)."""
        ...

    @property
    def upstream_enforces(self) -> bool:
        """Whether the upstream checks each sharee itself: requests under a copy then
        go upstream as the sharee, never as the owner."""
        ...

    def reserved(self, rest: str) -> bool:
        """Whether ``rest`` belongs to the upstream's own sharing machinery, which only
        davproxy may drive (a client writing it could plant shares in others' homes)."""
        ...

    def withdrawn(self, user: str, rest: str) -> bool:
        """Whether ``rest`` is under a copy of ``user``'s that the store has ended but the
        upstream may still serve: davproxy refuses it until the upstream confirms."""
        ...

    async def grant(self, share: Share, mount: str) -> None:
        """Before an acceptance is recorded: let the upstream serve the copy at ``mount``
        (PlainError 502 if it refuses: then nothing is recorded)."""
        ...

    async def apply(self, owner: str, without: str | None = None) -> object:
        """After a change is committed: make the upstream's rights for ``owner`` equal
        the store's accepted shares (``without`` leaves one collection's shares out)."""
        ...

    def ended(self, share: Share) -> None:
        """Inside the transaction that ends an accepted ``share``: remember that its copy
        must still be removed upstream (kept until the upstream confirms)."""
        ...

    #: No whole reconciliation has succeeded yet, in this process or (at start-up, see
    #: edge/startup.py) in another process of the fleet since this one started.
    needs_full: bool

    @property
    def adopting(self) -> bool:
        """The upstream's own shares have not been taken into the store yet."""
        ...

    def mark_adopted(self) -> None: ...

    async def foreign_shares(self) -> list[ForeignShare]:
        """Shares the upstream holds that the store does not know (to adopt once)."""
        ...

    async def reconcile_all(self, dry_run: bool = False) -> list[str]:
        """At start-up and on ``davproxy admin reconcile``: every owner with rights in
        the upstream or shares in the store brought in line; the changes, one a line
        (with ``dry_run``: what would change, nothing changed)."""
        ...

    def unsettled(self) -> bool:
        """Whether the server owes the upstream a retry (it failed or was down)."""
        ...

    async def settle(self) -> None:
        """Retry what is owed short of a whole reconciliation (PlainError if it fails)."""
        ...


def backend_for(store: Store, upstream: Upstream, auth: Authenticator) -> AccessBackend:
    """The backend the upstream's mapping file names in ``[access] backend``."""
    if upstream.config.access.backend == "radicale-native":
        api = RadicaleSharingApi(
            upstream.session,
            str(upstream.config.url),
            auth.headers_for,
            timeout=upstream.read_timeout,  # [server] upstream_timeout bounds these calls too
        )
        config_users = {user.id for user in upstream.config.users}
        htpasswd = auth.htpasswd

        def known_users() -> set[str]:
            return config_users | (htpasswd.users() if htpasswd is not None else set())

        return RadicaleNative(store, upstream, api, known_users)
    if upstream.config.access.backend == "acl":
        whole = upstream.config.access.acl_request == "whole"
        return AclBackend(store, upstream, auth.headers_for, whole)
    return ProxyEnforced()
