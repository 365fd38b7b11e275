"""Start-up's work on the shared store and the upstreams: once for a fleet.

Every process learns the operator feeds' refresh bounds (its own memory).  The rest
changes what the processes share, and one process at a time does it, holding the lease
``startup`` (store/leases.py): the mapping files' operator feeds written to the store,
their groups applied (changes made while davproxy was stopped, members told), each
upstream's rights reconciled.  A process that waited for the lease skips the work when a
run that began after this process started has finished with every upstream reconciled
(for workers started together: the first one's run) and so owes no whole reconciliation
of its own; otherwise it runs the work again (idempotent: what is in line stays).
Everything waits for this, so nobody is served before the groups are applied.
"""

from __future__ import annotations

import logging

from davproxy.dav.errors import PlainError
from davproxy.edge.sites import Site
from davproxy.sharing import upstream_rights
from davproxy.store.leases import Leases, exclusive

log = logging.getLogger("davproxy.app")

LEASE = "startup"


async def start_up(sites: list[Site], leases: Leases, since: float) -> None:
    for site in sites:
        site.subscriptions.note_bounds()
    ran, _ = await exclusive(
        leases,
        LEASE,
        lambda: _shared_work(sites),
        seconds=60.0,
        wait=True,
        done_since=since,
        finished=bool,  # with an upstream not reconciled, the next process tries again
    )
    if not ran:
        log.info("start-up work on the store was done by another process")
        for site in sites:
            site.sharing.access.needs_full = False


async def _shared_work(sites: list[Site]) -> bool:
    for site in sites:
        site.subscriptions.sync_configured()
        # the mapping file's groups as they are now: changes made while davproxy
        # was stopped are applied (and members told) before anyone is served
        await site.sharing.groups.apply_directory(site.upstream.config.groups)
    reconciled = True
    for site in sites:
        try:
            await upstream_rights.reconcile(site.sharing)
        except PlainError as exc:  # the upstream may still be starting: retried
            log.error("start-up reconciliation with %s failed: %s", site.upstream.name, exc)
            reconciled = False
    return reconciled
