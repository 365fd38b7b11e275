"""Keeping feed sources fresh: when to fetch, and turning a fetched body into changes.

One refresh per source at a time (callers that arrive meanwhile share its outcome), so
any number of subscribers cost one origin fetch.  Across the processes of a fleet
(``[server] workers``, or several hosts on one store) a refresh holds the lease
``feed:<source id>`` (store/leases.py), renewed while a long import runs: the scheduler
of every process sees the same due source, one claims it and the others skip it, and
the winner re-reads the source after claiming, so a source refreshed meanwhile by
another process is not fetched again.  A refresh never loses the last good
data: a failed, truncated, empty or unparsable answer only records the error and backs
off; a body that drops most objects is applied only when a second fetch confirms it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from davproxy.config import FeedsConfig
from davproxy.feeds.fetch import Fetcher, FetchResult
from davproxy.feeds.memo import recorded as memo_fingerprints
from davproxy.feeds.normal import diff, plausible
from davproxy.feeds.split import FeedSplit, SplitMemo, split_feed
from davproxy.feeds.store import FeedSource, FeedStore
from davproxy.store.leases import Leases, exclusive

log = logging.getLogger("davproxy.feeds")

#: Sources whose body davproxy gets from an upstream calendar export, not by a schedule.
UPSTREAM_SOURCE = "upstream:"

Clock = Callable[[], float]
Wanted = Callable[[FeedSource], bool]

#: A refresh's lease lasts twice the fetch timeout, at least this (renewed every third of
#: it while the fetch and import run): a killed holder's source waits no longer than that.
LEASE_SECONDS_MIN = 5.0
#: How long the scheduler leaves a source alone that another process is refreshing.
ELSEWHERE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class RefreshReport:
    source_id: int
    # unchanged | changed | not-modified | suspect | failed; without a fetch: elsewhere
    # (another process holds the source's lease) | skipped (no longer wanted: done meanwhile)
    outcome: str
    added: int = 0
    changed: int = 0
    removed: int = 0
    revision: int = 0
    error: str = ""
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Bounds:
    floor: int
    ceiling: int


def _content_hash(split: FeedSplit) -> str:
    joined = "\n".join(sorted(split.fingerprints().values()))
    return hashlib.sha256(joined.encode()).hexdigest()


def _meta_json(split: FeedSplit) -> str:
    meta = split.meta
    return json.dumps(
        {
            "name": meta.name,
            "description": meta.description,
            "color": meta.color,
            "timezone": meta.timezone,
            "refresh_seconds": meta.refresh_seconds,
            "source": meta.source,
            "header": list(meta.header),
            "properties": list(meta.properties),
        },
        sort_keys=True,
    )


# Sources whose split memo is kept (a few MB for a 10,000-event feed); past that, the
# least recently refreshed source's next refresh reads its whole feed again.
_MEMOS = 64
T = TypeVar("T")


def _remember(memory: dict[int, T], source_id: int, value: T) -> None:
    """Keep ``value`` for the source, forgetting the least recently refreshed past _MEMOS."""
    memory.pop(source_id, None)
    memory[source_id] = value
    while len(memory) > _MEMOS:
        del memory[next(iter(memory))]


class Refresher:
    def __init__(
        self,
        feeds: FeedStore,
        fetcher: Fetcher,
        settings: FeedsConfig,
        clock: Clock = time.time,
        rng: Callable[[], float] = random.random,
        leases: Leases | None = None,
    ) -> None:
        self.feeds = feeds
        self.leases = leases  # None: this process is the only one (unit tests)
        self.fetcher = fetcher
        self.settings = settings
        self.clock = clock
        self.rng = rng
        self.bounds: dict[str, Bounds] = {}  # per source URL, from the operator's feeds
        self._inflight: dict[int, asyncio.Task[RefreshReport]] = {}
        self._elsewhere: dict[int, float] = {}  # source id -> left to another process until
        self._wake = asyncio.Event()
        self.on_report: Callable[[RefreshReport], None] | None = None  # metrics hook
        self.fetches = 0  # origin requests made (for tests and benchmarks)
        # each source's last split memo (the next refresh re-reads only changed objects),
        # and the memo of the split this process last recorded, with the source's
        # revision then (it knows every fingerprint recorded: no copy is kept)
        self._memos: dict[int, SplitMemo] = {}
        self._recorded: dict[int, tuple[int, SplitMemo]] = {}

    # -- scheduling ----------------------------------------------------------------------

    def interval(self, source: FeedSource, hinted: int | None) -> int:
        bounds = self.bounds.get(
            source.url, Bounds(self.settings.refresh_floor, self.settings.refresh_ceiling)
        )
        wanted = hinted if hinted is not None else self.settings.refresh_default
        return max(bounds.floor, min(bounds.ceiling, wanted))

    def _next(self, interval: float) -> float:
        return self.clock() + interval * (1 + self.settings.jitter * self.rng())

    def wake(self) -> None:
        self._wake.set()

    def _still_due(self, source: FeedSource) -> bool:
        return source.next_fetch <= self.clock()

    async def run(self, concurrency: int = 4) -> None:
        """Refresh due sources until cancelled; sleeps until the next one is due.  A
        source another process is refreshing is left alone for a moment (then it is no
        longer due: that process has recorded its next fetch)."""
        while True:
            try:
                now = self.clock()
                self._elsewhere = {k: t for k, t in self._elsewhere.items() if t > now}
                due = [
                    s
                    for s in self.feeds.due_sources(now, UPSTREAM_SOURCE)
                    if s.id not in self._elsewhere
                ][:concurrency]
                if due:
                    reports = await asyncio.gather(
                        *(self.refresh(s.id, self._still_due, wait=False) for s in due)
                    )
                    for report in reports:
                        if report.outcome == "elsewhere":
                            self._elsewhere[report.source_id] = self.clock() + ELSEWHERE_SECONDS
                    continue
                upcoming = self.feeds.next_due(UPSTREAM_SOURCE)
                # a source added by another process (nothing wakes this one for it) is
                # seen within a minute, or within the refresh floor if that is shorter
                cap = min(60.0, float(self.settings.refresh_floor))
                wait = cap if upcoming is None else min(cap, max(0.05, upcoming - now))
                if self._elsewhere:
                    wait = max(wait, min(self._elsewhere.values()) - now)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad source stop every refresh
                log.exception("feed scheduler error")
                wait = 5.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    # -- one refresh ---------------------------------------------------------------------

    async def refresh(
        self, source_id: int, wanted: Wanted | None = None, wait: bool = True
    ) -> RefreshReport:
        """Fetch and apply one source now; concurrent callers share the same refresh.

        ``wanted``: checked on the source as it stands once the lease is held (a source
        another process refreshed meanwhile is not fetched again: "skipped").  ``wait``:
        while another process holds the source, wait for it (then decide), else
        "elsewhere" at once."""
        task = self._inflight.get(source_id)
        if task is None:
            task = asyncio.ensure_future(self._leased(source_id, wanted, wait))
            self._inflight[source_id] = task
            task.add_done_callback(lambda _: self._inflight.pop(source_id, None))
        return await asyncio.shield(task)

    async def _leased(self, source_id: int, wanted: Wanted | None, wait: bool) -> RefreshReport:
        if self.leases is None:
            return await self._refresh(source_id, wanted)
        ran, report = await exclusive(
            self.leases,
            f"feed:{source_id}",
            lambda: self._refresh(source_id, wanted),
            seconds=max(LEASE_SECONDS_MIN, 2 * self.settings.fetch_timeout),
            wait=wait,
        )
        if report is None:
            assert not ran
            current = self.feeds.source(source_id)
            revision = current.revision if current else 0
            return RefreshReport(source_id, "elsewhere", revision=revision)
        return report

    async def _refresh(self, source_id: int, wanted: Wanted | None = None) -> RefreshReport:
        started = time.perf_counter()
        source = self.feeds.source(source_id)
        if source is None:
            return RefreshReport(source_id, "failed", error="source no longer exists")
        if wanted is not None and not wanted(source):
            return RefreshReport(source_id, "skipped", revision=source.revision)
        self.fetches += 1
        result = await self.fetcher.fetch(source.fetch_url, source.etag, source.last_modified)
        report = await self._settle(source, result)
        report = replace(report, seconds=time.perf_counter() - started)
        level = logging.WARNING if report.outcome in ("failed", "suspect") else logging.INFO
        log.log(
            level,
            "feed %s: %s%s (+%d ~%d -%d, revision %d, %.0f ms)",
            source.url,
            report.outcome,
            f": {report.error}" if report.error else "",
            report.added,
            report.changed,
            report.removed,
            report.revision,
            report.seconds * 1000,
        )
        if self.on_report is not None:
            self.on_report(report)
        return report

    async def _settle(self, source: FeedSource, result: FetchResult) -> RefreshReport:
        moved = {"fetch_url": result.moved_to} if result.moved_to else {}
        if result.moved_to:
            log.info("feed %s moved permanently to %s", source.url, result.moved_to)
        if result.outcome == "failed":
            return self.fail(source, result.error, result.retry_after, **moved)
        if result.outcome == "not-modified":
            return self._still_current(source, "not-modified", moved)
        validators = {"etag": result.etag, "last_modified": result.last_modified, **moved}
        return await self.apply(source, result.body, validators=validators)

    def _still_current(
        self, source: FeedSource, outcome: str, extra: Mapping[str, str | None]
    ) -> RefreshReport:
        """The origin confirmed what davproxy holds (a 304, or the same bytes)."""
        now = self.clock()
        with self.feeds.transaction():
            self.feeds.source_update(
                source.id,
                last_attempt=now,
                last_success=now,
                status="ok",
                error="",
                failures=0,
                suspect_hash=None,  # a suspected loss the origin no longer shows is void
                next_fetch=self._next(source.interval or self.interval(source, None)),
                **extra,
            )
        return RefreshReport(source.id, outcome, revision=source.revision)

    def fail(
        self, source: FeedSource, error: str, retry_after: float | None = None, **extra: object
    ) -> RefreshReport:
        """Record a failed refresh and back off; the stored data stays as it was."""
        failures = source.failures + 1
        delay = min(self.settings.refresh_ceiling, self.settings.retry_base * 2 ** (failures - 1))
        if retry_after is not None:
            delay = max(delay, min(retry_after, 7 * 86400))
        with self.feeds.transaction():
            self.feeds.source_update(
                source.id,
                last_attempt=self.clock(),
                status="error",
                error=error,
                failures=failures,
                next_fetch=self.clock() + delay,
                **extra,
            )
        return RefreshReport(source.id, "failed", revision=source.revision, error=error)

    async def apply(
        self,
        source: FeedSource,
        body: bytes,
        confirm_losses: bool = True,
        validators: dict[str, str | None] | None = None,
    ) -> RefreshReport:
        """Turn a fetched body into item changes.  ``confirm_losses``: a body that lost
        most objects waits for a second fetch (off for an upstream's own export, which
        is authoritative)."""
        now = self.clock()
        validators = validators or {}
        body_hash = hashlib.sha256(body).hexdigest()
        if body_hash == source.body_hash and source.status != "new":
            # the very same bytes: nothing to parse (the cheap, common case)
            return self._still_current(source, "unchanged", validators)
        if not body.strip():
            return self.fail(source, "origin sent an empty body")
        # splitting 10,000 events takes a few hundred ms (tens when the memo of the last
        # split knows all but a few): off the event loop
        split = await asyncio.to_thread(split_feed, body, self._memos.get(source.id))
        if split.memo is not None:
            _remember(self._memos, source.id, split.memo)
        if not split.complete:
            return self.fail(source, "not a complete iCalendar document (truncated or garbage)")
        return await self.feeds.in_worker(
            lambda feeds: self._record(
                feeds, source, split, body_hash, len(body), now, confirm_losses, validators
            )
        )

    def _record(
        self,
        feeds: FeedStore,
        source: FeedSource,
        split: FeedSplit,
        body_hash: str,
        size: int,
        now: float,
        confirm_losses: bool,
        validators: Mapping[str, str | None],
    ) -> RefreshReport:
        """Record a parsed body as item changes, in one transaction (a worker thread)."""
        with feeds.transaction():
            fresh = feeds.source(source.id)
            if fresh is None:
                return RefreshReport(source.id, "failed", error="source no longer exists")
            recorded = self._recorded.get(source.id)
            old = None
            if recorded is not None and recorded[0] == fresh.revision:
                old = memo_fingerprints(recorded[1])  # what the store holds still
            if old is None:
                old = feeds.fingerprints(source.id)
            # fingerprinted when compared (a first import compares none: each resource
            # is fingerprinted once, as it is built to be written)
            new = split.fingerprint_map
            changes = diff(old, new)
            interval = self.interval(fresh, split.meta.refresh_seconds)
            suspicious = confirm_losses and not plausible(len(old), len(new))
            content = _content_hash(split) if suspicious else None
            if suspicious and fresh.suspect_hash != content:
                # lost most of its objects: believe it only when the next fetch agrees
                feeds.source_update(
                    source.id,
                    suspect_hash=content,
                    last_attempt=now,
                    error=f"{len(old)} -> {len(new)} objects; waiting for a second fetch",
                    next_fetch=now + min(interval, self.settings.retry_base),
                )
                return RefreshReport(
                    source.id, "suspect", revision=fresh.revision, error="needs confirmation"
                )
            # built one at a time as they are written (a big feed's are not all held)
            resources = (split.resources[uid] for uid in (*changes.added, *changes.changed))
            revision = feeds.record_changes(fresh, resources, changes.removed, now)
            meta = _meta_json(split)
            timezones = json.dumps(dict(split.timezones), sort_keys=True)
            touched = revision != fresh.revision or meta != fresh.meta
            feeds.source_update(
                source.id,
                body_hash=body_hash,
                suspect_hash=None,
                meta=meta,
                timezones=timezones,
                revision=revision,
                status="ok",
                error="",
                failures=0,
                last_attempt=now,
                last_success=now,
                last_change=now if touched or fresh.last_change is None else fresh.last_change,
                next_fetch=self._next(interval),
                interval=interval,
                bytes=size,
                **validators,
            )
            current = feeds.source(source.id)
            assert current is not None
            feeds.prune_tombstones(current, now - self.settings.tombstone_days * 86400)
        if split.memo is not None:  # committed: true from now
            _remember(self._recorded, source.id, (revision, split.memo))
        return RefreshReport(
            source.id,
            "changed" if not changes.empty else "unchanged",
            len(changes.added),
            len(changes.changed),
            len(changes.removed),
            revision,
        )
