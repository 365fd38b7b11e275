"""Refreshing feed sources (davproxy.feeds.refresh) into a real store from a real origin.

Only the clock and the jitter are fake: a ``Clock`` whose time the test sets, and an rng
returning a fixed value.  The origin (``tests.feed_origin``) is real HTTP on loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from davproxy.config import FeedsConfig
from davproxy.feeds.fetch import Fetcher
from davproxy.feeds.normal import href_for
from davproxy.feeds.refresh import UPSTREAM_SOURCE, Bounds, Refresher, RefreshReport
from davproxy.feeds.split import split_feed
from davproxy.feeds.store import FeedSource, FeedStore, item_etag
from davproxy.store import Store
from tests.feed_origin import Origin, calendar, event

SETTINGS = FeedsConfig(allow_networks=("127.0.0.0/8",), fetch_timeout=5.0)
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAY = 86400.0


class Clock:
    """A clock that stands still until the test moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def events(count: int, summary: str = "Event", stamp: str = "20260101T000000Z") -> list[str]:
    days = [f"202601{i % 28 + 1:02d}" for i in range(count)]
    return [
        event(f"e{i}@x", f"{summary} {i}", f"{day}T090000Z", f"{day}T100000Z", stamp=stamp)
        for i, day in enumerate(days)
    ]


def feed(count: int, **options: str) -> bytes:
    return calendar(*events(count, **options)).encode()


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    server = Origin()
    with server.running():
        yield server


@dataclass
class Env:
    origin: Origin
    store: Store
    feeds: FeedStore
    fetcher: Fetcher
    refresher: Refresher
    clock: Clock
    prefix: str
    jitter_draw: float = 0.0

    def path(self, name: str = "feed.ics") -> str:
        return f"/{self.prefix}/{name}"

    def serve(self, body: bytes | str, name: str = "feed.ics", **options: object) -> str:
        self.origin.serve(self.path(name), body, **options)
        return self.origin.url(self.path(name))

    def hits(self, name: str = "feed.ics") -> int:
        return self.origin.hits(self.path(name))

    def add_source(self, body: bytes | str, name: str = "feed.ics", **options: object) -> int:
        return self.feeds.source_ensure(self.serve(body, name, **options)).id

    def source(self, source_id: int) -> FeedSource:
        found = self.feeds.source(source_id)
        assert found is not None
        return found

    async def refresh(self, source_id: int, advance: float = 0.0) -> RefreshReport:
        self.clock.now += advance
        return await self.refresher.refresh(source_id)


@pytest.fixture
async def env(origin: Origin, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    store = Store.open(tmp_path / "s.sqlite3")
    feeds = FeedStore(store)
    fetcher = Fetcher(SETTINGS)
    clock = Clock(T0)
    prefix = re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)
    holder: list[Env] = []
    refresher = Refresher(feeds, fetcher, SETTINGS, clock=clock, rng=lambda: holder[0].jitter_draw)
    holder.append(Env(origin, store, feeds, fetcher, refresher, clock, prefix))
    yield holder[0]
    await fetcher.close()
    store.close()


# --- importing and diffing ----------------------------------------------------------------


async def test_first_refresh_imports_every_object(env: Env) -> None:
    body = feed(3)
    sid = env.add_source(body, etag='"v1"', last_modified="Thu, 01 Jan 2026 00:00:00 GMT")
    report = await env.refresh(sid)
    assert (report.outcome, report.added, report.changed, report.removed) == ("changed", 3, 0, 0)
    assert report.revision == 3
    source = env.source(sid)
    assert source.revision == 3 and source.min_revision == 0
    assert source.status == "ok" and source.error == "" and source.failures == 0
    assert source.etag == '"v1"'
    assert source.last_modified == "Thu, 01 Jan 2026 00:00:00 GMT"
    assert source.body_hash == hashlib.sha256(body).hexdigest()
    assert source.bytes == len(body)
    assert source.last_attempt == source.last_success == source.last_change == T0
    assert source.meta_data["name"] == "Team"
    items = env.feeds.items(sid)
    assert sorted(i.revision for i in items) == [1, 2, 3]
    split = split_feed(body)
    for item in items:
        assert item.text == split.resources[item.uid].text
        assert item.href == href_for(item.uid)
        assert item.etag == item_etag(item.text)
        assert item.kind == "VEVENT" and not item.deleted
    assert env.hits() == 1 and env.refresher.fetches == 1


