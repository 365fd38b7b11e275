"""Generated requests against davproxy in front of a real Radicale: whatever the method,
path, headers and body, no answer is a 5xx: davproxy never fails itself, and what it
forwards never makes the (healthy) upstream fail either; davproxy keeps serving.

Requests also target what davproxy serves itself for subscriptions: the feeds root, an
operator feed's collection, its members and ``.ics``, and a user's subscription, with
generated REPORT bodies (sync-collection with random tokens and limits,
calendar-multiget, calendar-query with random filters), PROPFIND bodies and
``Prefer``/``Sync-Token`` headers.  Any 5xx there is davproxy's own failure.

``DAVPROXY_FUZZ_EXAMPLES`` sets the number of requests (``make soak``: 10,000).
"""

from __future__ import annotations

import http.client
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from davproxy.ops.embedded import ServerProcess, start_radicale
from tests.feed_origin import Origin, calendar, event
from tests.helpers import basic, start_proxy, write_htpasswd
from tests.unit.test_fuzz_parsers import dav_trees, document

EXAMPLES = int(os.environ.get("DAVPROXY_FUZZ_EXAMPLES", "150"))

METHODS = ["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PROPFIND", "PROPPATCH", "REPORT",
           "MKCOL", "MKCALENDAR", "MOVE", "COPY", "LOCK", "FROB"]  # fmt: skip
PATHS = ["/alice/", "/alice/fz/", "/alice/fz/e.ics", "/bob/", "/.davproxy/whoami",
         "/.davproxy/notifications/alice/", "/.davproxy/notifications/alice/x.xml",
         "/.davproxy/notifications/bob/", "/.davproxy/metrics", "/.well-known/caldav",
         "/alice/fz/%2e%2e/x", "/alice//x", "/alice/%ff", "/", "/alice/fz/a%20b.ics"]  # fmt: skip
FEEDS = "/.davproxy/feeds/"
FEED_PATHS = [FEEDS, FEEDS + "fz/", FEEDS + "fz", FEEDS + "fz.ics", FEEDS + "pub/",
              FEEDS + "pub.ics", FEEDS + "fz/missing.ics", FEEDS + "fz/x/y", FEEDS + "nope/",
              FEEDS + "nope.ics", FEEDS + "fz/%2e%2e/pub.ics", FEEDS + "fz.ics/x",
              "/alice/sub-fz/", "/alice/sub-fz/missing.ics", "/bob/sub-fz/"]  # fmt: skip
CALDAV = "urn:ietf:params:xml:ns:caldav"
TOKEN_PREFIX = "urn:x-davproxy:feed:"
TYPES = ["application/xml", "text/xml", "application/davsharing+xml", "text/calendar",
         "application/json", ""]  # fmt: skip


#: filled in by the fixture: member paths and the sync-token tag of the "fz" feed
FEED_STATE: dict[str, list[str]] = {"members": [], "tags": ["0123456789abcdef"]}

FEED_TABLES = """
[[feeds]]
name = "fz"
url = "{origin}/fz.ics"
users = ["alice"]

[[feeds]]
name = "pub"
url = "{origin}/pub.ics"
public = true
"""


def mkcol_subscription(source: str) -> bytes:
    return (
        '<?xml version="1.0"?><D:mkcol xmlns:D="DAV:" xmlns:CS="http://calendarserver.org/ns/">'
        "<D:set><D:prop><D:resourcetype><D:collection/><CS:subscribed/></D:resourcetype>"
        f"<CS:source><D:href>{source}</D:href></CS:source></D:prop></D:set></D:mkcol>"
    ).encode()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    folder = tmp_path_factory.mktemp("fuzz")
    origin = Origin()
    weekly = event("w@fz", "Weekly", extra="RRULE:FREQ=WEEKLY;COUNT=52")
    todo = "BEGIN:VTODO\r\nUID:t@fz\r\nDTSTAMP:20260101T000000Z\r\nSUMMARY:Do\r\nEND:VTODO\r\n"
    origin.serve("/fz.ics", calendar(event("a@fz", "A"), event("b@fz", "B"), weekly, todo))
    origin.serve("/pub.ics", calendar(event("p@fz", "P", extra="LOCATION:Here")))
    with origin.running(), start_radicale(folder / "radicale") as upstream:
        with start_proxy(
            folder / "davproxy", upstream_url=upstream.url, kind="radicale", mode="proxy-auth",
            htpasswd=write_htpasswd(folder / "users.htpasswd"),
            mapping_extra=FEED_TABLES.format(origin=origin.base),
            server_extra='[feeds]\nallow_networks = ["127.0.0.0/8"]\n',
        ) as proxy:  # fmt: skip
            alice = basic("alice")
            status, _ = send(proxy, "MKCOL", "/alice/sub-fz/", alice,
                             mkcol_subscription(origin.url("/pub.ics")))  # fmt: skip
            assert status == 201, status
            status, listing = send(
                proxy, "PROPFIND", FEEDS + "fz/", {**alice, "Depth": "1"},
                b'<D:propfind xmlns:D="DAV:"><D:prop><D:sync-token/></D:prop></D:propfind>',
            )  # fmt: skip
            assert status == 207, status
            text = listing.decode()
            FEED_STATE["members"] = re.findall(r"<D:href>(/[^<]+\.ics)</D:href>", text) or [
                FEEDS + "fz/missing.ics"
            ]
            FEED_STATE["tags"] = re.findall(re.escape(TOKEN_PREFIX) + r"([0-9a-f]+)-", text)
            yield proxy, folder


