"""Real clients sync subscriptions through davproxy, then sync again after the origin changed.

The python ``caldav`` library (sync-collection with tokens, calendar-query time ranges,
the calendar home listing) and ``vdirsyncer`` (a read-only CalDAV storage mirrored into a
folder of .ics files) each read an operator feed and a subscription alice created herself.
As in test_feeds.py, a scripted origin serves the .ics feeds and refreshes are forced with
``davproxy admin refresh``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import caldav
import icalendar
import pytest

from davproxy.ops.embedded import start_radicale
from tests.feed_origin import FeedSite, Origin, calendar, event
from tests.helpers import USERS, basic, fetch, raw_session, start_proxy, write_htpasswd

FEEDS = "/.davproxy/feeds/"
UTC = dt.UTC
GETETAG = "{DAV:}getetag"

FEED_TABLES = """
[[feeds]]
name = "lib"
url = "{origin}/lib.ics"
users = ["alice"]

[[feeds]]
name = "sync-stock"
url = "{origin}/sync-operator-stock.ics"
users = ["alice"]

[[feeds]]
name = "sync-depth0"
url = "{origin}/sync-operator-depth0.ics"
users = ["alice"]

[[feeds]]
name = "weekly"
url = "{origin}/weekly.ics"
users = ["alice"]

[[feeds]]
name = "vdir"
url = "{origin}/vdir.ics"
users = ["alice"]
display_name = "Team (vdirsyncer)"
"""

# The three events every feed starts with, and what the origin serves after the change:
# beta moves, gamma is gone, delta is new (alpha only gets a new DTSTAMP: no change).
BEFORE = calendar(
    event("alpha@x", "Alpha"),
    event("beta@x", "Beta"),
    event("gamma@x", "Gamma", start="20260107T090000Z", end="20260107T100000Z"),
)
AFTER = calendar(
    event("alpha@x", "Alpha", stamp="20270101T000000Z"),
    event("beta@x", "Beta moved", start="20260106T090000Z", end="20260106T100000Z"),
    event("delta@x", "Delta", start="20260108T090000Z", end="20260108T100000Z"),
)


class DepthZeroSyncClient(caldav.DAVClient):
    """The caldav library sending sync-collection with Depth: 0 (RFC 6578 §3.2) instead of
    its Depth: 1: shows everything else in davproxy's sync answers suits the library."""

    def report(self, url: str, query: object = "", depth: int | None = 0) -> object:
        body = query if isinstance(query, bytes) else str(query).encode()
        if b"sync-collection" in body:
            depth = 0
        return super().report(url, query, depth)  # type: ignore[arg-type]


