"""Passthrough is invisible: the same request directly and through davproxy gives the
same status, reason, headers (apart from framing and Date) and body bytes.

Reads are compared on the same resource.  Writes cannot be repeated on one resource,
so each write is made on a twin pair: ``...-p`` through davproxy, ``...-d`` directly,
and the two answers are compared with the twin names swapped.
"""

from __future__ import annotations

import gzip
import uuid

import pytest

from tests.helpers import Answer, fetch, raw_session

from .conftest import Pair

XML = {"Content-Type": "application/xml; charset=utf-8"}


def event(uid: str, summary: str = "Meeting", extra: str = "") -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//davproxy tests//EN\r\n"
        "BEGIN:VEVENT\r\n"
        f"UID:{uid}\r\nDTSTAMP:20261101T090000Z\r\n"
        "DTSTART:20261124T100000Z\r\nDTEND:20261124T110000Z\r\n"
        f"SUMMARY:{summary}\r\n{extra}"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def vcard(uid: str, name: str) -> str:
    return (
        "BEGIN:VCARD\r\nVERSION:3.0\r\n"
        f"UID:{uid}\r\nFN:{name}\r\nN:{name};;;;\r\nEMAIL:{uid}@example.org\r\n"
        "END:VCARD\r\n"
    )


MKCALENDAR = """<?xml version="1.0" encoding="utf-8"?>
<C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
  <D:set><D:prop><D:displayname>Fidelity</D:displayname></D:prop></D:set>
</C:mkcalendar>"""

MKADDRESSBOOK = """<?xml version="1.0" encoding="utf-8"?>
<D:mkcol xmlns:D="DAV:" xmlns:CR="urn:ietf:params:xml:ns:carddav">
  <D:set><D:prop>
    <D:resourcetype><D:collection/><CR:addressbook/></D:resourcetype>
    <D:displayname>Contacts</D:displayname>
  </D:prop></D:set>
</D:mkcol>"""

PROPFIND = """<?xml version="1.0" encoding="utf-8"?>
<D:propfind xmlns:D="DAV:" xmlns:CS="http://calendarserver.org/ns/">
  <D:prop><D:resourcetype/><D:displayname/><D:getetag/><D:sync-token/><CS:getctag/>
  <D:getcontenttype/><D:supported-report-set/></D:prop>
</D:propfind>"""

PROPPATCH = """<?xml version="1.0" encoding="utf-8"?>
<D:propertyupdate xmlns:D="DAV:" xmlns:I="http://apple.com/ns/ical/">
  <D:set><D:prop><D:displayname>Renamed</D:displayname>
  <I:calendar-color>#FF0000FF</I:calendar-color></D:prop></D:set>
</D:propertyupdate>"""

CALENDAR_QUERY = """<?xml version="1.0" encoding="utf-8"?>
<C:calendar-query xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
  <D:prop><D:getetag/><C:calendar-data/></D:prop>
  <C:filter><C:comp-filter name="VCALENDAR"><C:comp-filter name="VEVENT">
    <C:time-range start="20261124T000000Z" end="20261125T000000Z"/>
  </C:comp-filter></C:comp-filter></C:filter>
</C:calendar-query>"""

SYNC = """<?xml version="1.0" encoding="utf-8"?>
<D:sync-collection xmlns:D="DAV:">
  <D:sync-token>{token}</D:sync-token><D:sync-level>1</D:sync-level>
  <D:prop><D:getetag/></D:prop>
</D:sync-collection>"""


def multiget(kind: str, hrefs: list[str]) -> str:
    ns, root, data = (
        ("urn:ietf:params:xml:ns:caldav", "calendar-multiget", "calendar-data")
        if kind == "calendar"
        else ("urn:ietf:params:xml:ns:carddav", "addressbook-multiget", "address-data")
    )
    refs = "".join(f"<D:href>{h}</D:href>" for h in hrefs)
    return (
        f'<?xml version="1.0" encoding="utf-8"?><X:{root} xmlns:D="DAV:" xmlns:X="{ns}">'
        f"<D:prop><D:getetag/><X:{data}/></D:prop>{refs}</X:{root}>"
    )


def assert_same(direct: Answer, proxied: Answer, swaps: tuple[tuple[str, str], ...] = ()) -> None:
    """Equal answers; ``swaps`` = (proxy-side text, direct-side text) pairs for writes."""
    body = proxied.body
    headers = proxied.comparable_headers()
    for old, new in swaps:
        body = body.replace(old.encode(), new.encode())
        headers = {k: [v.replace(old, new) for v in vs] for k, vs in headers.items()}
    assert (proxied.status, proxied.reason, headers, body) == (
        direct.status,
        direct.reason,
        direct.comparable_headers(),
        direct.body,
    )