async def test_identical_bytes_are_unchanged(env: Env) -> None:
    sid = env.add_source(feed(3))
    await env.refresh(sid)
    report = await env.refresh(sid, advance=3600)
    assert report.outcome == "unchanged"
    assert report.revision == 3 and (report.added, report.changed, report.removed) == (0, 0, 0)
    source = env.source(sid)
    assert source.revision == 3
    assert source.last_success == T0 + 3600
    assert source.last_change == T0  # nothing changed since the import
    assert env.feeds.changes(sid, 3) == []
    assert env.hits() == 2


async def test_304_is_not_modified_and_sends_the_stored_validators(env: Env) -> None:
    stamp = "Thu, 01 Jan 2026 00:00:00 GMT"
    sid = env.add_source(feed(2), etag='"abc"', last_modified=stamp)
    await env.refresh(sid)
    report = await env.refresh(sid, advance=3600)
    assert report.outcome == "not-modified"
    assert report.revision == 2
    sent = {k.lower(): v for k, v in env.origin.seen[-1].headers.items()}
    assert sent["if-none-match"] == '"abc"'
    assert sent["if-modified-since"] == stamp
    source = env.source(sid)
    assert source.revision == 2 and source.last_success == T0 + 3600
    assert source.next_fetch == T0 + 3600 + 3600


async def test_dtstamp_only_churn_is_unchanged_and_keeps_stored_bytes(env: Env) -> None:
    sid = env.add_source(feed(3))
    await env.refresh(sid)
    before = {i.uid: (i.etag, i.text, i.revision) for i in env.feeds.items(sid)}
    churned = feed(3, stamp="20260301T120000Z")
    assert churned != feed(3)
    env.serve(churned)
    report = await env.refresh(sid, advance=3600)
    assert report.outcome == "unchanged"
    assert report.revision == 3
    source = env.source(sid)
    assert source.revision == 3
    assert source.body_hash == hashlib.sha256(churned).hexdigest()
    after = {i.uid: (i.etag, i.text, i.revision) for i in env.feeds.items(sid)}
    assert after == before  # same ETags: clients download nothing
    assert env.feeds.changes(sid, 3) == []


async def test_one_changed_event_is_exactly_one_new_revision(env: Env) -> None:
    sid = env.add_source(calendar(*events(3)))
    await env.refresh(sid)
    old = {i.uid: i for i in env.feeds.items(sid)}
    changed = events(3)
    changed[1] = changed[1].replace("SUMMARY:Event 1", "SUMMARY:Moved to Friday")
    env.serve(calendar(*changed))
    report = await env.refresh(sid, advance=3600)
    assert (report.outcome, report.added, report.changed, report.removed) == ("changed", 0, 1, 0)
    assert report.revision == 4 and env.source(sid).revision == 4
    delta = env.feeds.changes(sid, 3)
    assert [(i.uid, i.revision, i.deleted) for i in delta] == [("e1@x", 4, False)]
    assert "SUMMARY:Moved to Friday" in delta[0].text
    assert delta[0].etag != old["e1@x"].etag
    assert delta[0].modified == T0 + 3600
    now = {i.uid: i for i in env.feeds.items(sid)}
    assert now["e0@x"] == old["e0@x"] and now["e2@x"] == old["e2@x"]
    assert env.source(sid).last_change == T0 + 3600


