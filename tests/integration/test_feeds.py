"""Subscriptions end to end: a real origin, Radicale, davproxy, and a real HTTP client.

Refreshes are forced with ``davproxy admin refresh`` (the same code the scheduler runs),
so no test waits for a clock.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

from davproxy.ops.embedded import start_radicale
from tests.feed_origin import FeedSite, Origin, calendar, event
from tests.helpers import basic, fetch, raw_session, start_proxy, write_htpasswd

NS = {"D": "DAV:", "C": "urn:ietf:params:xml:ns:caldav", "CS": "http://calendarserver.org/ns/"}
FEEDS = "/.davproxy/feeds/"
PROPS = """<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav"
 xmlns:CS="http://calendarserver.org/ns/"><D:prop><D:resourcetype/><D:displayname/>
 <D:current-user-privilege-set/><D:sync-token/><CS:getctag/><D:supported-report-set/>
 <C:supported-calendar-component-set/><D:getetag/></D:prop></D:propfind>"""


def sync_body(token: str = "", limit: int | None = None, data: bool = False) -> str:
    limit_xml = f"<D:limit><D:nresults>{limit}</D:nresults></D:limit>" if limit else ""
    extra = "<C:calendar-data/>" if data else ""
    return (
        '<?xml version="1.0"?><D:sync-collection xmlns:D="DAV:" '
        'xmlns:C="urn:ietf:params:xml:ns:caldav">'
        f"<D:sync-token>{token}</D:sync-token><D:sync-level>1</D:sync-level>{limit_xml}"
        f"<D:prop><D:getetag/>{extra}</D:prop></D:sync-collection>"
    )


Setup = FeedSite


FEED_TABLES = """
[[feeds]]
name = "team"
url = "{origin}/team.ics"
users = ["alice", "bob"]

[[feeds]]
name = "public"
url = "webcal://127.0.0.1:{port}/public.ics"
public = true
display_name = "Public holidays"

[[feeds]]
name = "private"
url = "{origin}/private.ics"
users = ["bob"]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("feeds")
    origin = Origin()
    origin.serve("/team.ics", calendar(event("a@x", "Alpha"), event("b@x", "Beta")), etag='"v1"')
    origin.serve("/public.ics", calendar(event("h@x", "Holiday"), name="Holidays"))
    origin.serve("/private.ics", calendar(event("p@x", "Secret")))
    with origin.running(), start_radicale(folder / "radicale", auth="x-remote-user") as radicale:
        tables = FEED_TABLES.format(origin=origin.base, port=origin.port)
        options = {
            "upstream_url": radicale.url,
            "kind": "radicale",
            "mode": "proxy-auth",
            "htpasswd": write_htpasswd(folder / "users.htpasswd"),
            "mapping_extra": tables,
            "server_extra": '[feeds]\nallow_networks = ["127.0.0.0/8"]\n',
        }
        with start_proxy(folder / "davproxy", **options) as proxy:
            setup = Setup(origin, proxy, folder / "davproxy" / "davproxy.toml")
            setup.refresh()
            yield setup


def multistatus(body: bytes) -> etree._Element:
    return etree.fromstring(body)


def hrefs(root: etree._Element) -> dict[str, str | None]:
    """href -> status line of a response without propstat (None when it has props)."""
    found = {}
    for response in root.findall("D:response", NS):
        found[response.findtext("D:href", namespaces=NS)] = response.findtext(
            "D:status", namespaces=NS
        )
    return found


async def test_operator_feed_is_a_read_only_calendar(setup: Setup) -> None:
    async with raw_session() as s:
        answer = await fetch(
            s, "PROPFIND", setup.url(FEEDS + "team/"), {**basic("alice"), "Depth": "1"}, PROPS
        )
    assert answer.status == 207
    root = multistatus(answer.body)
    collection = root.find("D:response", NS)
    assert collection.find(".//D:resourcetype/C:calendar", NS) is not None
    privileges = collection.findall(".//D:current-user-privilege-set/D:privilege/*", NS)
    assert [etree.QName(p).localname for p in privileges] == ["read"]
    reports = {etree.QName(r).localname for r in collection.findall(".//D:report/*", NS)}
    assert reports == {"sync-collection", "calendar-multiget", "calendar-query"}
    token = collection.findtext(".//D:sync-token", namespaces=NS)
    assert token == collection.findtext(".//CS:getctag", namespaces=NS)
    assert collection.findtext(".//D:displayname", namespaces=NS) == "Team"
    members = [r for r in root.findall("D:response", NS)][1:]
    assert len(members) == 2
    for member in members:
        assert re.fullmatch(r'"[0-9a-f]{32}"', member.findtext(".//D:getetag", namespaces=NS))