class Twins:
    """Run one write on the proxy twin and the direct twin; compare the answers."""

    def __init__(self, pair: Pair, session: object, stem: str) -> None:
        self.pair, self.session = pair, session
        self.p, self.d = f"{stem}-p", f"{stem}-d"

    async def write(
        self, method: str, template: str, headers: dict[str, str] | None = None, body: str = ""
    ) -> tuple[Answer, Answer]:
        results = []
        for endpoint, name in ((self.pair.proxy, self.p), (self.pair.direct, self.d)):
            extra = {k: v.replace("{base}", endpoint.base.rstrip("/")).replace("{name}", name)
                     for k, v in (headers or {}).items()}  # fmt: skip
            results.append(
                await fetch(
                    self.session,  # type: ignore[arg-type]
                    method,
                    endpoint.url(template.replace("{name}", name)),
                    endpoint.headers(extra=extra),
                    body.replace("{name}", name) or None,
                )
            )
        proxied, direct = results
        # Upstreams that answer absolute URLs build them from Host, which davproxy
        # keeps as the client sent it: the proxy's own address on that side.
        bases = (self.pair.proxy.base.rstrip("/"), self.pair.direct.base.rstrip("/"))
        assert_same(direct, proxied, ((self.p, self.d), bases))
        return proxied, direct


async def read_both(
    pair: Pair, session: object, method: str, path: str,
    headers: dict[str, str] | None = None, body: str | None = None, user: str = "alice",
    added: tuple[str, ...] = (),
) -> tuple[Answer, Answer]:  # fmt: skip
    """Both answers, which must be identical except for the headers davproxy ``added``
    on purpose (present on the proxied side only)."""
    direct = await fetch(
        session,
        method,
        pair.direct.url(path),
        pair.direct.headers(user, headers),
        body,  # type: ignore[arg-type]
    )
    proxied = await fetch(
        session,
        method,
        pair.proxy.url(path),
        pair.proxy.headers(user, headers),
        body,  # type: ignore[arg-type]
    )
    for name in added:
        assert name in proxied.headers and name not in direct.headers, name
        del proxied.headers[name]
    assert_same(direct, proxied)
    return direct, proxied


async def test_discovery_is_identical(pair: Pair) -> None:
    async with raw_session() as session:
        body = (
            '<?xml version="1.0"?><D:propfind xmlns:D="DAV:" '
            'xmlns:C="urn:ietf:params:xml:ns:caldav"><D:prop><D:current-user-principal/>'
            "<C:calendar-home-set/><D:principal-URL/></D:prop></D:propfind>"
        )
        d, _ = await read_both(pair, session, "PROPFIND", "/", {"Depth": "0", **XML}, body)
        assert d.status == 207 and b"/alice/" in d.body
        d, _ = await read_both(pair, session, "PROPFIND", "/alice/", {"Depth": "0", **XML}, body)
        assert pair.calendar_home.encode() in d.body
        d, _ = await read_both(pair, session, "GET", "/.well-known/caldav")
        assert d.status in (301, 302) and d.header("Location")
        # davproxy adds its feature token to the DAV header, and nothing else.
        direct = await fetch(session, "OPTIONS", pair.direct.url("/alice/"), pair.direct.headers())
        proxied = await fetch(session, "OPTIONS", pair.proxy.url("/alice/"), pair.proxy.headers())
        assert proxied.header("DAV") == direct.header("DAV") + (
            ", resource-sharing, calendarserver-sharing, calendarserver-sharing-no-scheduling"
            ", calendarserver-subscribed, calendarserver-principal-property-search"
            ", calendarserver-principal-search, calendarserver-group-sharee"
        )
        proxied.headers["dav"] = direct.headers["dav"]
        assert_same(direct, proxied)