def send(
    proxy: ServerProcess, method: str, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(proxy.host, proxy.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


SAFE_TEXT = st.text(max_size=12).map(lambda t: t.replace("&", "&amp;").replace("<", "&lt;"))


@st.composite
def feed_tokens(draw: st.DrawFn) -> str:
    tag = draw(
        st.sampled_from(FEED_STATE["tags"] or ["0"]) | st.text("0123456789abcdef", max_size=16)
    )
    revision = draw(
        st.integers(-3, 40).map(str) | st.sampled_from(["", "x", "1e3", "9" * 40, "-0", " 1"])
    )
    return draw(
        st.sampled_from(["", f"{TOKEN_PREFIX}{tag}-{revision}", f"{TOKEN_PREFIX}{tag}"])
        | SAFE_TEXT
        | st.just(f"{TOKEN_PREFIX}{tag}-{revision}").map(lambda t: "http://x/" + t)
    )


PROPS = ["D:getetag", "D:displayname", "D:resourcetype", "D:sync-token", "D:getcontenttype",
         "D:current-user-privilege-set", "D:supported-report-set", "C:calendar-data",
         "C:supported-calendar-component-set", "CS:getctag", "CS:source", "X:unknown"]  # fmt: skip


@st.composite
def prop_lists(draw: st.DrawFn) -> str:
    names = draw(st.lists(st.sampled_from(PROPS), max_size=5))
    inner = ""
    for name in names:
        if name == "C:calendar-data" and draw(st.booleans()):
            start, end = draw(time_ranges())
            inner += f'<C:calendar-data><C:expand start="{start}" end="{end}"/></C:calendar-data>'
        else:
            inner += f"<{name}/>"
    return inner


@st.composite
def time_ranges(draw: st.DrawFn) -> tuple[str, str]:
    stamp = st.sampled_from(["20260101T000000Z", "20260601T000000Z", "20300101T000000Z",
                             "19000101T000000Z", "20260105T090000", "2026", "", "x"])  # fmt: skip
    return draw(stamp), draw(stamp)


@st.composite
def filters(draw: st.DrawFn, depth: int = 0) -> str:
    names = ["VEVENT", "VTODO", "VALARM", "vevent", "X"]
    name = draw(st.sampled_from(["VCALENDAR"] * 3 + names if depth == 0 else names))
    kind = draw(st.sampled_from(["comp", "prop", "param"] if depth else ["comp"]))
    parts = []
    for _ in range(draw(st.integers(0, 2 if depth < 3 else 0))):
        choice = draw(st.sampled_from(["time", "text", "undefined", "child"]))
        if choice == "time":
            start, end = draw(time_ranges())
            attrs = "".join(
                f' {k}="{v}"'
                for k, v in (("start", start), ("end", end))
                if draw(st.booleans()) or v
            )
            parts.append(f"<C:time-range{attrs}/>")
        elif choice == "text":
            collation = draw(st.sampled_from(["", ' collation="i;octet"', ' collation="x"']))
            negate = draw(st.sampled_from(["", ' negate-condition="yes"', ' negate-condition="?"']))
            parts.append(f"<C:text-match{collation}{negate}>{draw(SAFE_TEXT)}</C:text-match>")
        elif choice == "undefined":
            parts.append("<C:is-not-defined/>")
        else:
            parts.append(draw(filters(depth + 1)))
    tag = f"C:{kind}-filter"
    prop = draw(st.sampled_from(["SUMMARY", "UID", "DTSTART", "LOCATION", "X-Y"]))
    return f'<{tag} name="{name if kind == "comp" else prop}">{"".join(parts)}</{tag}>'


def wrap(root: str, inner: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?><{root} xmlns:D="DAV:" xmlns:C="{CALDAV}"'
        f' xmlns:CS="http://calendarserver.org/ns/" xmlns:X="urn:x">{inner}</{root}>'
    ).encode()


@st.composite
def feed_bodies(draw: st.DrawFn) -> bytes:
    """REPORT and PROPFIND bodies a feed collection understands (and near misses)."""
    kind = draw(st.sampled_from(["sync", "multiget", "query", "propfind"]))
    props = draw(prop_lists())
    if kind == "sync":
        limit = draw(
            st.none() | st.integers(-2, 10**12).map(str) | st.sampled_from(["", "x", "1.5"])
        )
        limit_xml = "" if limit is None else f"<D:limit><D:nresults>{limit}</D:nresults></D:limit>"
        level = draw(st.sampled_from(["1", "infinite", "2", ""]))
        return wrap(
            "D:sync-collection",
            f"<D:sync-token>{draw(feed_tokens())}</D:sync-token>"
            f"<D:sync-level>{level}</D:sync-level>{limit_xml}<D:prop>{props}</D:prop>",
        )
    if kind == "multiget":
        hrefs = draw(
            st.lists(
                st.sampled_from(FEED_STATE["members"] or [FEEDS]) | st.sampled_from(FEED_PATHS)
                | SAFE_TEXT | st.just("http://127.0.0.1:1" + FEEDS + "fz/a.ics"),
                max_size=6,
            )
        )  # fmt: skip
        body = "".join(f"<D:href>{h}</D:href>" for h in hrefs)
        return wrap("C:calendar-multiget", f"<D:prop>{props}</D:prop>{body}")
    if kind == "query":
        filt = draw(filters()) if draw(st.integers(0, 9)) else ""
        return wrap("C:calendar-query", f"<D:prop>{props}</D:prop><C:filter>{filt}</C:filter>")
    inner = draw(st.sampled_from(["<D:allprop/>", "<D:propname/>", f"<D:prop>{props}</D:prop>"]))
    return wrap("D:propfind", inner)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    method=st.sampled_from(METHODS),
    path=st.sampled_from(PATHS)
    | st.text("/abc%2e.@", min_size=1, max_size=20).map(lambda p: "/" + p)
    | st.sampled_from(FEED_PATHS)
    | st.builds(lambda: FEED_STATE["members"]).flatmap(st.sampled_from),
    content_type=st.sampled_from(TYPES),
    depth=st.sampled_from(["0", "1", "infinity", "x"]),
    user=st.sampled_from(["alice", "bob", None]),
    body=st.binary(max_size=200) | dav_trees().map(document) | feed_bodies(),
    prefer=st.sampled_from(
        [None, "subscribe-enhanced-get", "return=minimal", "depth-noroot", "x;;=", "wait=1"]
    ),
    sync_token=st.none()
    | feed_tokens().map(lambda t: "".join(c for c in f'"{t}"' if " " <= c <= "~")),
)
def test_generated_requests_never_break_davproxy(
    target: tuple[ServerProcess, Path],
    method: str, path: str, content_type: str, depth: str, user: str | None, body: bytes,
    prefer: str | None, sync_token: str | None,
) -> None:  # fmt: skip
    proxy, _ = target
    headers = {"Depth": depth, **(basic(user) if user else {})}
    if content_type:
        headers["Content-Type"] = content_type
    if prefer is not None:
        headers["Prefer"] = prefer
    if sync_token is not None:
        headers["Sync-Token"] = sync_token
    if method in ("MOVE", "COPY"):
        headers["Destination"] = f"http://{proxy.host}:{proxy.port}/alice/fz/moved.ics"
    status, answer = send(proxy, method, path, headers, body)
    assert b"Internal error in davproxy" not in answer, (method, path, status)
    # no 5xx at all: davproxy's own, or the upstream's (davproxy shields it from hostile
    # bodies and foreign paths, issue 13)
    assert status < 500, (method, path, headers, body[:300], status, answer[:200])
    assert proxy.process.poll() is None


def test_fuzzing_left_no_unhandled_error_in_the_log(target: tuple[ServerProcess, Path]) -> None:
    proxy, _ = target
    text = proxy.log_path.read_text(errors="replace")
    assert "unhandled error" not in text and "Traceback" not in text