async def test_writes_are_refused_with_need_privileges(setup: Setup) -> None:
    async with raw_session() as s:
        for method, path, body in (
            ("PUT", "team/new.ics", calendar(event("n@x", "New"))),
            ("DELETE", "team/", ""),
            ("PROPPATCH", "team/", "<x/>"),
            ("MKCOL", "team/sub/", ""),
        ):
            answer = await fetch(s, method, setup.url(FEEDS + path), basic("alice"), body)
            assert answer.status == 403, (method, answer.status)
            assert b"need-privileges" in answer.body


async def test_who_may_read(setup: Setup) -> None:
    async with raw_session() as s:
        # bob only: alice is refused, no credentials asks for them
        refused = await fetch(s, "GET", setup.url(FEEDS + "private.ics"), basic("alice"))
        anonymous = await fetch(s, "GET", setup.url(FEEDS + "private.ics"))
        allowed = await fetch(s, "GET", setup.url(FEEDS + "private.ics"), basic("bob"))
        wrong = await fetch(s, "GET", setup.url(FEEDS + "private.ics"), basic("bob", "nope"))
        public = await fetch(s, "GET", setup.url(FEEDS + "public.ics"))
    assert refused.status == 403
    assert anonymous.status == 401
    assert wrong.status == 401
    assert allowed.status == 200 and b"Secret" in allowed.body
    assert public.status == 200 and b"Holiday" in public.body
    assert 'rel="subscribe-caldav"' in public.header("link")
    assert 'rel="subscribe-caldav-auth"' in allowed.header("link")


async def test_whole_feed_get_head_and_304(setup: Setup) -> None:
    async with raw_session() as s:
        full = await fetch(s, "GET", setup.url(FEEDS + "team.ics"), basic("alice"))
        head = await fetch(s, "HEAD", setup.url(FEEDS + "team.ics"), basic("alice"))
        again = await fetch(
            s, "GET", setup.url(FEEDS + "team.ics"),
            {**basic("alice"), "If-None-Match": full.header("etag")},
        )  # fmt: skip
    assert full.status == 200
    assert full.header("content-type").startswith("text/calendar")
    assert b"METHOD:" not in full.body
    assert full.body.count(b"BEGIN:VEVENT") == 2
    assert b"REFRESH-INTERVAL;VALUE=DURATION:PT" in full.body
    assert head.status == 200 and head.body == b""
    assert head.header("etag") == full.header("etag")
    assert int(head.header("content-length")) == len(full.body)
    assert again.status == 304
    links = full.header("link")
    for rel in ("subscribe-caldav-auth", "subscribe-webdav-sync", "subscribe-enhanced-get"):
        assert f'rel="{rel}"' in links