async def test_calendar_lifecycle_is_identical(pair: Pair) -> None:
    stem = f"fid-{uuid.uuid4().hex[:8]}"
    home = pair.calendar_home
    async with raw_session() as session:
        twins = Twins(pair, session, stem)
        created, _ = await twins.write("MKCALENDAR", home + "{name}/", XML, MKCALENDAR)
        assert created.status == 201

        put, _ = await twins.write(
            "PUT", home + "{name}/e1.ics",
            {"Content-Type": "text/calendar; charset=utf-8", "If-None-Match": "*"},
            event("e1"),
        )  # fmt: skip
        assert put.status == 201 and put.header("ETag")
        etag = put.header("ETag")
        again, _ = await twins.write(
            "PUT", home + "{name}/e1.ics",
            {"Content-Type": "text/calendar; charset=utf-8", "If-None-Match": "*"},
            event("e1"),
        )  # fmt: skip
        assert again.status == 412
        stale, _ = await twins.write(
            "PUT", home + "{name}/e1.ics",
            {"Content-Type": "text/calendar; charset=utf-8", "If-Match": '"stale"'},
            event("e1", "Changed"),
        )  # fmt: skip
        assert stale.status == 412
        updated, _ = await twins.write(
            "PUT", home + "{name}/e1.ics",
            {"Content-Type": "text/calendar; charset=utf-8", "If-Match": etag or ""},
            event("e1", "Changed"),
        )  # fmt: skip
        assert updated.status in (200, 201, 204)
        for uid in ("e2", "e3"):
            await twins.write(
                "PUT", home + f"{{name}}/{uid}.ics",
                {"Content-Type": "text/calendar; charset=utf-8"}, event(uid),
            )  # fmt: skip
        patched, _ = await twins.write("PROPPATCH", home + "{name}/", XML, PROPPATCH)
        assert patched.status == 207

        collection = f"{home}{stem}-p/"
        member = collection + "e1.ics"
        got, _ = await read_both(pair, session, "GET", member)
        assert got.status == 200 and b"SUMMARY:Changed" in got.body
        await read_both(pair, session, "GET", member, {"If-None-Match": got.header("ETag") or ""})
        await read_both(pair, session, "HEAD", member)
        # an exported calendar gains the subscription-upgrade links, to itself
        exported, _ = await read_both(
            pair, session, "GET", collection, {"Accept": "text/calendar"}, added=("link",)
        )
        assert exported.header("content-type").startswith("text/calendar")
        for depth in ("0", "1"):
            found, _ = await read_both(
                pair, session, "PROPFIND", collection, {"Depth": depth, **XML}, PROPFIND
            )
            assert found.status == 207 and b"Renamed" in found.body
        query, _ = await read_both(
            pair, session, "REPORT", collection, {"Depth": "1", **XML}, CALENDAR_QUERY
        )
        assert query.status == 207 and query.body.count(b"BEGIN:VEVENT") == 3
        hrefs = [collection + "e1.ics", collection + "e3.ics"]
        got_multi, _ = await read_both(
            pair, session, "REPORT", collection, {"Depth": "1", **XML},
            multiget("calendar", hrefs),
        )  # fmt: skip
        assert got_multi.body.count(b"BEGIN:VEVENT") == 2
        initial, _ = await read_both(
            pair, session, "REPORT", collection, XML, SYNC.format(token="")
        )
        assert initial.status == 207 and b"sync-token" in initial.body

        # Into a second calendar: Xandikos refuses a MOVE inside one calendar
        # (no-uid-conflict), directly as through davproxy.
        await twins.write("MKCALENDAR", home + "{name}-b/", XML, MKCALENDAR)
        moved, _ = await twins.write(
            "MOVE", home + "{name}/e2.ics",
            {"Destination": "{base}" + home + "{name}-b/e2.ics", "Overwrite": "F"},
        )  # fmt: skip
        assert moved.status in (201, 204)
        copied, _ = await twins.write(
            "COPY", home + "{name}/e3.ics",
            {"Destination": "{base}" + home + "{name}-b/e3.ics"},
        )  # fmt: skip
        assert copied.status in (201, 204, 405)
        gone, _ = await twins.write("DELETE", home + "{name}/e1.ics", {"If-Match": '"stale"'})
        assert gone.status == 412
        gone, _ = await twins.write("DELETE", home + "{name}/e1.ics")
        assert gone.status in (200, 204)
        await read_both(pair, session, "GET", member)
        for method in ("LOCK", "UNLOCK", "ACL", "FROBNICATE"):
            await twins.write(method, home + "{name}/e3.ics")
        removed, _ = await twins.write("DELETE", home + "{name}/")
        assert removed.status in (200, 204)


async def test_sync_collection_delta_is_identical(pair: Pair) -> None:
    stem = f"sync-{uuid.uuid4().hex[:8]}"
    home = pair.calendar_home
    async with raw_session() as session:
        twins = Twins(pair, session, stem)
        await twins.write("MKCALENDAR", home + "{name}/", XML, MKCALENDAR)
        await twins.write(
            "PUT", home + "{name}/a.ics", {"Content-Type": "text/calendar"}, event("a")
        )
        collection = f"{home}{stem}-p/"
        first, _ = await read_both(pair, session, "REPORT", collection, XML, SYNC.format(token=""))
        token = first.body.split(b"<sync-token>")[-1].split(b"</sync-token>")[0]
        if not token or b"<" in token:  # namespace-prefixed serialisations
            import re

            token = re.search(rb"sync-token>([^<]+)<", first.body).group(1)  # type: ignore[union-attr]
        await twins.write(
            "PUT", home + "{name}/b.ics", {"Content-Type": "text/calendar"}, event("b")
        )
        await twins.write("DELETE", home + "{name}/a.ics")
        delta, _ = await read_both(
            pair, session, "REPORT", collection, XML, SYNC.format(token=token.decode())
        )
        assert delta.status == 207
        assert b"b.ics" in delta.body and b"a.ics" in delta.body  # b added, a as 404
        bad, _ = await read_both(
            pair, session, "REPORT", collection, XML, SYNC.format(token="http://bogus/token")
        )
        assert bad.status in (403, 412) and b"valid-sync-token" in bad.body  # Xandikos: 412


