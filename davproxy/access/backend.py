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
"""

from __future__ import annotations

from typing import Protocol

from davproxy.access.proxy_enforced import ProxyEnforced
from davproxy.access.radicale_api import RadicaleSharingApi
from davproxy.access.radicale_native import RadicaleNative
from davproxy.store.records import Share
from davproxy.store.sqlite import Store
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

    async def apply(self, owner: str, without: str | None = None) -> None:
        """After a change is committed: make the upstream's rights for ``owner`` equal
        the store's accepted shares (``without`` leaves one collection's shares out)."""
        ...

    async def reconcile_all(self) -> None:
        """At start-up and on ``davproxy admin reconcile``: every owner brought in line."""
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
        return RadicaleNative(store, upstream, api)
    return ProxyEnforced()