class Setup(FeedSite):
    def refresh(self, *names: str) -> str:
        done = self.admin("refresh", *names)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    def client(self, url: str, depth_zero_sync: bool = False) -> caldav.DAVClient:
        kind = DepthZeroSyncClient if depth_zero_sync else caldav.DAVClient
        return kind(url=url, username="alice", password=USERS["alice"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("feed-clients")
    origin = Origin()
    for path in ("/lib.ics", "/vdir.ics", "/own.ics", "/school.ics"):
        origin.serve(path, BEFORE, etag='"v1"')
    for where in ("operator", "own"):
        for kind in ("stock", "depth0"):
            origin.serve(f"/sync-{where}-{kind}.ics", BEFORE, etag='"v1"')
    origin.serve(
        "/weekly.ics",
        calendar(
            event("weekly@x", "Weekly", extra="RRULE:FREQ=WEEKLY;COUNT=52"), event("once@x", "Once")
        ),
    )
    with origin.running(), start_radicale(folder / "radicale", auth="x-remote-user") as radicale:
        options = {
            "upstream_url": radicale.url,
            "kind": "radicale",
            "mode": "proxy-auth",
            "htpasswd": write_htpasswd(folder / "users.htpasswd"),
            "mapping_extra": FEED_TABLES.format(origin=origin.base),
            "server_extra": '[feeds]\nallow_networks = ["127.0.0.0/8"]\n',
        }
        with start_proxy(folder / "davproxy", **options) as proxy:
            setup = Setup(origin, proxy, folder / "davproxy" / "davproxy.toml")
            setup.refresh()
            with setup.client(setup.url("/")) as client:
                client.principal()  # Radicale creates alice's calendar home on first use
            yield setup


def summaries(objects: object) -> dict[str, str]:
    """UID -> SUMMARY of loaded caldav objects."""
    found = {}
    for obj in objects:  # type: ignore[attr-defined]
        component = obj.icalendar_component
        found[str(component["UID"])] = str(component["SUMMARY"])
    return found


# -- a subscription alice creates herself (extended MKCOL, raw HTTP) ---------------------------

MKCOL = """<?xml version="1.0" encoding="utf-8"?>
<D:mkcol xmlns:D="DAV:" xmlns:CS="http://calendarserver.org/ns/"><D:set><D:prop>
<D:resourcetype><D:collection/><CS:subscribed/></D:resourcetype>
<D:displayname>{name}</D:displayname>
<CS:source><D:href>{source}</D:href></CS:source>
</D:prop></D:set></D:mkcol>"""


def subscribe(setup: Setup, name: str, origin_path: str, display: str) -> str:
    """alice subscribes /alice/<name>/ to the origin's ``origin_path``; its URL."""
    url = setup.url(f"/alice/{name}/")

    async def send() -> int:
        async with raw_session() as s:
            answer = await fetch(
                s, "MKCOL", url, {**basic("alice"), "Content-Type": "application/xml"},
                MKCOL.format(name=display, source=setup.origin.url(origin_path)),
            )  # fmt: skip
        return answer.status

    assert asyncio.run(send()) == 201
    return url


def listed(principal: caldav.Principal) -> dict[str, caldav.Calendar]:
    """alice's calendars as caldav finds them in her calendar home, by URL path."""
    return {c.url.path: c for c in principal.calendars()}


# -- the python caldav library ---------------------------------------------------------------


def test_caldav_reads_operator_feed(setup: Setup) -> None:
    url = setup.url(FEEDS + "lib/")
    with setup.client(url) as client:
        feed = client.calendar(url=url)
        assert feed.get_display_name() == "Team"
        assert feed.get_supported_components() == ["VEVENT"]
        events = feed.events()
        assert summaries(events) == {"alpha@x": "Alpha", "beta@x": "Beta", "gamma@x": "Gamma"}
        assert all(e.url.path.startswith(FEEDS + "lib/") for e in events)
        # every member can be fetched on its own, and matches the listing
        for listed_event in events:
            alone = feed.event_by_url(listed_event.url)
            alone.load()
            assert alone.icalendar_component["UID"] == listed_event.icalendar_component["UID"]
        # writes through the library are refused: a read-only subscription
        with pytest.raises(caldav.lib.error.DAVError):
            feed.save_event(calendar(event("new@x", "New")))
        assert len(feed.events()) == 3


def check_sync_round(
    setup: Setup, calendar_: caldav.Calendar, origin_path: str, refresh: str
) -> None:
    """First sync, origin change, refresh, then a delta sync from the old token: exactly
    beta (changed), gamma (removed) and delta (added), both through
    ``objects_by_sync_token(sync_token=...)`` and ``SynchronizableCalendarObjectCollection.sync``."""
    first = calendar_.objects_by_sync_token(load_objects=True, disable_fallback=True)
    token = first.sync_token
    assert token and not str(token).startswith("fake-")  # a real RFC 6578 token
    assert summaries(first) == {"alpha@x": "Alpha", "beta@x": "Beta", "gamma@x": "Gamma"}
    url_of = {str(o.icalendar_component["UID"]): o.url.canonical() for o in first}
    etag_of = {str(o.icalendar_component["UID"]): o.props[GETETAG] for o in first}
    unchanged = calendar_.objects_by_sync_token(sync_token=token, disable_fallback=True)
    assert list(unchanged) == [] and unchanged.sync_token == token

    setup.origin.serve(origin_path, AFTER, etag='"v2"')
    assert "changed" in setup.refresh(refresh)

    delta = calendar_.objects_by_sync_token(
        sync_token=token, load_objects=True, disable_fallback=True
    )
    assert delta.sync_token != token
    reported = {o.url.canonical() for o in delta}
    assert url_of["alpha@x"] not in reported  # a DTSTAMP-only change is no change
    assert url_of["beta@x"] in reported and url_of["gamma@x"] in reported
    assert len(reported) == 3
    assert delta.deleted_urls == {url_of["gamma@x"]}
    live = [o for o in delta if o.url.canonical() not in delta.deleted_urls]
    assert summaries(live) == {"beta@x": "Beta moved", "delta@x": "Delta"}
    changed = next(o for o in live if o.url.canonical() == url_of["beta@x"])
    assert changed.props[GETETAG] != etag_of["beta@x"]

    # the same delta through the collection the first sync returned, then nothing more
    updated, deleted = first.sync()
    assert summaries(updated) == {"beta@x": "Beta moved", "delta@x": "Delta"}
    assert [o.url.canonical() for o in deleted] == [url_of["gamma@x"]]
    assert first.sync_token == delta.sync_token
    assert summaries(first) == {"alpha@x": "Alpha", "beta@x": "Beta moved", "delta@x": "Delta"}
    assert first.sync() == ([], [])


# "stock": the caldav library as shipped, which sends sync-collection with Depth: 1
# (Radicale and Xandikos accept it, so davproxy does too); "depth0": RFC 6578's Depth: 0.
SYNC_CASES = [
    pytest.param("operator", "stock"),
    pytest.param("operator", "depth0"),
    pytest.param("own", "stock"),
    pytest.param("own", "depth0"),
]


@pytest.mark.parametrize(("where", "kind"), SYNC_CASES)
def test_caldav_syncs_by_token_after_origin_change(setup: Setup, where: str, kind: str) -> None:
    """An operator feed opened by URL, or alice's own subscription found in her home."""
    origin_path = f"/sync-{where}-{kind}.ics"
    with setup.client(setup.url("/"), depth_zero_sync=kind == "depth0") as client:
        if where == "operator":
            found = client.calendar(url=setup.url(f"{FEEDS}sync-{kind}/"))
            refresh = f"sync-{kind}"
        else:
            subscribe(setup, f"sync-{kind}", origin_path, f"Sync {kind}")
            found = listed(client.principal())[f"/alice/sync-{kind}/"]
            refresh = setup.origin.url(origin_path)
        check_sync_round(setup, found, origin_path, refresh)
        # and a GET of a member gives what the sync said
        beta = [e for e in found.events() if "Beta" in str(e.icalendar_component["SUMMARY"])]
        assert len(beta) == 1
        again = found.event_by_url(beta[0].url)
        again.load()
        assert "DTSTART:20260106T090000Z" in again.data


def test_caldav_time_range_search_expands_recurrence(setup: Setup) -> None:
    url = setup.url(FEEDS + "weekly/")

    def day(year: int, month: int, day_: int) -> dict[str, dt.datetime]:
        start = dt.datetime(year, month, day_, tzinfo=UTC)
        return {"start": start, "end": start + dt.timedelta(days=1)}

    with setup.client(url) as client:
        feed = client.calendar(url=url)

        # post_filter=False: what the calendar-query REPORT returned, as the server answered
        def server(when: dict[str, dt.datetime]) -> dict[str, str]:
            return summaries(feed.search(event=True, post_filter=False, **when))

        # 2026-06-01 is the 22nd Monday of the weekly series (COUNT=52), "Once" was in January
        assert server(day(2026, 6, 1)) == {"weekly@x": "Weekly"}
        assert server(day(2026, 1, 5)) == {"weekly@x": "Weekly", "once@x": "Once"}
        assert server(day(2027, 3, 1)) == {}  # a Monday after the 52nd occurrence
        # the library's own filtering agrees; a Tuesday between two occurrences is empty
        assert summaries(feed.search(event=True, **day(2026, 6, 1))) == {"weekly@x": "Weekly"}
        assert feed.search(event=True, **day(2026, 6, 2)) == []
        # expanded: one occurrence, on that Monday, without the rule
        expanded = feed.search(event=True, expand=True, **day(2026, 6, 1))
        assert len(expanded) == 1
        occurrence = expanded[0].icalendar_component
        assert occurrence["DTSTART"].dt == dt.datetime(2026, 6, 1, 9, tzinfo=UTC)
        assert "RRULE" not in occurrence


def test_caldav_lists_own_subscription_in_home(setup: Setup) -> None:
    with setup.client(setup.url("/")) as client:
        principal = client.principal()
        assert "/alice/holidays/" not in listed(principal)
        subscribe(setup, "holidays", "/own.ics", "Holidays")
        found = listed(principal).get("/alice/holidays/")
        assert found is not None, list(listed(principal))
        assert found.get_display_name() == "Holidays"
        assert summaries(found.events()) == {
            "alpha@x": "Alpha", "beta@x": "Beta", "gamma@x": "Gamma",
        }  # fmt: skip
        # read-only for alice too: the library cannot add to it
        with pytest.raises(caldav.lib.error.DAVError):
            found.save_event(calendar(event("new@x", "New")))
        # unsubscribing through the library removes it from her home
        found.delete()
        assert "/alice/holidays/" not in listed(principal)


# -- vdirsyncer ----------------------------------------------------------------------------------


def vdirsyncer() -> str:
    exe = shutil.which("vdirsyncer", path=str(Path(sys.executable).parent)) or shutil.which(
        "vdirsyncer"
    )
    if exe is None:
        pytest.skip("vdirsyncer is not installed (pip install vdirsyncer==0.21.0)")
    return exe


VDIR_CONFIG = """
[general]
status_path = "{folder}/status/"

[pair feed]
a = "feed_remote"
b = "feed_local"
collections = {collections}
conflict_resolution = "a wins"
partial_sync = "ignore"

[storage feed_remote]
type = "caldav"
url = "{url}"
username = "alice"
password = "{password}"
read_only = true

[storage feed_local]
type = "filesystem"
path = "{folder}/local/"
fileext = ".ics"
"""


class Vdir:
    def __init__(self, folder: Path, url: str, collections: str) -> None:
        self.exe = vdirsyncer()
        self.folder = folder
        self.local = folder / "local"
        self.local.mkdir(parents=True)
        self.config = folder / "vdirsyncer.conf"
        self.config.write_text(
            VDIR_CONFIG.format(
                folder=folder, url=url, password=USERS["alice"], collections=collections
            )
        )

    def run(self, *verb: str) -> str:
        done = subprocess.run(
            [self.exe, "-c", str(self.config), *verb],
            input="y\n" * 10,
            capture_output=True,
            text=True,
            timeout=60,
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(self.folder),
                "LANG": "C.UTF-8",
                "LC_ALL": "C.UTF-8",
            },
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        assert "error" not in output.lower(), output
        return output

    def files(self, collection: str = "") -> dict[str, tuple[Path, str]]:
        """UID -> (file, SUMMARY) of the .ics files vdirsyncer wrote."""
        found = {}
        for path in sorted((self.local / collection).glob("*.ics")):
            parsed = icalendar.Calendar.from_ical(path.read_bytes())
            events = list(parsed.walk("VEVENT"))
            assert len(events) == 1, path
            found[str(events[0]["UID"])] = (path, str(events[0]["SUMMARY"]))
        return found


def check_vdirsyncer_round(setup: Setup, vdir: Vdir, feed: str, refresh: str, sub: str) -> str:
    """discover, sync, origin change, sync, quiet sync; what discover printed."""
    discovered = vdir.run("discover")
    vdir.run("sync")
    first = vdir.files(sub)
    assert {uid: summary for uid, (_, summary) in first.items()} == {
        "alpha@x": "Alpha", "beta@x": "Beta", "gamma@x": "Gamma",
    }  # fmt: skip
    alpha_bytes = first["alpha@x"][0].read_bytes()

    setup.origin.serve(feed, AFTER, etag='"v2"')
    assert "changed" in setup.refresh(refresh)
    output = vdir.run("sync")
    # only what changed is fetched again: alpha's new DTSTAMP alone kept its ETag
    assert "Copying (updating) item beta@x" in output
    assert "Copying (uploading) item delta@x" in output
    assert "Deleting item gamma@x" in output
    assert "alpha@x" not in output
    second = vdir.files(sub)
    assert {uid: summary for uid, (_, summary) in second.items()} == {
        "alpha@x": "Alpha", "beta@x": "Beta moved", "delta@x": "Delta",
    }  # fmt: skip
    assert not first["gamma@x"][0].exists()  # the removed event's file is gone
    assert second["beta@x"][0] == first["beta@x"][0]  # changed in place
    assert "DTSTART:20260106T090000Z" in second["beta@x"][0].read_text()
    assert second["alpha@x"][0].read_bytes() == alpha_bytes  # untouched
    assert len(list((vdir.local / sub).glob("*.ics"))) == 3

    # a sync with nothing new changes nothing
    assert "@x" not in vdir.run("sync")
    assert vdir.files(sub) == second
    return discovered


def test_vdirsyncer_mirrors_operator_feed(setup: Setup, tmp_path: Path) -> None:
    vdir = Vdir(tmp_path, setup.url(FEEDS + "vdir/"), "null")
    discovered = check_vdirsyncer_round(setup, vdir, "/vdir.ics", "vdir", "")
    assert '"vdir" ("Team (vdirsyncer)")' in discovered  # the operator's display name


def test_vdirsyncer_discovers_own_subscription(setup: Setup, tmp_path: Path) -> None:
    """vdirsyncer finds alice's calendars itself (current-user-principal, calendar home,
    Depth 1 listing): her own subscription is among them and syncs like the feed."""
    subscribe(setup, "school", "/school.ics", "School")
    vdir = Vdir(tmp_path, setup.url("/"), '["from a"]')
    discovered = check_vdirsyncer_round(
        setup, vdir, "/school.ics", setup.origin.url("/school.ics"), "school"
    )
    assert '"school" ("School")' in discovered
    with setup.client(setup.url("/")) as client:
        home = {path.strip("/").rsplit("/", 1)[-1] for path in listed(client.principal())}
    assert "school" in home
    assert {p.name for p in vdir.local.iterdir()} == home  # every calendar in her home


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
