"""Leases: one process at a time for a named job, across the processes and hosts of a fleet.

Every davproxy process runs the same background jobs (the feed scheduler, the upstream
retries, start-up's work on the shared store).  A job that must not run twice at once
takes a lease first: a row in ``leases`` (migration 12) naming its holder (host, pid and
a random part, new for every claim) and when it expires.  A claim succeeds when the row
is missing or expired; the holder renews it while the job runs (``exclusive`` does that
every third of the lease), and releases it when done.  A holder killed with SIGKILL never
releases: its lease expires and the next process takes it.

Only ``store.execute`` and ``store.transaction`` are used, with SQL that SQLite and
PostgreSQL both run: a claim is one upsert whose ``DO UPDATE ... WHERE`` only takes an
expired row, and its rowcount says who won.  Times are ``time.time()`` of the caller
(hosts need synchronised clocks; a lease of a minute tolerates seconds of skew).

``completed`` records when the last run that finished had *begun*: a process that wants a
job done "since it started" (start-up's work) waits for the holder and skips the job when
a run that began after that point has finished (``done_since``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from davproxy.store import Store

log = logging.getLogger("davproxy.leases")
T = TypeVar("T")
Clock = Callable[[], float]


def holder_id() -> str:
    """Who holds a lease: this host, this process, and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class Lease:
    """A claim that succeeded: renew or release it with this value."""

    name: str
    holder: str
    taken: float


@dataclass(frozen=True, slots=True)
class LeaseState:
    name: str
    holder: str
    expires: float
    taken: float
    completed: float


class Leases:
    """The lease verbs over the shared store."""

    def __init__(self, store: Store, clock: Clock = time.time) -> None:
        self.store = store
        self.clock = clock

    def claim(self, name: str, seconds: float) -> Lease | None:
        """Take ``name`` for ``seconds`` unless someone holds it: the lease, or None."""
        now = self.clock()
        holder = holder_id()
        with self.store.transaction():
            cursor = self.store.execute(
                "INSERT INTO leases (name, holder, expires, taken, completed)"
                " VALUES (?, ?, ?, ?, 0)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " expires = excluded.expires, taken = excluded.taken"
                " WHERE leases.expires <= ?",
                (name, holder, now + seconds, now, now),
            )
            won = cursor.rowcount == 1
        return Lease(name, holder, now) if won else None

    def renew(self, lease: Lease, seconds: float) -> bool:
        """Extend a lease still held; False when it expired and another process took it."""
        with self.store.transaction():
            cursor = self.store.execute(
                "UPDATE leases SET expires = ? WHERE name = ? AND holder = ?",
                (self.clock() + seconds, lease.name, lease.holder),
            )
            return cursor.rowcount == 1

    def release(self, lease: Lease, completed: bool = True) -> None:
        """Give the lease up at once; ``completed``: the job finished (``done_since``)."""
        done = ", completed = taken" if completed else ""
        with self.store.transaction():
            self.store.execute(
                f"UPDATE leases SET expires = 0{done} WHERE name = ? AND holder = ?",
                (lease.name, lease.holder),
            )

    def state(self, name: str) -> LeaseState | None:
        row = self.store.execute(
            "SELECT name, holder, expires, taken, completed FROM leases WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else LeaseState(*row)

    def states(self) -> list[LeaseState]:
        rows = self.store.execute(
            "SELECT name, holder, expires, taken, completed FROM leases ORDER BY name"
        )
        return [LeaseState(*row) for row in rows]

    def held_elsewhere(self, name: str) -> bool:
        """Someone holds ``name`` now (a lease of this process counts too)."""
        state = self.state(name)
        return state is not None and state.expires > self.clock()

    def done_since(self, name: str, since: float) -> bool:
        state = self.state(name)
        return state is not None and state.completed >= since


async def exclusive(
    leases: Leases,
    name: str,
    work: Callable[[], Awaitable[T]],
    *,
    seconds: float = 60.0,
    wait: bool = False,
    done_since: float | None = None,
    finished: Callable[[T], bool] | None = None,
    poll: float = 0.1,
) -> tuple[bool, T | None]:
    """Run ``work`` holding the lease ``name``, renewed every ``seconds / 3`` while it runs.

    Without ``wait``, a lease held elsewhere means (False, None) at once.  With it, the
    call waits for the lease (or its expiry).  ``done_since``: a run that began at or
    after that time and finished makes ``work`` unnecessary: (False, None); ``finished``
    says from ``work``'s value whether its run counts as finished (default: it returned)."""
    delay = poll
    while True:
        if done_since is not None and leases.done_since(name, done_since):
            return False, None
        lease = leases.claim(name, seconds)
        if lease is not None:
            # the holder we waited for may have finished between the look and the claim
            if done_since is not None and leases.done_since(name, done_since):
                leases.release(lease, completed=False)  # keeps its run's record
                return False, None
            break
        if not wait:
            return False, None
        await asyncio.sleep(delay)
        delay = min(1.0, delay * 1.5)
    renewing = asyncio.create_task(_renew(leases, lease, seconds), name=f"lease {name}")
    completed = False
    try:
        value = await work()
        completed = finished is None or finished(value)
        return True, value
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing
        try:
            leases.release(lease, completed=completed)
        except Exception as exc:  # it expires by itself
            log.warning("could not release lease %s (it expires by itself): %s", name, exc)


async def _renew(leases: Leases, lease: Lease, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds / 3)
        try:
            if not leases.renew(lease, seconds):
                log.warning("lease %s expired while held (another may run the job)", lease.name)
                return
        except Exception as exc:  # a busy store: the next renewal may pass
            log.warning("could not renew lease %s: %s", lease.name, exc)