async def test_removed_event_leaves_a_tombstone_in_the_changes(env: Env) -> None:
    sid = env.add_source(calendar(*events(3)))
    await env.refresh(sid)
    env.serve(calendar(*events(3)[:2]))
    report = await env.refresh(sid, advance=3600)
    assert (report.outcome, report.removed, report.revision) == ("changed", 1, 4)
    delta = env.feeds.changes(sid, 3)
    assert len(delta) == 1
    tomb = delta[0]
    assert (tomb.uid, tomb.href, tomb.deleted, tomb.revision) == (
        "e2@x",
        href_for("e2@x"),
        True,
        4,
    )
    assert tomb.text == ""
    assert env.feeds.changes(sid, 3, live_only=True) == []
    assert sorted(i.uid for i in env.feeds.items(sid)) == ["e0@x", "e1@x"]
    assert env.feeds.count(sid) == 2
    assert env.feeds.item(sid, href_for("e2@x")) is None
    # it comes back: live again, one more revision
    env.serve(calendar(*events(3)))
    back = await env.refresh(sid, advance=3600)
    assert (back.outcome, back.added, back.revision) == ("changed", 1, 5)
    revived = env.feeds.item(sid, href_for("e2@x"))
    assert revived is not None and revived.revision == 5 and not revived.deleted


# --- scheduling ---------------------------------------------------------------------------

INTERVAL_CASES = [
    ("REFRESH-INTERVAL;VALUE=DURATION:PT2H", 0.0, 7200),
    ("REFRESH-INTERVAL;VALUE=DURATION:PT1M", 0.0, 900),  # floor
    ("REFRESH-INTERVAL;VALUE=DURATION:P7D", 0.0, 86400),  # ceiling
    ("", 0.0, 3600),  # refresh_default
    ("X-PUBLISHED-TTL:PT3H", 0.0, 10800),
    ("REFRESH-INTERVAL;VALUE=DURATION:PT2H\nX-PUBLISHED-TTL:PT3H", 0.0, 7200),
    ("X-PUBLISHED-TTL:PT5M", 0.0, 900),
    ("REFRESH-INTERVAL;VALUE=DURATION:PT2H", 1.0, 7200),
    ("", 1.0, 3600),
]


@pytest.mark.parametrize(("extra", "draw", "interval"), INTERVAL_CASES)
async def test_next_fetch_is_the_clamped_interval_plus_jitter(
    env: Env, extra: str, draw: float, interval: int
) -> None:
    env.jitter_draw = draw
    sid = env.add_source(calendar(*events(2), extra=extra))
    await env.refresh(sid)
    source = env.source(sid)
    assert source.interval == interval
    assert source.next_fetch == pytest.approx(T0 + interval * (1 + SETTINGS.jitter * draw))
    # an unchanged refresh later schedules from its own time with the stored interval
    await env.refresh(sid, advance=interval)
    later = env.source(sid)
    assert later.next_fetch == pytest.approx(
        T0 + interval + interval * (1 + SETTINGS.jitter * draw)
    )


async def test_per_source_bounds_override_the_global_ones(env: Env) -> None:
    fast = env.serve(calendar(*events(1), extra="REFRESH-INTERVAL;VALUE=DURATION:PT1M"), "fast.ics")
    slow = env.serve(calendar(*events(1), extra="REFRESH-INTERVAL;VALUE=DURATION:P1D"), "slow.ics")
    env.refresher.bounds[fast] = Bounds(60, 600)
    env.refresher.bounds[slow] = Bounds(60, 600)
    for url, expected in ((fast, 60), (slow, 600)):
        sid = env.feeds.source_ensure(url).id
        await env.refresh(sid)
        assert env.source(sid).interval == expected
        assert env.source(sid).next_fetch == T0 + expected


# --- failures -----------------------------------------------------------------------------


async def test_failures_back_off_exponentially_and_keep_the_data(env: Env) -> None:
    sid = env.add_source(feed(3))
    await env.refresh(sid)
    kept = env.feeds.items(sid)
    env.serve(b"broken", status=500)
    for n in (1, 2, 3, 4):
        report = await env.refresh(sid, advance=1000)
        assert report.outcome == "failed"
        assert report.error == "origin answered 500 Internal Server Error"
        assert report.revision == 3
        source = env.source(sid)
        assert source.failures == n
        assert source.status == "error" and source.error == report.error
        assert source.next_fetch == env.clock.now + SETTINGS.retry_base * 2 ** (n - 1)
        assert source.last_attempt == env.clock.now
        assert source.last_success == T0
        assert source.revision == 3
    assert env.feeds.items(sid) == kept
    env.serve(feed(3))
    healed = await env.refresh(sid, advance=1000)
    assert healed.outcome == "unchanged"
    source = env.source(sid)
    assert (source.status, source.error, source.failures) == ("ok", "", 0)
    assert source.next_fetch == env.clock.now + 3600