async def test_sync_after_origin_change_and_enhanced_get(setup: Setup) -> None:
    origin = setup.origin
    enhanced = {**basic("alice"), "Prefer": "subscribe-enhanced-get"}
    async with raw_session() as s:
        first = await fetch(s, "REPORT", setup.url(FEEDS + "team/"), basic("alice"), sync_body())
        token = multistatus(first.body).findtext("D:sync-token", namespaces=NS)
        full = await fetch(s, "GET", setup.url(FEEDS + "team.ics"), enhanced)
        feed_token = full.header("sync-token")
        assert full.header("preference-applied") == "subscribe-enhanced-get"
        assert full.header("vary") == "Prefer, Sync-Token"

        # beta changes, alpha only gets a new DTSTAMP (churn), gamma appears
        origin.serve(
            "/team.ics",
            calendar(
                event("a@x", "Alpha", stamp="20270101T000000Z"),
                event("b@x", "Beta moved", start="20260106T090000Z", end="20260106T100000Z"),
                event("c@x", "Gamma"),
            ),
            etag='"v2"',
        )
        assert "changed" in setup.refresh("team")
        delta = await fetch(
            s, "REPORT", setup.url(FEEDS + "team/"), basic("alice"), sync_body(token)
        )
        enhanced_delta = await fetch(
            s, "GET", setup.url(FEEDS + "team.ics"), {**enhanced, "Sync-Token": feed_token}
        )
        # and an unchanged refresh (304 from the origin) keeps the token
        assert "not-modified" in setup.refresh("team")
        root = multistatus(delta.body)
        new_token = root.findtext("D:sync-token", namespaces=NS)
        unchanged = await fetch(
            s, "REPORT", setup.url(FEEDS + "team/"), basic("alice"), sync_body(new_token)
        )
    assert delta.status == 207
    assert len(hrefs(root)) == 2  # beta and gamma, not the DTSTAMP-only change
    assert new_token != token
    assert hrefs(multistatus(unchanged.body)) == {}
    assert enhanced_delta.status == 200
    assert enhanced_delta.body.count(b"BEGIN:VEVENT") == 2
    assert b"Alpha" not in enhanced_delta.body and b"Gamma" in enhanced_delta.body
    assert enhanced_delta.header("sync-token") != feed_token


async def test_removed_object_is_a_404_and_a_deleted_skeleton(setup: Setup) -> None:
    setup.origin.serve("/public.ics", calendar(event("h@x", "Holiday"), event("h2@x", "Two")))
    setup.refresh("public")
    async with raw_session() as s:
        first = await fetch(s, "REPORT", setup.url(FEEDS + "public/"), {}, sync_body())
        token = multistatus(first.body).findtext("D:sync-token", namespaces=NS)
        get = await fetch(
            s, "GET", setup.url(FEEDS + "public.ics"), {"Prefer": "subscribe-enhanced-get"}
        )
        setup.origin.serve("/public.ics", calendar(event("h@x", "Holiday")))
        assert "changed" in setup.refresh("public")
        delta = await fetch(s, "REPORT", setup.url(FEEDS + "public/"), {}, sync_body(token))
        skeleton = await fetch(
            s, "GET", setup.url(FEEDS + "public.ics"),
            {"Prefer": "subscribe-enhanced-get", "Sync-Token": get.header("sync-token")},
        )  # fmt: skip
        nothing = await fetch(
            s, "GET", setup.url(FEEDS + "public.ics"),
            {"Prefer": "subscribe-enhanced-get", "Sync-Token": skeleton.header("sync-token")},
        )  # fmt: skip
        bad = await fetch(
            s, "GET", setup.url(FEEDS + "public.ics"),
            {"Prefer": "subscribe-enhanced-get", "Sync-Token": '"urn:x-davproxy:feed:00-1"'},
        )  # fmt: skip
        bad_sync = await fetch(
            s, "REPORT", setup.url(FEEDS + "public/"), {}, sync_body("urn:x-davproxy:feed:00-1")
        )
    statuses = list(hrefs(multistatus(delta.body)).values())
    assert statuses == ["HTTP/1.1 404 Not Found"]
    assert b"UID:h2@x" in skeleton.body and b"STATUS:DELETED" in skeleton.body
    assert b"Holiday" not in skeleton.body
    assert nothing.status == 304
    assert bad.status == 409
    assert bad_sync.status == 403 and b"valid-sync-token" in bad_sync.body