async def test_address_book_is_identical(pair: Pair) -> None:
    stem = f"book-{uuid.uuid4().hex[:8]}"
    home = pair.addressbook_home
    async with raw_session() as session:
        twins = Twins(pair, session, stem)
        made, _ = await twins.write("MKCOL", home + "{name}/", XML, MKADDRESSBOOK)
        assert made.status == 201
        for uid, name in (("c1", "Carol Card"), ("c2", "Dave Card")):
            put, _ = await twins.write(
                "PUT", home + f"{{name}}/{uid}.vcf",
                {"Content-Type": "text/vcard; charset=utf-8"}, vcard(uid, name),
            )  # fmt: skip
            assert put.status == 201
        book = f"{home}{stem}-p/"
        await read_both(pair, session, "GET", book + "c1.vcf")
        await read_both(pair, session, "PROPFIND", book, {"Depth": "1", **XML}, PROPFIND)
        got, _ = await read_both(
            pair, session, "REPORT", book, {"Depth": "1", **XML},
            multiget("addressbook", [book + "c1.vcf", book + "c2.vcf"]),
        )  # fmt: skip
        assert got.body.count(b"BEGIN:VCARD") == 2


async def test_large_body_streams_both_ways(pair: Pair) -> None:
    stem = f"big-{uuid.uuid4().hex[:8]}"
    home = pair.calendar_home
    # ~5 MB of folded DESCRIPTION text in one event.
    line = (
        "DESCRIPTION:" + "x" * 60 + "\r\n" + "".join(" " + "y" * 73 + "\r\n" for _ in range(68_000))
    )
    body = event("big", extra=line)
    assert len(body) > 5_000_000
    async with raw_session() as session:
        twins = Twins(pair, session, stem)
        await twins.write("MKCALENDAR", home + "{name}/", XML, MKCALENDAR)
        put, _ = await twins.write(
            "PUT", home + "{name}/big.ics", {"Content-Type": "text/calendar"}, body
        )
        assert put.status == 201
        got, _ = await read_both(pair, session, "GET", f"{home}{stem}-p/big.ics")
        assert len(got.body) > 5_000_000


async def test_gzip_answer_passes_undecoded(radicale_pair: Pair) -> None:
    pair = radicale_pair
    async with raw_session() as session:
        # a calendar, not the home: davproxy adds its own members to home listings
        path = f"/alice/gz-{uuid.uuid4().hex[:8]}/"
        made = await fetch(session, "MKCALENDAR", pair.direct.url(path), pair.direct.headers())
        assert made.status == 201
        await fetch(
            session,
            "PUT",
            pair.direct.url(path + "e.ics"),
            pair.direct.headers(extra={"Content-Type": "text/calendar"}),
            event("gz"),
        )
        headers = {"Depth": "1", "Accept-Encoding": "gzip", **XML}
        direct = await fetch(
            session, "PROPFIND", pair.direct.url(path), pair.direct.headers(extra=headers), PROPFIND
        )
        proxied = await fetch(
            session, "PROPFIND", pair.proxy.url(path), pair.proxy.headers(extra=headers), PROPFIND
        )
    assert direct.header("Content-Encoding") == proxied.header("Content-Encoding") == "gzip"
    # gzip headers carry a timestamp, so compare what they decompress to.
    assert gzip.decompress(proxied.body) == gzip.decompress(direct.body)
    assert proxied.status == direct.status == 207


@pytest.mark.parametrize("user", ["bob", "carol"])
async def test_other_users_are_refused_alike(radicale_pair: Pair, user: str) -> None:
    """Where the upstream's owner-only rights refuse another user, davproxy refuses the
    same request itself ([access] foreign_homes = "refuse", issue 13): the same status,
    with a DAV error body naming the condition, and the upstream is not asked."""
    pair = radicale_pair
    headers = {"Depth": "0", **XML}
    async with raw_session() as session:
        direct = await fetch(
            session, "PROPFIND", pair.direct.url("/alice/"), pair.direct.headers(user, headers),
            PROPFIND,
        )  # fmt: skip
        proxied = await fetch(
            session, "PROPFIND", pair.proxy.url("/alice/"), pair.proxy.headers(user, headers),
            PROPFIND,
        )  # fmt: skip
    assert direct.status == proxied.status == 403
    assert b"need-privileges" in proxied.body