async def test_back_off_never_exceeds_the_ceiling(env: Env) -> None:
    sid = env.add_source(b"", status=500)
    env.feeds.source_update(sid, failures=30)
    await env.refresh(sid)
    assert env.source(sid).failures == 31
    assert env.source(sid).next_fetch == T0 + SETTINGS.refresh_ceiling


@pytest.mark.parametrize(
    ("status", "retry_after", "delay"),
    [
        (503, "3600", 3600),  # longer than the back-off: honoured
        (429, "7200", 7200),
        (503, "10", 60),  # shorter than the back-off: the back-off wins
        (429, str(30 * 86400), 7 * 86400),  # absurd: capped at a week
    ],
)
async def test_retry_after_is_honoured(env: Env, status: int, retry_after: str, delay: int) -> None:
    sid = env.add_source(feed(2))
    await env.refresh(sid)
    env.serve(b"busy", status=status, headers={"Retry-After": retry_after})
    report = await env.refresh(sid, advance=100)
    assert report.outcome == "failed"
    source = env.source(sid)
    assert source.failures == 1
    assert source.next_fetch == T0 + 100 + delay
    assert env.feeds.count(sid) == 2 and source.revision == 2


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "origin sent an empty body"),
        (b" \r\n\r\n ", "origin sent an empty body"),
        (b"<html><body>Service unavailable</body></html>", "not a complete iCalendar"),
        (feed(3)[: len(feed(3)) // 2], "not a complete iCalendar"),  # truncated download
    ],
)
async def test_empty_garbage_or_truncated_200_keeps_the_data(
    env: Env, body: bytes, error: str
) -> None:
    sid = env.add_source(feed(3))
    await env.refresh(sid)
    kept = env.feeds.items(sid)
    env.serve(body)
    report = await env.refresh(sid, advance=3600)
    assert report.outcome == "failed"
    assert report.error.startswith(error)
    source = env.source(sid)
    assert source.revision == 3 and source.failures == 1 and source.status == "error"
    assert source.next_fetch == T0 + 3600 + SETTINGS.retry_base
    assert env.feeds.items(sid) == kept
    assert env.feeds.changes(sid, 3) == []


async def test_first_fetch_of_garbage_stores_nothing(env: Env) -> None:
    sid = env.add_source(b"<html>nope</html>")
    report = await env.refresh(sid)
    assert report.outcome == "failed"
    assert env.feeds.count(sid) == 0 and env.source(sid).revision == 0
    assert env.source(sid).body_hash is None


async def test_refreshing_a_deleted_source_fails_cleanly(env: Env) -> None:
    report = await env.refresher.refresh(4242)
    assert report.outcome == "failed" and report.error == "source no longer exists"
    assert env.refresher.fetches == 0


# --- losses need confirmation ---------------------------------------------------------------


async def test_losing_most_objects_is_suspect_until_confirmed(env: Env) -> None:
    sid = env.add_source(feed(12))
    await env.refresh(sid)
    shrunk = calendar(*events(12)[:4]).encode()
    env.serve(shrunk)
    first = await env.refresh(sid, advance=3600)
    assert first.outcome == "suspect"
    assert first.revision == 12
    source = env.source(sid)
    assert source.revision == 12 and env.feeds.count(sid) == 12
    assert source.error == "12 -> 4 objects; waiting for a second fetch"
    assert source.suspect_hash is not None
    assert source.next_fetch == T0 + 3600 + SETTINGS.retry_base  # re-checked soon
    assert env.feeds.changes(sid, 12) == []
    second = await env.refresh(sid, advance=60)
    assert (second.outcome, second.removed, second.revision) == ("changed", 8, 20)
    assert env.feeds.count(sid) == 4
    assert env.source(sid).suspect_hash is None
    assert len(env.feeds.changes(sid, 12)) == 8


