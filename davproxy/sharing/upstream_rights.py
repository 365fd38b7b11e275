"""Keeping the upstream in line with the store: whole reconciliations and their retries.

One entry point for start-up, the server's retry loop and ``davproxy admin reconcile``:
deletions davproxy never saw the end of are settled, the upstream's own shares are
adopted the first time (radicale-native: map shares made in Radicale before davproxy
ran are recorded, never removed), then every owner's upstream rights are made equal to
the store.  The server keeps retrying whatever failed (the upstream was down, or a
revocation came from another process while it was) until the upstream confirms.

Every process of a fleet runs the retry loop; the work itself holds the lease
``upstream:<name>`` (store/leases.py), so one process at a time brings an upstream in
line (``davproxy admin reconcile`` takes the same lease), and whatever it settles in
the store (removals, pending deletions) is no longer owed by the others.
"""

from __future__ import annotations

import asyncio
import logging

from davproxy.dav.errors import PlainError
from davproxy.sharing.model import Sharing
from davproxy.store.leases import Leases, exclusive

log = logging.getLogger("davproxy.sharing")


async def reconcile(sharing: Sharing, *, dry_run: bool = False) -> list[str]:
    """Bring the upstream in line; the changes, one a line (``dry_run``: what would
    change, with nothing changed).  PlainError when the upstream fails."""
    access = sharing.access
    if not dry_run:
        await sharing.settle_deletions()
    if not access.upstream_rights:
        return []
    lines: list[str] = []
    if access.adopting:
        for found in await access.foreign_shares():
            if dry_run:
                lines.append(str(found))
            elif await sharing.adopt(found) is not None:
                lines.append(str(found))
                log.warning("upstream %s: %s", sharing.name, found)
        if not dry_run:
            access.mark_adopted()
    lines += await access.reconcile_all(dry_run=dry_run)
    return lines


def lease_name(sharing: Sharing) -> str:
    return f"upstream:{sharing.name}"


def owed(sharing: Sharing) -> bool:
    """Whether something failed that the server must retry."""
    sharing.store.notice_changes()
    return sharing.access.unsettled() or bool(sharing.store.pending_deletions(sharing.name))


async def _retry(sharing: Sharing) -> None:
    if not owed(sharing):  # again, now that the lease is held: another may have settled it
        return
    if sharing.access.needs_full or sharing.store.pending_deletions(sharing.name):
        await reconcile(sharing)
    else:
        await sharing.access.settle()


async def keep_in_line(sharing: Sharing, leases: Leases, pause: float = 5.0) -> None:
    """The server's retry loop: every ``pause`` seconds, whatever is owed is retried
    (a whole reconciliation until one has listed everything, else the owners
    concerned), so a change the upstream missed reaches it within ``pause`` of its
    return.  A retry that fails is logged once, not every ``pause``.  While another
    process holds the upstream's lease, this one waits for the next round."""
    failing = False
    while True:
        await asyncio.sleep(pause)
        try:
            if not owed(sharing):
                continue
            ran, _ = await exclusive(leases, lease_name(sharing), lambda: _retry(sharing))
            if not ran:
                continue
        except PlainError as exc:
            if not failing:
                log.warning("reconciliation with %s still failing: %s", sharing.name, exc)
            failing = True
            continue
        except Exception:  # never let the retries stop
            log.exception("reconciliation with %s: unexpected error", sharing.name)
            failing = True
            continue
        log.info("reconciliation with %s done", sharing.name)
        failing = False