async def test_sync_collection_pages_with_507(setup: Setup) -> None:
    async with raw_session() as s:
        seen: set[str] = set()
        token = ""
        for _ in range(10):
            answer = await fetch(
                s, "REPORT", setup.url(FEEDS + "team/"), basic("alice"), sync_body(token, limit=1)
            )
            root = multistatus(answer.body)
            found = hrefs(root)
            token = root.findtext("D:sync-token", namespaces=NS)
            cut = found.pop(FEEDS + "team/", None)
            seen |= {h for h, status in found.items() if status is None}
            if cut is None:
                break
            assert "507" in cut
        multiget = await fetch(
            s, "REPORT", setup.url(FEEDS + "team/"), basic("alice"),
            '<C:calendar-multiget xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
            "<D:prop><D:getetag/><C:calendar-data/></D:prop>"
            + "".join(f"<D:href>{h}</D:href>" for h in sorted(seen))
            + f"<D:href>{FEEDS}team/missing.ics</D:href></C:calendar-multiget>",
        )  # fmt: skip
    assert len(seen) == 3
    root = multistatus(multiget.body)
    assert len(root.findall(".//C:calendar-data", NS)) == 3
    assert hrefs(root)[f"{FEEDS}team/missing.ics"] == "HTTP/1.1 404 Not Found"


async def test_calendar_query_expands_recurrences(setup: Setup) -> None:
    weekly = event("w@x", "Weekly", extra="RRULE:FREQ=WEEKLY;COUNT=52")
    setup.origin.serve("/private.ics", calendar(weekly, event("o@x", "Once")))
    setup.refresh("private")

    def query(start: str, end: str) -> str:
        return (
            '<C:calendar-query xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
            '<D:prop><D:getetag/></D:prop><C:filter><C:comp-filter name="VCALENDAR">'
            f'<C:comp-filter name="VEVENT"><C:time-range start="{start}" end="{end}"/>'
            "</C:comp-filter></C:comp-filter></C:filter></C:calendar-query>"
        )

    async with raw_session() as s:
        late = await fetch(
            s, "REPORT", setup.url(FEEDS + "private/"), {**basic("bob"), "Depth": "1"},
            query("20260601T000000Z", "20260602T000000Z"),
        )  # fmt: skip
        early = await fetch(
            s, "REPORT", setup.url(FEEDS + "private/"), {**basic("bob"), "Depth": "1"},
            query("20260105T000000Z", "20260106T000000Z"),
        )  # fmt: skip
        never = await fetch(
            s, "REPORT", setup.url(FEEDS + "private/"), {**basic("bob"), "Depth": "1"},
            query("20300101T000000Z", "20300102T000000Z"),
        )  # fmt: skip
    assert len(hrefs(multistatus(late.body))) == 1  # the weekly one, 21 weeks in
    assert len(hrefs(multistatus(early.body))) == 2
    assert hrefs(multistatus(never.body)) == {}