async def test_a_different_loss_needs_its_own_confirmation(env: Env) -> None:
    sid = env.add_source(feed(12))
    await env.refresh(sid)
    env.serve(calendar(*events(12)[:4]))
    assert (await env.refresh(sid, advance=60)).outcome == "suspect"
    env.serve(calendar(*events(12)[4:7]))  # another, different partial answer
    assert (await env.refresh(sid, advance=60)).outcome == "suspect"
    assert env.feeds.count(sid) == 12
    confirmed = await env.refresh(sid, advance=60)
    assert confirmed.outcome == "changed"
    assert sorted(i.uid for i in env.feeds.items(sid)) == ["e4@x", "e5@x", "e6@x"]


async def test_losing_half_is_applied_at_once(env: Env) -> None:
    sid = env.add_source(feed(12))
    await env.refresh(sid)
    env.serve(calendar(*events(12)[:6]))
    report = await env.refresh(sid, advance=60)
    assert (report.outcome, report.removed) == ("changed", 6)
    assert env.feeds.count(sid) == 6


async def test_feed_turning_empty_needs_confirmation(env: Env) -> None:
    sid = env.add_source(feed(3))
    await env.refresh(sid)
    env.serve(calendar())
    assert (await env.refresh(sid, advance=60)).outcome == "suspect"
    assert env.feeds.count(sid) == 3
    report = await env.refresh(sid, advance=60)
    assert (report.outcome, report.removed) == ("changed", 3)
    assert env.feeds.count(sid) == 0


async def test_a_recovered_origin_forgets_the_suspected_loss(env: Env) -> None:
    full = feed(12)
    sid = env.add_source(full)
    await env.refresh(sid)
    env.serve(calendar(*events(12)[:4]))
    assert (await env.refresh(sid, advance=60)).outcome == "suspect"
    env.serve(full)  # the origin recovered: the very same bytes as before
    assert (await env.refresh(sid, advance=60)).outcome == "unchanged"
    env.serve(calendar(*events(12)[:4]))  # a day later it glitches the same way again
    again = await env.refresh(sid, advance=DAY)
    assert again.outcome == "suspect"
    assert env.feeds.count(sid) == 12


async def test_authoritative_apply_skips_the_confirmation(env: Env) -> None:
    sid = env.add_source(feed(12))
    await env.refresh(sid)
    report = await env.refresher.apply(
        env.source(sid), calendar(*events(12)[:2]).encode(), confirm_losses=False
    )
    assert (report.outcome, report.removed) == ("changed", 10)
    assert env.feeds.count(sid) == 2


# --- redirects ------------------------------------------------------------------------------


async def test_permanent_redirect_moves_fetch_url_but_not_url(env: Env) -> None:
    new = env.serve(feed(2), "new.ics")
    old = env.serve(b"", "old.ics", status=301, headers={"Location": new})
    sid = env.feeds.source_ensure(old).id
    report = await env.refresh(sid)
    assert report.outcome == "changed" and report.added == 2
    source = env.source(sid)
    assert source.url == old
    assert source.fetch_url == new
    assert env.feeds.source_by_url(old) == source
    await env.refresh(sid, advance=3600)
    assert env.hits("old.ics") == 1  # the second fetch went straight to the new place
    assert env.hits("new.ics") == 2


async def test_temporary_redirect_keeps_fetch_url(env: Env) -> None:
    target = env.serve(feed(2), "target.ics")
    old = env.serve(b"", "temp.ics", status=302, headers={"Location": target})
    sid = env.feeds.source_ensure(old).id
    assert (await env.refresh(sid)).outcome == "changed"
    assert env.source(sid).fetch_url == old
    await env.refresh(sid, advance=3600)
    assert env.hits("temp.ics") == 2


# --- single flight --------------------------------------------------------------------------


async def test_concurrent_refreshes_share_one_origin_request(env: Env) -> None:
    # a slow answer so that every caller arrives while the fetch is running
    sid = env.add_source(feed(40), drip_seconds=0.005)
    reports = await asyncio.gather(*(env.refresher.refresh(sid) for _ in range(100)))
    assert env.hits() == 1
    assert env.refresher.fetches == 1
    assert {r.outcome for r in reports} == {"changed"}
    assert {r.revision for r in reports} == {40}
    assert env.feeds.count(sid) == 40 and env.source(sid).revision == 40
    # once it is over, the next refresh fetches again
    again = await env.refresher.refresh(sid)
    assert again.outcome == "unchanged"
    assert env.hits() == 2


