"""Hostile values inside a feed: one object the iCalendar library cannot read must not
break calendar-query for everyone subscribed (issue 21).

The atheris soak found that icalendar 7.3.2 raises ``AttributeError`` (not the
``ValueError`` davproxy caught) for a property whose VALUE parameter is empty list items
(``E;VALUE=,``): anyone who can publish a feed could make every subscriber's
calendar-query on it fail with a 500.  Here a real origin publishes that very input next
to good objects, davproxy (in front of a real Radicale) refreshes it, and calendar-query
must answer 207 with the good objects: the unreadable one simply does not match, and
davproxy's log says which library refused it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lxml import etree

from davproxy.feeds.normal import href_for
from davproxy.ops.embedded import start_radicale
from tests.feed_origin import FeedSite, Origin, calendar, event
from tests.helpers import basic, fetch, raw_session, start_proxy, write_htpasswd

NS = {"D": "DAV:", "C": "urn:ietf:params:xml:ns:caldav"}
COLLECTION = "/.davproxy/feeds/hostile/"
#: the fuzzer's input, byte for byte (bare CR, bare LF): a VTODO whose only property has
#: ``VALUE=,`` as its parameter
FINDING = "BEGIN:VTODO\rE;VALUE=,\nEND:VTODO\r\n"
#: the same defect on properties clients read, in a VTODO and in a VEVENT
EMPTY_VALUE_SUMMARY = (
    "BEGIN:VTODO\r\nUID:bad-summary@x\r\nDUE:20260110T090000Z\r\n"
    "SUMMARY;VALUE=,:unreadable\r\nEND:VTODO\r\n"
)
GOOD_TODO = (
    "BEGIN:VTODO\r\nUID:todo@x\r\nDUE:20260110T090000Z\r\nSUMMARY:File taxes\r\nEND:VTODO\r\n"
)


def query(kind: str, inner: str = "") -> str:
    return (
        '<C:calendar-query xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
        '<D:prop><D:getetag/></D:prop><C:filter><C:comp-filter name="VCALENDAR">'
        f'<C:comp-filter name="{kind}">{inner}</C:comp-filter></C:comp-filter></C:filter>'
        "</C:calendar-query>"
    )


TODO, EVENT = href_for("todo@x"), href_for("good@x")
IN_JANUARY = '<C:time-range start="20260101T000000Z" end="20260201T000000Z"/>'
SUMMARY_HAS = '<C:prop-filter name="SUMMARY"><C:text-match>{}</C:text-match></C:prop-filter>'


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeedSite]:
    folder = tmp_path_factory.mktemp("feed-hostile-values")
    origin = Origin()
    origin.serve(
        "/hostile.ics",
        calendar(
            event("good@x", "Planning"),
            event("bad-event@x", "Elsewhere", extra="LOCATION;VALUE=,:nowhere"),
            GOOD_TODO,
            FINDING,
            EMPTY_VALUE_SUMMARY,
        ),
    )
    tables = f'[[feeds]]\nname = "hostile"\nurl = "{origin.base}/hostile.ics"\nusers = ["bob"]\n'
    with origin.running(), start_radicale(folder / "radicale", auth="x-remote-user") as radicale:
        with start_proxy(
            folder / "davproxy", upstream_url=radicale.url, kind="radicale", mode="proxy-auth",
            htpasswd=write_htpasswd(folder / "users.htpasswd"), mapping_extra=tables,
            server_extra='[feeds]\nallow_networks = ["127.0.0.0/8"]\n',
        ) as proxy:  # fmt: skip
            site = FeedSite(origin, proxy, folder / "davproxy" / "davproxy.toml")
            done = site.admin("refresh")
            assert done.returncode == 0, done.stdout + done.stderr
            yield site


async def report(site: FeedSite, body: str) -> tuple[int, set[str], bytes]:
    async with raw_session() as s:
        answer = await fetch(
            s, "REPORT", site.url(COLLECTION), {**basic("bob"), "Depth": "1"}, body
        )
    if answer.status != 207:
        return answer.status, set(), answer.body
    root = etree.fromstring(answer.body)
    found = {h.rsplit("/", 1)[1] for h in root.xpath("//D:response/D:href/text()", namespaces=NS)}
    return answer.status, found, answer.body


async def test_the_feed_holds_the_hostile_objects(site: FeedSite) -> None:
    """The splitter keeps them (it never parses values): only calendar-query reads them."""
    status, found, body = await report(site, query("VTODO"))  # trivial filter: no parsing
    assert status == 207, body[:500]
    assert len(found) == 3 and TODO in found and href_for("bad-summary@x") in found, found
    status, found, body = await report(site, query("VEVENT"))
    assert status == 207 and found == {EVENT, href_for("bad-event@x")}, (status, found)


@pytest.mark.parametrize(
    ("kind", "inner", "expected"),
    [
        ("VTODO", IN_JANUARY, {TODO}),
        ("VTODO", SUMMARY_HAS.format("taxes"), {TODO}),
        ("VTODO", '<C:prop-filter name="E"/>', set()),
        ("VEVENT", IN_JANUARY, {EVENT}),
    ],
    ids=["todo-time-range", "todo-text-match", "todo-prop-E", "event-time-range"],
)
async def test_calendar_query_skips_what_the_library_cannot_read(
    site: FeedSite, kind: str, inner: str, expected: set[str]
) -> None:
    status, found, body = await report(site, query(kind, inner))
    assert status == 207, (status, body[:500])
    assert found == expected


async def test_the_log_names_the_library_and_no_error_is_unhandled(site: FeedSite) -> None:
    await report(site, query("VTODO", IN_JANUARY))
    text = site.proxy.log_path.read_text(errors="replace")
    assert "Traceback" not in text and "unhandled error" not in text
    assert "icalendar" in text and "refused" in text, text[-2000:]