async def test_origin_failure_keeps_last_good_data(setup: Setup) -> None:
    origin = setup.origin
    good = calendar(event("k@x", "Keep"))
    origin.serve("/public.ics", good)
    setup.refresh("public")
    for reply in (
        {"body": "garbage, not a calendar"},
        {"body": "", "status": 200},
        {"body": "busy", "status": 503, "headers": {"Retry-After": "120"}},
        {"body": good[: len(good) // 2]},  # truncated
    ):
        origin.serve("/public.ics", **reply)
        assert "failed" in setup.refresh("public")
        async with raw_session() as s:
            answer = await fetch(s, "GET", setup.url(FEEDS + "public.ics"))
        assert answer.status == 200 and b"UID:k@x" in answer.body, reply


async def test_private_origin_refused_without_allow_list(tmp_path: Path) -> None:
    origin = Origin()
    origin.serve("/x.ics", calendar(event("x@x", "X")))
    tables = f'[[feeds]]\nname = "x"\nurl = "{origin.base}/x.ics"\npublic = true\n'
    with (
        origin.running(),
        start_radicale(tmp_path / "radicale", auth="x-remote-user") as radicale,
        start_proxy(
            tmp_path / "p", upstream_url=radicale.url, kind="radicale", mode="proxy-auth",
            htpasswd=write_htpasswd(tmp_path / "u"), mapping_extra=tables,
        ) as proxy,
    ):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "davproxy", "admin", "-c", str(tmp_path / "p" / "davproxy.toml"),
             "feeds"], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        async with raw_session() as s:
            answer = await fetch(s, "GET", proxy.url.rstrip("/") + FEEDS + "x.ics")
    assert origin.hits("/x.ics") == 0
    assert "refused" in done.stdout
    assert answer.status == 200 and b"VEVENT" not in answer.body


def mkcol(source: str, displayname: str = "") -> str:
    name = f"<D:displayname>{displayname}</D:displayname>" if displayname else ""
    return (
        '<?xml version="1.0"?><D:mkcol xmlns:D="DAV:" xmlns:CS="http://calendarserver.org/ns/">'
        "<D:set><D:prop><D:resourcetype><D:collection/><CS:subscribed/></D:resourcetype>"
        f"<CS:source><D:href>{source}</D:href></CS:source>{name}</D:prop></D:set></D:mkcol>"
    )


async def test_user_subscription_lifecycle(setup: Setup) -> None:
    origin = setup.origin
    origin.serve("/mine.ics", calendar(event("m1@x", "Mine"), name="My feed"))
    url = origin.url("/mine.ics").replace("http://", "webcal://")
    async with raw_session() as s:
        created = await fetch(
            s, "MKCOL", setup.url("/alice/sub-mine/"), basic("alice"), mkcol(url, "Work feed")
        )
        home = await fetch(
            s, "PROPFIND", setup.url("/alice/"), {**basic("alice"), "Depth": "1"}, PROPS
        )
        items = await fetch(
            s, "PROPFIND", setup.url("/alice/sub-mine/"), {**basic("alice"), "Depth": "1"}, PROPS
        )
        # bob cannot see alice's subscription through its path
        bob = await fetch(
            s, "PROPFIND", setup.url("/alice/sub-mine/"), {**basic("bob"), "Depth": "0"}, PROPS
        )
        renamed = await fetch(
            s, "PROPPATCH", setup.url("/alice/sub-mine/"), basic("alice"),
            '<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop><D:displayname>Renamed'
            "</D:displayname></D:prop></D:set></D:propertyupdate>",
        )  # fmt: skip
        refused = await fetch(
            s, "PROPPATCH", setup.url("/alice/sub-mine/"), basic("alice"),
            '<D:propertyupdate xmlns:D="DAV:" xmlns:X="urn:x"><D:set><D:prop><D:displayname>'
            "Other</D:displayname><X:custom>1</X:custom></D:prop></D:set></D:propertyupdate>",
        )  # fmt: skip
        after = await fetch(
            s, "PROPFIND", setup.url("/alice/sub-mine/"), {**basic("alice"), "Depth": "0"}, PROPS
        )
        again = await fetch(s, "MKCOL", setup.url("/alice/sub-mine/"), basic("alice"), mkcol(url))
        deleted = await fetch(s, "DELETE", setup.url("/alice/sub-mine/"), basic("alice"))
        gone = await fetch(
            s, "PROPFIND", setup.url("/alice/sub-mine/"), {**basic("alice"), "Depth": "0"}, PROPS
        )
    assert created.status == 201
    assert origin.hits("/mine.ics") == 1  # fetched once, at creation
    listed = multistatus(home.body)
    sub = [
        r for r in listed.findall("D:response", NS)
        if r.findtext("D:href", namespaces=NS) == "/alice/sub-mine/"
    ]  # fmt: skip
    assert len(sub) == 1
    assert sub[0].find(".//D:resourcetype/C:calendar", NS) is not None
    assert sub[0].findtext(".//D:displayname", namespaces=NS) == "Work feed"
    assert len(multistatus(items.body).findall("D:response", NS)) == 2
    assert bob.status in (403, 404)
    assert b"Mine" not in bob.body
    assert renamed.status == 207 and b"200 OK" in renamed.body
    assert refused.status == 207 and b"403" in refused.body and b"424" in refused.body
    assert multistatus(after.body).findtext(".//D:displayname", namespaces=NS) == "Renamed"
    assert again.status == 405
    assert deleted.status == 204
    assert gone.status == 404  # Radicale has nothing there: it never existed upstream


async def test_subscriptions_are_neither_shareable_nor_default_calendars(setup: Setup) -> None:
    """A user's subscription offers no sharing (no CS:can-be-shared, no D:share), refuses
    share requests in both flavours and cannot become the default calendar."""
    origin = setup.origin
    origin.serve("/noshare.ics", calendar(event("n1@x", "Feed")))
    sharing_props = (
        '<D:propfind xmlns:D="DAV:" xmlns:CS="http://calendarserver.org/ns/"><D:prop>'
        "<CS:allowed-sharing-modes/><D:current-user-privilege-set/><D:supported-privilege-set/>"
        "<D:invite/></D:prop></D:propfind>"
    )
    cs_share = (
        '<CS:share xmlns:D="DAV:" xmlns:CS="http://calendarserver.org/ns/"><CS:set>'
        "<D:href>mailto:bob@example.org</D:href><CS:summary>x</CS:summary><CS:read/></CS:set>"
        "</CS:share>"
    )
    ietf_share = (
        '<D:share-resource xmlns:D="DAV:"><D:sharee><D:href>/bob/</D:href>'
        "<D:share-access><D:read/></D:share-access></D:sharee></D:share-resource>"
    )
    default = (
        '<D:propertyupdate xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav"><D:set>'
        "<D:prop><C:schedule-default-calendar-URL><D:href>/alice/sub-noshare/</D:href>"
        "</C:schedule-default-calendar-URL></D:prop></D:set></D:propertyupdate>"
    )
    alice = basic("alice")
    async with raw_session() as s:
        url = setup.url("/alice/sub-noshare/")
        created = await fetch(s, "MKCOL", url, alice, mkcol(origin.url("/noshare.ics")))
        assert created.status == 201
        home = await fetch(s, "PROPFIND", setup.url("/alice/"), {**alice, "Depth": "1"},
                           sharing_props)  # fmt: skip
        direct = await fetch(s, "PROPFIND", url, {**alice, "Depth": "0"}, sharing_props)
        xml_type = {"Content-Type": "text/xml"}
        shared_cs = await fetch(s, "POST", url, {**alice, **xml_type}, cs_share)
        shared_ietf = await fetch(s, "POST", url, {
            **alice, "Content-Type": "application/davsharing+xml"}, ietf_share)  # fmt: skip
        defaulted = await fetch(s, "PROPPATCH", setup.url("/alice/"), {**alice, **xml_type},
                                default)  # fmt: skip
        invites = await fetch(s, "PROPFIND", url, {**alice, "Depth": "0"}, sharing_props)
        assert (await fetch(s, "DELETE", url, alice)).status == 204
    entries = [
        r for r in multistatus(home.body).findall("D:response", NS)
        if r.findtext("D:href", namespaces=NS) == "/alice/sub-noshare/"
    ] + multistatus(direct.body).findall("D:response", NS)  # fmt: skip
    assert len(entries) == 2
    for entry in entries:
        assert entry.find(".//CS:can-be-shared", NS) is None, etree.tostring(entry)
        assert entry.find(".//D:privilege/D:share", NS) is None
    assert shared_cs.status == 403 and shared_ietf.status == 403
    assert defaulted.status == 403 and b"valid-schedule-default-calendar-URL" in defaulted.body
    assert b"bob" not in invites.body  # nothing was recorded


async def test_subscription_refusals(setup: Setup) -> None:
    async with raw_session() as s:
        private = await fetch(
            s, "MKCOL", setup.url("/alice/sub-ssrf/"), basic("alice"),
            mkcol("http://10.1.2.3/feed.ics"),
        )  # fmt: skip
        not_url = await fetch(
            s, "MKCOL", setup.url("/alice/sub-bad/"), basic("alice"), mkcol("ftp://x/feed.ics")
        )
        elsewhere = await fetch(
            s, "MKCOL", setup.url("/bob/sub-x/"), basic("alice"), mkcol(setup.origin.url("/x"))
        )
        deep = await fetch(
            s, "MKCOL", setup.url("/alice/a/b/"), basic("alice"), mkcol(setup.origin.url("/x"))
        )
        anonymous = await fetch(
            s, "MKCOL", setup.url("/alice/sub-anon/"), {}, mkcol(setup.origin.url("/x"))
        )
    assert private.status == 403 and b"valid-source" in private.body
    assert not_url.status == 403 and b"valid-source" in not_url.body
    assert elsewhere.status == 403
    assert deep.status == 403
    assert anonymous.status == 401


async def test_upstream_export_gains_links_and_enhanced_get(setup: Setup) -> None:
    cal = "/alice/exported/"
    alice = basic("alice")
    enhanced = {**alice, "Prefer": "subscribe-enhanced-get"}
    async with raw_session() as s:
        made = await fetch(s, "MKCALENDAR", setup.url(cal), alice)
        assert made.status == 201
        for uid in ("e1", "e2"):
            put = await fetch(
                s, "PUT", setup.url(f"{cal}{uid}.ics"),
                {**alice, "Content-Type": "text/calendar"}, calendar(event(uid, uid.upper())),
            )  # fmt: skip
            assert put.status == 201
        plain = await fetch(s, "GET", setup.url(cal), alice)
        first = await fetch(s, "GET", setup.url(cal), enhanced)
        token = first.header("sync-token")
        await fetch(s, "DELETE", setup.url(f"{cal}e1.ics"), alice)
        delta = await fetch(s, "GET", setup.url(cal), {**enhanced, "Sync-Token": token})
        same = await fetch(
            s, "GET", setup.url(cal), {**enhanced, "Sync-Token": delta.header("sync-token")}
        )
        bob = await fetch(
            s, "GET", setup.url(cal), {**basic("bob"), "Prefer": "subscribe-enhanced-get"}
        )
    assert plain.status == 200
    assert f'<{cal}>; rel="subscribe-caldav-auth"' in plain.header("link")
    assert first.status == 200 and first.body.count(b"BEGIN:VEVENT") == 2
    assert delta.status == 200
    assert b"UID:e1" in delta.body and b"STATUS:DELETED" in delta.body
    assert b"UID:e2" not in delta.body
    assert same.status == 304
    assert bob.status == 403  # Radicale's owner_only rights still decide


async def test_feed_metrics_and_admin_listing(setup: Setup) -> None:
    setup.refresh("team")
    async with raw_session() as s:
        metrics = await fetch(s, "GET", setup.url("/.davproxy/metrics"))
    text = metrics.body.decode()
    assert metrics.status == 200
    assert re.search(r'^davproxy_feed_sources\{status="ok"\} [1-9]', text, re.M), text
    assert re.search(r"^davproxy_feed_subscriptions [1-9]", text, re.M)
    assert re.search(r'^davproxy_feed_refreshes_total\{outcome="[a-z-]+"\} [1-9]', text, re.M)
    assert "davproxy_feed_refresh_duration_seconds_count" in text
    listed = setup.admin("--json", "feeds")
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert {"team", "public", "private"} <= set(rows)
    assert rows["team"]["owner"] == "(operator)" and rows["team"]["status"] == "ok"
    assert rows["team"]["objects"] >= 2


async def test_upstream_basic_mode_guards_feeds_and_subscriptions(tmp_path: Path) -> None:
    """Clients keep their Radicale passwords: davproxy checks them with Radicale before
    it serves a feed or a subscription, or creates one."""
    origin = Origin()
    origin.serve("/b.ics", calendar(event("b1@x", "Basic")))
    tables = f'[[feeds]]\nname = "b"\nurl = "{origin.base}/b.ics"\nusers = ["alice"]\n'
    htpasswd = write_htpasswd(tmp_path / "radicale-users", plain=True)
    with (
        origin.running(),
        start_radicale(tmp_path / "radicale", auth="htpasswd", htpasswd=htpasswd) as radicale,
        start_proxy(
            tmp_path / "p", upstream_url=radicale.url, kind="radicale", mode="upstream-basic",
            mapping_extra=tables, server_extra='[feeds]\nallow_networks = ["127.0.0.0/8"]\n',
        ) as proxy,
    ):  # fmt: skip
        site = FeedSite(origin, proxy, tmp_path / "p" / "davproxy.toml")
        site.refresh()
        wrong = basic("alice", "not-her-password")
        async with raw_session() as s:
            good = await fetch(s, "GET", site.url(FEEDS + "b.ics"), basic("alice"))
            bad = await fetch(s, "GET", site.url(FEEDS + "b.ics"), wrong)
            bob = await fetch(s, "GET", site.url(FEEDS + "b.ics"), basic("bob"))
            made_bad = await fetch(
                s, "MKCOL", site.url("/alice/sub-b/"), wrong, mkcol(origin.url("/b.ics"))
            )
            made = await fetch(
                s, "MKCOL", site.url("/alice/sub-b/"), basic("alice"), mkcol(origin.url("/b.ics"))
            )
            read_bad = await fetch(
                s, "PROPFIND", site.url("/alice/sub-b/"), {**wrong, "Depth": "1"}, PROPS
            )
            read = await fetch(
                s, "PROPFIND", site.url("/alice/sub-b/"), {**basic("alice"), "Depth": "1"}, PROPS
            )
    assert good.status == 200 and b"Basic" in good.body
    assert bad.status == 401 and b"Basic" not in bad.body
    assert bob.status == 403
    assert made_bad.status == 401
    assert made.status == 201
    assert read_bad.status == 401 and b"b1@x" not in read_bad.body
    assert read.status == 207 and len(multistatus(read.body).findall("D:response", NS)) == 2


async def test_subscription_in_a_xandikos_home(tmp_path: Path) -> None:
    """The same subscription flow in front of Xandikos, whose calendar home is
    /<user>/calendars/ (href rewriting off, layout from the mapping's kind)."""
    from davproxy.ops.embedded import start_xandikos

    origin = Origin()
    origin.serve("/x.ics", calendar(event("x1@x", "One"), event("x2@x", "Two")))
    with (
        origin.running(),
        start_xandikos(tmp_path / "xandikos") as xandikos,
        start_proxy(
            tmp_path / "p", upstream_url=xandikos.url, kind="xandikos", mode="proxy-auth",
            htpasswd=write_htpasswd(tmp_path / "u", scheme="bcrypt"),
            server_extra='[feeds]\nallow_networks = ["127.0.0.0/8"]\n',
        ) as proxy,
    ):  # fmt: skip
        site = FeedSite(origin, proxy, tmp_path / "p" / "davproxy.toml")
        alice = {**basic("alice"), "Content-Type": "application/xml"}  # Xandikos insists
        async with raw_session() as s:
            hello = await fetch(s, "PROPFIND", site.url("/alice/"), {**alice, "Depth": "0"}, PROPS)
            assert hello.status == 207
            wrong_place = await fetch(
                s, "MKCOL", site.url("/alice/sub/"), alice, mkcol(origin.url("/x.ics"))
            )
            made = await fetch(
                s, "MKCOL", site.url("/alice/calendars/sub/"), alice, mkcol(origin.url("/x.ics"))
            )
            real = await fetch(s, "MKCALENDAR", site.url("/alice/calendars/real/"), basic("alice"))
            shadow = await fetch(
                s, "MKCOL", site.url("/alice/calendars/real/"), alice, mkcol(origin.url("/x.ics"))
            )
            home = await fetch(
                s, "PROPFIND", site.url("/alice/calendars/"), {**alice, "Depth": "1"}, PROPS
            )
            first = await fetch(s, "REPORT", site.url("/alice/calendars/sub/"), alice, sync_body())
            token = multistatus(first.body).findtext("D:sync-token", namespaces=NS)
            origin.serve("/x.ics", calendar(event("x1@x", "One")))
            assert "changed" in site.refresh(origin.url("/x.ics"))
            delta = await fetch(
                s, "REPORT", site.url("/alice/calendars/sub/"), alice, sync_body(token)
            )
    assert wrong_place.status == 403  # not directly in her calendar home
    assert made.status == 201
    assert real.status == 201 and shadow.status == 405  # never hides an upstream calendar
    listed = {
        r.findtext("D:href", namespaces=NS): r
        for r in multistatus(home.body).findall("D:response", NS)
    }
    assert "/alice/calendars/sub/" in listed
    assert listed["/alice/calendars/sub/"].find(".//D:resourcetype/C:calendar", NS) is not None
    assert len(hrefs(multistatus(first.body))) == 2
    assert list(hrefs(multistatus(delta.body)).values()) == ["HTTP/1.1 404 Not Found"]