async def test_on_report_hook_sees_every_refresh(env: Env) -> None:
    seen: list[RefreshReport] = []
    env.refresher.on_report = seen.append
    sid = env.add_source(feed(2))
    await env.refresh(sid)
    await env.refresh(sid, advance=60)
    assert [r.outcome for r in seen] == ["changed", "unchanged"]
    assert all(r.source_id == sid and r.seconds >= 0 for r in seen)


# --- store housekeeping ----------------------------------------------------------------------


async def test_prune_tombstones_raises_min_revision(env: Env) -> None:
    sid = env.add_source(calendar(*events(3)))
    await env.refresh(sid)
    env.serve(calendar(*events(3)[:2]))
    await env.refresh(sid, advance=60)  # tombstone for e2 at revision 4, modified T0 + 60
    source = env.source(sid)
    assert env.feeds.prune_tombstones(source, T0 + 60) == 0  # not older than the cut-off
    assert env.source(sid).min_revision == 0
    assert env.feeds.prune_tombstones(source, T0 + 61) == 1
    pruned = env.source(sid)
    assert pruned.min_revision == 4
    assert pruned.revision == 4
    assert [i.uid for i in env.feeds.changes(sid, 0)] == ["e0@x", "e1@x"]
    assert env.feeds.count(sid) == 2
    assert env.feeds.prune_tombstones(pruned, T0 + DAY) == 0


async def test_refresh_prunes_tombstones_older_than_tombstone_days(env: Env) -> None:
    sid = env.add_source(calendar(*events(3)))
    await env.refresh(sid)
    env.serve(calendar(*events(3)[:2]))
    await env.refresh(sid)  # tombstone at revision 4, modified T0
    env.serve(calendar(*events(3)[:2], name="Renamed"))
    await env.refresh(sid, advance=SETTINGS.tombstone_days * DAY - 1)
    assert env.source(sid).min_revision == 0  # still young enough
    assert any(i.deleted for i in env.feeds.changes(sid, 0))
    env.serve(calendar(*events(3)[:2], name="Renamed again"))
    await env.refresh(sid, advance=2)
    assert env.source(sid).min_revision == 4
    assert not any(i.deleted for i in env.feeds.changes(sid, 0))


async def test_drop_unused_sources(env: Env) -> None:
    used = env.add_source(feed(2), "used.ics")
    unused = env.add_source(feed(3), "unused.ics")
    await env.refresh(used)
    await env.refresh(unused)
    upstream = env.feeds.source_ensure(UPSTREAM_SOURCE + "up/alice/cal/").id
    env.feeds.subscription_put("up", "alice", "subs/team/", "team", used)
    assert env.feeds.drop_unused_sources() == 1
    assert env.feeds.source(unused) is None
    assert env.feeds.count(unused) == 0
    assert env.feeds.changes(unused, 0) == []
    assert env.feeds.source(used) is not None and env.feeds.count(used) == 2
    assert env.feeds.source(upstream) is not None
    assert env.feeds.drop_unused_sources() == 0
    assert env.feeds.subscription_delete("up", "subs/team/")
    assert env.feeds.drop_unused_sources() == 1
    assert [s.id for s in env.feeds.sources()] == [upstream]


async def test_scheduler_refreshes_due_sources_only(env: Env) -> None:
    due = env.add_source(feed(1), "due.ics")
    later = env.add_source(feed(1), "later.ics")
    env.feeds.source_update(later, next_fetch=T0 + DAY)
    upstream = env.feeds.source_ensure(UPSTREAM_SOURCE + "up/x/").id
    runner = asyncio.ensure_future(env.refresher.run())
    try:
        for _ in range(200):
            if env.source(due).status == "ok":
                break
            await asyncio.sleep(0.02)
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
    assert env.source(due).status == "ok" and env.hits("due.ics") == 1
    assert env.source(later).status == "new" and env.hits("later.ics") == 0
    assert env.source(upstream).status == "new"
    assert env.refresher.fetches == 1
