"""Coverage-guided fuzzing of davproxy's parsers with atheris (libFuzzer).

The hypothesis properties in ``tests/unit/test_fuzz_parsers.py`` generate inputs from a
grammar; this harness lets libFuzzer grow inputs from a few valid seeds, guided by the
branches they reach in davproxy (instrumented with ``atheris.instrument_imports``), and
covers the feed parsers too.  Every target either accepts its input or raises the clear
error its function documents (``XmlError``, ``DavError`` with a 4xx status,
``PathRejected``); any other exception, or a broken invariant, is a finding.

    .venv/bin/python bench/fuzz_atheris.py                 # every target, 2,000 runs each
    .venv/bin/python bench/fuzz_atheris.py --runs 20000 --target split_feed
    .venv/bin/python bench/fuzz_atheris.py --list
    .venv/bin/python bench/fuzz_atheris.py --runs 50000 --max-time 2    # make test's smoke

libFuzzer runs one target per process, so the script re-invokes itself once per target
(``--jobs`` at a time).  Seed corpora, dictionaries and crash artifacts live in a temporary
directory (``--keep`` keeps it).  Exit status: 0 clean, 1 findings, 2 harness failure.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent

# --- seeds -------------------------------------------------------------------------------------

NS = 'xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav" xmlns:CS="http://calendarserver.org/ns/"'


def _xml(inner: str) -> bytes:
    return f'<?xml version="1.0" encoding="utf-8"?>\n{inner}'.replace("NS", NS).encode()


PROPFIND = _xml(
    "<D:propfind NS><D:prop><D:displayname/><D:resourcetype/><CS:getctag/>"
    "<D:sync-token/></D:prop></D:propfind>"
)
ALLPROP = _xml("<D:propfind NS><D:allprop/><D:include><C:calendar-data/></D:include></D:propfind>")
PROPNAME = _xml("<D:propfind NS><D:propname/></D:propfind>")
SHARE_RESOURCE = _xml(
    "<D:share-resource NS><D:sharee><D:href>mailto:bob@example.com</D:href>"
    "<D:prop><D:displayname>Bob</D:displayname></D:prop><D:comment>hi</D:comment>"
    "<D:share-access><D:read-write/></D:share-access></D:sharee>"
    "<D:sharee><D:href>/principals/carol/</D:href><D:share-access><D:no-access/>"
    "</D:share-access></D:sharee></D:share-resource>"
)
CS_SHARE = _xml(
    "<CS:share NS><CS:set><D:href>mailto:bob@example.com</D:href><CS:common-name>Bob"
    "</CS:common-name><CS:summary>team</CS:summary><CS:read-write/></CS:set>"
    "<CS:remove><D:href>/principals/carol/</D:href></CS:remove></CS:share>"
)
SYNC = _xml(
    "<D:sync-collection NS><D:sync-token>urn:x-davproxy:feed:t0-3</D:sync-token>"
    "<D:sync-level>1</D:sync-level><D:limit><D:nresults>2</D:nresults></D:limit>"
    "<D:prop><D:getetag/><C:calendar-data/></D:prop></D:sync-collection>"
)
SYNC_INITIAL = _xml(
    "<D:sync-collection NS><D:sync-token/><D:sync-level>infinite</D:sync-level>"
    "<D:prop><D:getetag/></D:prop></D:sync-collection>"
)
QUERY = _xml(
    '<C:calendar-query NS><D:prop><D:getetag/></D:prop><C:filter><C:comp-filter name="VCALENDAR">'
    '<C:comp-filter name="VEVENT"><C:time-range start="20240101T000000Z" end="20250101T000000Z"/>'
    '<C:prop-filter name="SUMMARY"><C:text-match collation="i;ascii-casemap" '
    'negate-condition="no">stand</C:text-match></C:prop-filter>'
    '<C:comp-filter name="VALARM"><C:is-not-defined/></C:comp-filter>'
    "</C:comp-filter></C:comp-filter></C:filter></C:calendar-query>"
)
QUERY_TODO = _xml(
    '<C:calendar-query NS><C:filter><C:comp-filter name="VCALENDAR"><C:comp-filter name="VTODO">'
    '<C:prop-filter name="DUE"><C:time-range start="20240101T000000Z"/></C:prop-filter>'
    '<C:prop-filter name="COMPLETED"><C:is-not-defined/></C:prop-filter>'
    "</C:comp-filter></C:comp-filter></C:filter></C:calendar-query>"
)
MULTIGET = _xml(
    "<C:calendar-multiget NS><D:prop><D:getetag/><C:calendar-data/></D:prop>"
    "<D:href>/feeds/f/HREF0</D:href><D:href>http://h/feeds/f/x%20y.ics</D:href>"
    "<D:href>../other</D:href></C:calendar-multiget>"
)
MULTISTATUS = _xml(
    "<D:multistatus NS><D:response><D:href>/up/alice/cal/</D:href><D:propstat><D:prop>"
    "<D:displayname>Cal</D:displayname></D:prop><D:status>HTTP/1.1 200 OK</D:status>"
    "</D:propstat></D:response><D:response><D:href>http://up:5232/up/alice/cal/a%20b.ics</D:href>"
    "<D:status>HTTP/1.1 404 Not Found</D:status></D:response></D:multistatus>"
)


def _ics(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


ICS = _ics(
    "BEGIN:VCALENDAR",
    "VERSION:2.0",
    "PRODID:-//fuzz//EN",
    "X-WR-CALNAME:Team",
    "X-WR-TIMEZONE:Europe/Berlin",
    "REFRESH-INTERVAL;VALUE=DURATION:PT1H",
    "BEGIN:VTIMEZONE",
    "TZID:Europe/Berlin",
    "BEGIN:STANDARD",
    "DTSTART:19701025T030000",
    "TZOFFSETFROM:+0200",
    "TZOFFSETTO:+0100",
    "RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU",
    "END:STANDARD",
    "END:VTIMEZONE",
    "BEGIN:VEVENT",
    "UID:standup@example.com",
    "DTSTAMP:20240101T000000Z",
    "DTSTART;TZID=Europe/Berlin:20240102T090000",
    "DURATION:PT15M",
    "RRULE:FREQ=WEEKLY;BYDAY=MO,TU;COUNT=20",
    "EXDATE;TZID=Europe/Berlin:20240109T090000",
    "SUMMARY:Stand-up, daily",
    "DESCRIPTION:a long description that is folded over more than one physical line be",
    " cause it is long",
    "BEGIN:VALARM",
    "ACTION:DISPLAY",
    "TRIGGER:-PT5M",
    "END:VALARM",
    "END:VEVENT",
    "BEGIN:VEVENT",
    "UID:standup@example.com",
    "RECURRENCE-ID;TZID=Europe/Berlin:20240116T090000",
    "DTSTART;TZID=Europe/Berlin:20240116T100000",
    "DURATION:PT30M",
    "SUMMARY:Stand-up (moved)",
    "END:VEVENT",
    "BEGIN:VTODO",
    "UID:todo-1",
    "DUE;VALUE=DATE:20240301",
    "SUMMARY:File taxes",
    "END:VTODO",
    "BEGIN:VEVENT",
    "DTSTART;VALUE=DATE:20240704",
    "SUMMARY:no uid",
    "END:VEVENT",
    "END:VCALENDAR",
)
ICS_SMALL = _ics(
    "BEGIN:VCALENDAR",
    "VERSION:2.0",
    "BEGIN:VEVENT",
    "UID:a@x",
    "DTSTART:20240105T100000Z",
    "DTEND:20240105T110000Z",
    "SUMMARY:Lunch",
    "END:VEVENT",
    "END:VCALENDAR",
)
SEPARATOR = b"\x00\x00"  # caldav_query: filter document, then the feed (NUL is never XML)

SEEDS: dict[str, list[bytes]] = {
    "xml_parse": [PROPFIND, SHARE_RESOURCE, MULTISTATUS, b"<a/>"],
    "propfind": [PROPFIND, ALLPROP, PROPNAME],
    # last byte: which mapper (ints come from the end of a FuzzedDataProvider's data)
    "map_hrefs": [
        MULTISTATUS + b"\x00",
        MULTISTATUS + b"\x01",
        MULTIGET + b"\x02",
        MULTIGET.replace(b"http://h/", b"http://u@[::1]:5232/dav/") + b"\x01",
    ],
    "share_resource": [SHARE_RESOURCE, CS_SHARE],
    "cs_share": [CS_SHARE, SHARE_RESOURCE],
    "check_path": [
        b"/alice/calendar/",
        b"/bob/a%20b/x.ics",
        b"/%7Ealice/caf%C3%A9/",
        b"/a/../b",
        b"//bob//c//",
    ],  # fmt: skip
    "parse_basic": [b"Basic YWxpY2U6YWxpY2UtcHc=\x00", b"alice:secret\x01", b"b\xc3\xb6b:pw\x01"],
    "split_feed": [ICS, ICS_SMALL, b"\xef\xbb\xbf" + ICS_SMALL],
    "fingerprint": [ICS_SMALL, b"BEGIN:VEVENT\nUID:x\nEND:VEVENT\n"],
    "parse_duration": [b"PT1H", b"-P1W2D", b"P1DT2H3M4S"],
    "caldav_query": [QUERY + SEPARATOR + ICS, QUERY_TODO + SEPARATOR + ICS, QUERY],
    "feed_report": [SYNC + b"\x00", SYNC_INITIAL + b"\x01", QUERY + b"\x00", MULTIGET + b"\x00"],
    # Prefer / If-None-Match / If-Modified-Since / Sync-Token, one per line; last byte: stamp
    "feed_headers": [
        b'subscribe-enhanced-get, limit=2\n"abc"\nSat, 01 Jun 2024 10:00:00 GMT\n'
        b'"urn:x-davproxy:feed:t0-3"\x05',
        b"return=minimal; wait=5\nW/*\nSunday, 06-Nov-94 08:49:37 GMT\n\x01",
    ],
    # last two bytes: the source's revision, then its oldest kept revision
    "token_revision": [
        b"urn:x-davproxy:feed:t0-3\x02\x07",
        b"urn:x-davproxy:feed:t0-9\x02\x07",
        b"\x00\x00",
    ],
    # last byte: the clock ("now"), in steps of 2e7 s
    "parse_retry_after": [
        b"120\x55",
        b"Wed, 21 Oct 2015 07:28:00 GMT\x40",
        b"Sun Nov  6 08:49:37 1994\x00",
    ],
    "feed_url": [
        b"webcal://example.com/cal.ics",
        b"https://example.com:8443/a/b.ics?x=1#frag",
        b"http://[::1]:80/x",
    ],
}

#: Inputs that were findings once (tests/unit/test_fuzz_findings.py pins each), replayed
#: as seeds: libFuzzer runs every seed before mutating, so even the few-second smoke in
#: `make test` fails at once when a dependency release brings one of them back.
_TODO_DUE = QUERY_TODO.split(b'<C:prop-filter name="COMPLETED">')[0] + (
    b"</C:comp-filter></C:comp-filter></C:filter></C:calendar-query>"
)
FINDINGS: dict[str, list[bytes]] = {
    "caldav_query": [
        # issue 21: icalendar 7.3.2 raises AttributeError for an empty VALUE parameter
        QUERY_TODO + SEPARATOR + b"BEGIN:VTODO\rE;VALUE=,\nEND:VTODO",
        QUERY + SEPARATOR + b"BEGIN:VEVENT\r\nUID:v\r\nSUMMARY;VALUE=,:x\r\nEND:VEVENT",
        _TODO_DUE + SEPARATOR + b"BEGIN:VTODO\r\nUID:t\r\nDUE:202301\r\nEND:VTODO",
        QUERY + SEPARATOR + b"BEGIN:VEVENT\r\nUID:r\r\nDTSTART:50000101T000000Z\r\n"
        b"RRULE:FREQ=DAILY\r\nEND:VEVENT",
    ],
    "split_feed": [
        b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:a\r\nSUMMARY:x\x00y\r\nEND:VEVENT\r\nEND:VCALENDAR",
        b"BEGIN:VCALENDAR\r\nNAME:r\x1cD\r\nBEGIN:VEVENT\r\nUID:a\r\nEND:VEVENT\r\nEND:VCALENDAR",
        b"BEGIN:VCALENDAR\nVERSION:\n 2.0\nBEGIN:VEVENT\nUID:a\nEND:VEVENT\nEND:VCALENDAR\n",
        b"BEGIN:VEVENT\r\x00\nEND:VEVENT",
        b" BEGIN:VEVENT\nEND:VEVENT",
        b"BEGiN:VEVENT\r\x00\tEND:VEVENT",
        b"BEGIN:VEVENT\r\x00\n END:VEVENT",
    ],
    "token_revision": ["urn:x-davproxy:feed:t0-\u00b2".encode() + b"\x02\x07"],
    "parse_retry_after": [b"2 Oct 5 7:2888888888\x00", "\u2460".encode() + b"\x00"],
    "feed_url": [b"//[]@", b"http://[]@/x", b"http://[:]:0#f", b"webcal://[]@/x"],
}
for _name, _inputs in FINDINGS.items():
    SEEDS[_name] = SEEDS[_name] + _inputs

# libFuzzer dictionaries: tokens worth splicing in.
_XML_TOKENS = [
    b"<D:href>", b"</D:href>", b"<D:sharee>", b"<D:share-access>", b"<D:read/>",
    b"<CS:set>", b"<CS:read/>", b"<CS:read-write/>", b"<CS:remove>", b'xmlns:D="DAV:"',
    b'xmlns:CS="http://calendarserver.org/ns/"', b"<!DOCTYPE a [<!ENTITY e 'x'>]>", b"&e;",
    b"<![CDATA[", b"]]>", b"<?pi x?>", b"<!-- c -->", b"&#0;", b"&#x1F600;", b"&amp;",
    b"<D:prop>", b"<D:allprop/>", b"<D:propname/>", b"<D:include>", b"<D:status>",
    b"HTTP/1.1 \xc2\xb200 OK", b"http://up:5232", b"/up/", b"/dav/", b"%2F", b"%",
]  # fmt: skip
# digits str.isdigit() accepts: superscript two (int() refuses it), Arabic-Indic three,
# fullwidth one, circled one (refused too)
_DIGITS = [
    b"\xc2\xb2", b"\xd9\xa3", b"\xef\xbc\x91", b"\xe2\x91\xa0", b"0", b"-1", b"9" * 20,
]  # fmt: skip
_QUERY_TOKENS = [
    b'<C:comp-filter name="VEVENT">', b"</C:comp-filter>", b"<C:is-not-defined/>",
    b'<C:time-range start="20240101T000000Z"/>', b'end="99991231T235959Z"',
    b'start="00010101T000000Z"',
    b'<C:prop-filter name="DTSTART">', b"</C:prop-filter>", b'<C:param-filter name="TZID"/>',
    b'<C:text-match collation="i;octet">', b'negate-condition="yes"', b"i;unicode-casemap",
    b"<D:sync-token>", b"urn:x-davproxy:feed:t0-", b"<D:nresults>", b"<D:sync-level>",
]  # fmt: skip
_ICS_TOKENS = [
    b"BEGIN:VEVENT\r\n", b"END:VEVENT\r\n", b"BEGIN:VCALENDAR\r\n", b"END:VCALENDAR\r\n",
    b"BEGIN:VTIMEZONE\r\n", b"BEGIN:VTODO\r\n", b"UID:", b"RECURRENCE-ID:", b"DTSTART:",
    b";TZID=", b'"', b"RRULE:FREQ=SECONDLY;INTERVAL=1", b"RRULE:FREQ=YEARLY;BYSETPOS=-1",
    b"RDATE:", b"EXDATE:", b"DURATION:P", b"\r\n ", b"\r\n\t", b"\xff\xfe", b"\xef\xbb\xbf",
    b"REFRESH-INTERVAL:", b"X-PUBLISHED-TTL:", b"VALUE=DATE:", b"\x0b", b"\x1b", b"\\,",
    b";VALUE=", b",", b";", b"=", b'="a,b"',
]  # fmt: skip
_HEADER_TOKENS = [
    b"Basic ", b"basic", b"webcal://", b"webcals://", b"https://", b"@", b"[::1]", b":99999",
    b"%2e", b"%2f", b"%5c", b"%00", b"..", b"//", b"GMT", b"-0000", b"+2359", b"-2359",
    b"Fri, 31 Dec 9999 23:59:59", b"Mon, 01 Jan 0001 00:00:00", b"limit=",
    b"subscribe-enhanced-get",
]  # fmt: skip

DICTS: dict[str, list[bytes]] = {
    "xml_parse": _XML_TOKENS,
    "propfind": _XML_TOKENS,
    "map_hrefs": _XML_TOKENS + _HEADER_TOKENS,
    "share_resource": _XML_TOKENS,
    "cs_share": _XML_TOKENS,
    "check_path": _HEADER_TOKENS,
    "parse_basic": _HEADER_TOKENS,
    "split_feed": _ICS_TOKENS,
    "fingerprint": _ICS_TOKENS,
    "parse_duration": _DIGITS + [b"P", b"T", b"W", b"D", b"H", b"M", b"S"],
    "caldav_query": _QUERY_TOKENS + _ICS_TOKENS,
    "feed_report": _QUERY_TOKENS + _XML_TOKENS + _DIGITS,
    "feed_headers": _HEADER_TOKENS + _DIGITS,
    "token_revision": _DIGITS,
    "parse_retry_after": _HEADER_TOKENS + _DIGITS,
    "feed_url": _HEADER_TOKENS + _DIGITS,
}

#: per-target -max_len (bytes): room for the seeds and some growth, no more
MAX_LEN: dict[str, int] = {
    "xml_parse": 2048,
    "propfind": 1024,
    "map_hrefs": 2048,
    "share_resource": 2048,
    "cs_share": 2048,
    "check_path": 256,
    "parse_basic": 256,
    "split_feed": 4096,
    "fingerprint": 1024,
    "parse_duration": 64,
    "caldav_query": 4096,
    "feed_report": 2048,
    "feed_headers": 512,
    "token_revision": 96,
    "parse_retry_after": 96,
    "feed_url": 256,
}
TARGETS = list(SEEDS)
SLOW_UNIT = 3  # seconds: an input this slow is reported (and counted) as a finding

#: libraries instrumented with davproxy, per target: the code davproxy hands input to.
#: (Instrumenting every import costs ~20 s per worker; these cost 1-4 s.)
_ICAL = ["icalendar", "recurring_ical_events", "dateutil.rrule"]
INSTRUMENT: dict[str, list[str]] = {
    "map_hrefs": ["yarl"],
    "feed_url": ["yarl"],
    "caldav_query": _ICAL,
    "feed_report": _ICAL,
    "feed_headers": ["email"],
    "parse_retry_after": ["email"],
}


def _dict_line(token: bytes) -> str:
    plain = (chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02x}" for b in token)
    return '"' + "".join(plain) + '"'


# --- the targets (loaded in the worker, davproxy instrumented) --------------------------------


class Invariant(AssertionError):
    """A documented property of an accepted input does not hold."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Invariant(message)


@dataclass
class Target:
    decode: Callable[[Any], tuple[Any, ...]]  # FuzzedDataProvider -> arguments
    run: Callable[..., None]


def _text(data: bytes) -> str:
    # aiohttp decodes header values and the request line as UTF-8 with surrogateescape
    return data.decode("utf-8", "surrogateescape")


def load_targets(atheris: Any, name: str) -> dict[str, Target]:  # noqa: C901 - closures
    with atheris.instrument_imports(include=["davproxy", *INSTRUMENT.get(name, [])]):
        import asyncio
        import types

        from multidict import CIMultiDict, CIMultiDictProxy
        from yarl import URL

        from davproxy.config import feed_url
        from davproxy.dav import davxml
        from davproxy.dav import http as dav_http
        from davproxy.dav import sync as dav_sync
        from davproxy.dav.errors import DavError, PlainError
        from davproxy.dav.paths import PathMap, PathRejected, canonical, check_path, resolve_path
        from davproxy.feeds import caldav_query
        from davproxy.feeds import fetch as feed_fetch
        from davproxy.feeds import normal as feed_normal
        from davproxy.feeds import split as feeds
        from davproxy.feeds import views as feed_views
        from davproxy.feeds.store import FeedItem, FeedSource
        from davproxy.sharing.requests import parse_cs_share, parse_share_resource
        from davproxy.upstream.identity import parse_basic

    def rest(fdp: Any) -> bytes:
        return bytes(fdp.ConsumeBytes(fdp.remaining_bytes()))

    def only_bytes(fdp: Any) -> tuple[Any, ...]:
        return (rest(fdp),)

    def only_text(fdp: Any) -> tuple[Any, ...]:
        return (_text(rest(fdp)),)

    def dav_error(exc: DavError, statuses: tuple[int, ...]) -> None:
        check(exc.status in statuses, f"DavError {exc.status} where {statuses} is documented")

    def servable(text: str | None, what: str) -> None:
        """Text davproxy puts into an XML answer must be XML text (lxml refuses the rest)."""
        if text:
            try:
                davxml.element(f"{{{davxml.DAV}}}x", text=text)
            except ValueError as exc:
                raise Invariant(f"{what} cannot be served in XML: {exc}") from None

    # -- XML ------------------------------------------------------------------------------

    def xml_parse(body: bytes) -> None:
        try:
            root = davxml.parse(body)
        except davxml.XmlError as exc:
            check(bool(str(exc)), "XmlError without a message")
            return
        check(isinstance(root.tag, str), "root is no element")
        davxml.response_status(root)  # upstream multistatus: the status of a 207's first response

    def propfind(body: bytes) -> None:
        try:
            request = davxml.parse_propfind(body)
        except davxml.XmlError:
            return
        check(request.mode in ("prop", "allprop", "propname"), f"mode {request.mode!r}")
        check(all(isinstance(n, str) for n in request.names), "non-text property name")

    paths = PathMap("/dav/", "/up/")
    upstream = URL("http://up:5232")
    mappers: list[Callable[[str], str]] = [
        lambda h: paths.href_to_public(h, upstream, "https://dav.example"),
        lambda h: paths.href_to_upstream(h, upstream),
        paths.href_to_upstream,
    ]

    def map_hrefs_decode(fdp: Any) -> tuple[Any, ...]:
        which = fdp.ConsumeIntInRange(0, len(mappers) - 1)
        return which, rest(fdp)

    def map_hrefs(which: int, body: bytes) -> None:
        try:
            mapped = davxml.map_hrefs(body, mappers[which])
        except davxml.XmlError:
            return
        if mapped is not body:
            davxml.parse(mapped)  # what the client gets must still be a document

    def share(parser: Callable[[Any], Any], statuses: tuple[int, ...]) -> Callable[[bytes], None]:
        def run(body: bytes) -> None:
            try:
                result = parser(davxml.parse(body))
            except davxml.XmlError:
                return
            except DavError as exc:
                dav_error(exc, statuses)
                return
            for sharee in result:
                check(bool(sharee.href), "sharee without href")
                check(sharee.access in ("read", "read-write", "no-access"), sharee.access)
                servable(sharee.displayname, "displayname")
                servable(sharee.comment, "comment")

        return run

    # -- paths and credentials ---------------------------------------------------------------

    def check_path_run(path: str) -> None:
        candidate = path if path.startswith("/") else "/" + path
        try:
            check_path(candidate)
            resolved = resolve_path(candidate)
        except PathRejected:
            return
        key = canonical(resolved)
        segments = key.split("/")
        check(".." not in segments and "." not in segments, f"dot segment in {key!r}")
        check("" not in segments[1:-1], f"empty segment in {key!r}")
        check(canonical(key) == key, f"canonical is not idempotent: {key!r}")
        check(resolve_path(resolved) == resolved, f"resolve_path is not idempotent: {resolved!r}")

    def basic_decode(fdp: Any) -> tuple[Any, ...]:
        encoded = fdp.ConsumeIntInRange(0, 1)
        raw = rest(fdp)
        if encoded:
            return ("Basic " + base64.b64encode(raw).decode(),)
        return (_text(raw),)

    def basic(header: str) -> None:
        credentials = parse_basic(header)
        if credentials is not None:
            check(bool(credentials.user) and "/" not in credentials.user, credentials.user)
            credentials.password.encode("utf-8", "surrogateescape")

    # -- feeds ------------------------------------------------------------------------------

    def split(raw: bytes) -> None:
        result = feeds.split_feed(raw)
        meta = result.meta
        for name in ("name", "description", "color", "timezone"):
            servable(getattr(meta, name), f"feed {name}")
        for uid, res in result.resources.items():
            check(res.uid == uid and res.href == feed_normal.href_for(uid), f"href of {uid!r}")
            check(res.text.startswith("BEGIN:VCALENDAR\r\n"), "resource does not start a VCALENDAR")
            check(res.text.endswith("END:VCALENDAR\r\n"), "resource does not end its VCALENDAR")
            check(res.fingerprint == feed_normal.fingerprint(res.text), f"fingerprint of {uid!r}")
            servable(res.text, "calendar-data")
        for tzid, zone in result.timezones.items():
            servable(zone, f"VTIMEZONE {tzid!r}")

    def fingerprint(text: str) -> None:
        check(len(feed_normal.fingerprint(text)) == 64, "digest length")

    def duration(value: str) -> None:
        feed_normal.parse_duration_seconds(value)

    fixed = feeds.split_feed(ICS)

    def query_decode(fdp: Any) -> tuple[Any, ...]:
        xml, sep, ics = rest(fdp).partition(SEPARATOR)
        return xml, ics if sep else None

    def query(xml: bytes, ics: bytes | None) -> None:
        try:
            parsed = caldav_query.parse_filter(davxml.parse(xml))
        except davxml.XmlError:
            return
        except DavError as exc:
            dav_error(exc, (400, 403))
            return
        resources = list(fixed.resources.values())
        if ics is not None:
            resources += list(feeds.split_feed(ics).resources.values())
        for res in resources:
            check(isinstance(caldav_query.matches(parsed, res.kind, res.text), bool), "verdict")

    def source(revision: int = 7, min_revision: int = 2) -> Any:
        return FeedSource(
            id=1, url="https://origin/f.ics", fetch_url="https://origin/f.ics", tag="t0",
            etag=None, last_modified=None, body_hash=None, suspect_hash=None,
            meta=json.dumps({"header": ["VERSION:2.0"], "name": "f"}), timezones="{}",
            revision=revision, min_revision=min_revision, status="ok", error="", failures=0,
            last_attempt=None, last_success=None, last_change=1.7e9, next_fetch=0.0,
            interval=3600, bytes=0, created=0.0,
        )  # fmt: skip

    items = [
        FeedItem(
            source_id=1,
            href=res.href,
            uid=res.uid,
            kind=res.kind,
            text=res.text,
            body_start=res.body_start,
            tzids=json.dumps(list(res.tzids)),
            fingerprint=res.fingerprint,
            etag=res.fingerprint[:16],
            revision=n + 2,
            modified=1.7e9,
            deleted=n == 1,
        )  # fmt: skip
        for n, res in enumerate(fixed.resources.values())
    ]

    class Store:
        """The few FeedStore reads the report code makes, over three fixed objects."""

        def items(self, source_id: int, hrefs: list[str] | None = None) -> list[Any]:
            return [i for i in items if not i.deleted and (hrefs is None or i.href in hrefs)]

        def changes(
            self, source_id: int, since: int, limit: int | None, live_only: bool = False
        ) -> list[Any]:
            rows = [i for i in items if i.revision > since and not (live_only and i.deleted)]
            return rows if limit is None else rows[:limit]

        def kinds(self, source_id: int) -> list[str]:
            return sorted({i.kind for i in items})

    server = feed_views.FeedServer(Store(), 1 << 20)  # type: ignore[arg-type]
    view = feed_views.FeedView(source=source(), base="/feeds/f/", feed_path="/feeds/f.ics",
                               displayname="f")  # fmt: skip
    loop = asyncio.new_event_loop()
    depths = ["0", "1", "infinity", " 0 "]

    def request(headers: list[tuple[str, str]]) -> Any:
        return types.SimpleNamespace(headers=CIMultiDictProxy(CIMultiDict(headers)))

    def report_decode(fdp: Any) -> tuple[Any, ...]:
        depth = depths[fdp.ConsumeIntInRange(0, len(depths) - 1)]
        return depth, rest(fdp).replace(b"HREF0", items[0].href.encode())

    def report(depth: str, body: bytes) -> None:
        try:
            answer = loop.run_until_complete(server.report(request([("Depth", depth)]), view, body))
        except davxml.XmlError:
            return
        except DavError as exc:
            dav_error(exc, (400, 403))
            return
        check(answer.status == 207, f"status {answer.status}")
        davxml.parse(answer.body)

    def headers_decode(fdp: Any) -> tuple[Any, ...]:
        stamp = fdp.ConsumeIntInRange(0, 255) * 1e7
        lines = _text(rest(fdp)).split("\n")
        names = ["Prefer", "If-None-Match", "If-Modified-Since", "Sync-Token"]
        pairs = [(names[min(n, 3)] if n < 4 else "Prefer", v) for n, v in enumerate(lines)]
        return pairs, stamp

    def headers_run(pairs: list[tuple[str, str]], stamp: float) -> None:
        req = request(pairs)
        prefer = dav_http.preferences(req)
        limit = dav_sync.positive_limit(prefer.get("limit"))  # the Prefer: limit=N of enhanced GET
        check(limit is None or 1 <= limit <= 100_000, f"limit {limit}")
        feed_views._etag_matches(req, '"abc"')
        feed_views._not_modified_since(req, stamp)
        token = req.headers.get("Sync-Token")
        if token is not None:
            dav_sync.token_revision(token.strip().strip('"'), view.source)

    def token_decode(fdp: Any) -> tuple[Any, ...]:
        revision = fdp.ConsumeIntInRange(0, 255)
        low = min(fdp.ConsumeIntInRange(0, 255), revision)
        return _text(rest(fdp)), revision, low

    def token(value: str, revision: int, low: int) -> None:
        found = dav_sync.token_revision(value, source(revision, low))
        if found is not None and value.strip():
            check(low <= found <= revision, f"revision {found} outside [{low}, {revision}]")

    def retry_decode(fdp: Any) -> tuple[Any, ...]:
        now = fdp.ConsumeIntInRange(0, 255) * 2e7
        return _text(rest(fdp)), now

    def retry(value: str, now: float) -> None:
        delay = feed_fetch.parse_retry_after(value, now)
        check(delay is None or delay >= 0, f"negative delay {delay}")

    def url(value: str) -> None:
        found = feed_url(value)
        if found is not None:
            check(found.startswith(("http://", "https://")), found)

    del PlainError  # imported for the record: no parser here raises it
    return {
        "xml_parse": Target(only_bytes, xml_parse),
        "propfind": Target(only_bytes, propfind),
        "map_hrefs": Target(map_hrefs_decode, map_hrefs),
        "share_resource": Target(only_bytes, share(parse_share_resource, (400,))),
        "cs_share": Target(only_bytes, share(parse_cs_share, (403,))),
        "check_path": Target(only_text, check_path_run),
        "parse_basic": Target(basic_decode, basic),
        "split_feed": Target(only_bytes, split),
        "fingerprint": Target(only_text, fingerprint),
        "parse_duration": Target(only_text, duration),
        "caldav_query": Target(query_decode, query),
        "feed_report": Target(report_decode, report),
        "feed_headers": Target(headers_decode, headers_run),
        "token_revision": Target(token_decode, token),
        "parse_retry_after": Target(retry_decode, retry),
        "feed_url": Target(only_text, url),
    }


# --- worker: one target in this process ------------------------------------------------------


def signature(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, Invariant):  # where the harness checked, not the helper that raised
        helpers = ("check", "servable", "dav_error")
        ours = [f for f in frames if f.filename == str(HERE) and f.name not in helpers]
    else:
        ours = [f for f in frames if "/davproxy/" in f.filename] or frames
    where = ours[-1] if ours else None
    at = f"{Path(where.filename).name}:{where.lineno}" if where else "?"
    kind = "invariant" if isinstance(exc, Invariant) else type(exc).__name__
    return f"{kind} at {at}"


def reproduce(target: Target, atheris: Any, data: bytes) -> tuple[str | None, Any, str]:
    args = target.decode(atheris.FuzzedDataProvider(data))
    try:
        target.run(*args)
    except Exception as exc:  # noqa: BLE001 - every escape is what we are looking for
        return signature(exc), args, "".join(traceback.format_exception(exc))
    return None, args, ""


def worker(args: argparse.Namespace) -> int:
    import atheris

    target = load_targets(atheris, args.worker)[args.worker]
    out = Path(args.findings)
    findings: dict[str, dict[str, Any]] = {}
    slow: list[float] = [0.0]
    executed: list[int] = [0]

    def save() -> None:
        out.write_text(json.dumps({"findings": findings, "slowest": slow[0]}, indent=1))

    def one_input(data: bytes) -> None:
        started = time.perf_counter()
        sig, decoded, trace = reproduce(target, atheris, data)
        elapsed = time.perf_counter() - started
        executed[0] += 1
        if elapsed > slow[0] or executed[0] % 256 == 0:
            grew = elapsed > 2 * slow[0] and elapsed > 0.01
            slow[0] = max(slow[0], elapsed)
            if grew or executed[0] % 256 == 0:
                save()
        if sig is None:
            return
        seen = findings.get(sig)
        if seen is None or len(data) < len(bytes.fromhex(seen["input"])):
            findings[sig] = {
                "input": data.hex(),
                "args": repr(decoded),
                "traceback": trace,
                "count": (seen or {}).get("count", 0) + 1,
            }
            save()
        else:
            seen["count"] += 1
            if seen["count"] & (seen["count"] - 1) == 0:  # a power of two: keep counts current
                save()

    save()
    flags = [
        f"-runs={args.runs}",
        f"-max_total_time={args.max_time}",  # 0: no limit
        f"-max_len={args.max_len}",
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_mb}",
        f"-seed={args.seed}",
        f"-dict={args.dict}",
        f"-artifact_prefix={args.artifacts}/",
        "-print_final_stats=1",
        "-len_control=0",  # mutate up to max_len at once: runs are few
        f"-report_slow_units={SLOW_UNIT}",
        args.corpus,
    ]
    atheris.Setup([sys.argv[0], *flags], one_input)
    atheris.Fuzz()
    return 0  # not reached: libFuzzer exits the process


def minimize(args: argparse.Namespace) -> int:
    """Shrink each finding's input while it still fails the same way (ddmin, bounded)."""
    import atheris

    target = load_targets(atheris, args.worker)[args.worker]
    path = Path(args.findings)
    state = json.loads(path.read_text())
    for sig, finding in state["findings"].items():
        deadline = time.monotonic() + args.minimize_seconds
        data = bytes.fromhex(finding["input"])
        # remove chunks of decreasing size at every offset (balanced XML needs unaligned cuts),
        # again until nothing more can go
        before = len(data) + 1
        while len(data) < before and time.monotonic() < deadline:
            before = len(data)
            sizes = sorted({len(data) // k for k in range(2, 33)} | {4, 3, 2, 1}, reverse=True)
            for size in (s for s in sizes if s > 0):
                start = 0
                while start + size <= len(data) and time.monotonic() < deadline:
                    candidate = data[:start] + data[start + size :]
                    if candidate and reproduce(target, atheris, candidate)[0] == sig:
                        data = candidate
                    else:
                        start += 1
        _, decoded, trace = reproduce(target, atheris, data)
        finding.update(minimized=data.hex(), minimized_args=repr(decoded), traceback=trace)
    path.write_text(json.dumps(state, indent=1))
    return 0


# --- driver ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    seconds: float
    runs: int | None = None
    cov_init: int | None = None
    cov_done: int | None = None
    new_units: int | None = None
    slowest: float = 0.0
    findings: dict[str, dict[str, Any]] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    returncode: int = 0
    log: str = ""


def _last_int(pattern: str, text: str) -> int | None:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else None


def run_target(name: str, opts: argparse.Namespace, work: Path) -> Outcome:
    base = work / name
    corpus, artifacts = base / "corpus", base / "artifacts"
    for d in (corpus, artifacts):
        d.mkdir(parents=True, exist_ok=True)
    for n, seed in enumerate(SEEDS[name]):
        (corpus / f"seed-{n}").write_bytes(seed)
    dict_file = base / "tokens.dict"
    dict_file.write_text("\n".join(_dict_line(t) for t in DICTS[name]) + "\n")
    findings = base / "findings.json"
    cmd = [
        sys.executable, str(HERE), "--worker", name, "--runs", str(opts.runs),
        "--max-time", str(opts.max_time),
        "--max-len", str(opts.max_len or MAX_LEN[name]), "--timeout", str(opts.timeout),
        "--rss-mb", str(opts.rss_mb), "--seed", str(opts.seed), "--corpus", str(corpus),
        "--dict", str(dict_file), "--artifacts", str(artifacts), "--findings", str(findings),
    ]  # fmt: skip
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, errors="replace", env=env, cwd=ROOT,
            timeout=opts.target_timeout,
        )  # fmt: skip
        log, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        log = f"worker killed after {opts.target_timeout} s\n{exc.stderr or ''}"
        code = -9
    outcome = Outcome(name, time.monotonic() - started, returncode=code, log=log)
    outcome.runs = _last_int(r"stat::number_of_executed_units:\s+(\d+)", log) or _last_int(
        r"Done (\d+) runs", log
    )
    outcome.cov_init = _last_int(r"INITED cov: (\d+)", log)
    outcome.cov_done = _last_int(r"\bcov: (\d+)", log)
    outcome.new_units = _last_int(r"stat::new_units_added:\s+(\d+)", log)
    outcome.artifacts = sorted(p for p in artifacts.iterdir())
    if findings.exists():
        state = json.loads(findings.read_text())
        outcome.findings, outcome.slowest = state["findings"], state["slowest"]
    if outcome.findings and opts.minimize_seconds > 0:
        shrink = subprocess.run(
            [*cmd, "--minimize", "--minimize-seconds", str(opts.minimize_seconds)],
            capture_output=True, text=True, errors="replace", env=env, cwd=ROOT,
            timeout=opts.minimize_seconds * len(outcome.findings) + 60,
        )  # fmt: skip
        if shrink.returncode != 0:
            print(f"{name}: minimizing failed:\n{shrink.stderr[-3000:]}", file=sys.stderr)
        outcome.findings = json.loads(findings.read_text())["findings"]
    return outcome


def report(outcomes: list[Outcome], wall: float, opts: argparse.Namespace) -> int:
    print(f"\n{'target':<18} {'runs':>7} {'cov init→done':>15} {'new units':>9} "
          f"{'slowest':>8} {'time':>6}  findings")  # fmt: skip
    problems = 0
    for o in outcomes:
        cov = f"{o.cov_init or '?'}→{o.cov_done or '?'}"
        bad = len(o.findings) + len(o.artifacts)  # timeouts (hangs), crashes, OOMs, slow units
        broken = o.returncode != 0 or o.runs is None
        problems += bad + (1 if broken and not bad else 0)
        status = f"{bad}" + (f" (worker exit {o.returncode})" if broken else "")
        print(f"{o.name:<18} {o.runs or 0:>7} {cov:>15} {o.new_units or 0:>9} "
              f"{o.slowest:>7.2f}s {o.seconds:>5.0f}s  {status}")  # fmt: skip
    print(f"\n{len(outcomes)} targets, {sum(o.runs or 0 for o in outcomes):,} runs, "
          f"{wall:.0f} s wall ({opts.jobs} at a time)")  # fmt: skip
    for o in outcomes:
        for sig, f in o.findings.items():
            data = bytes.fromhex(f.get("minimized", f["input"]))
            print(f"\n=== FINDING {o.name}: {sig} ({f['count']}+ inputs)")
            print(f"fuzzer input ({len(data)} bytes): {data!r}")
            print(f"arguments: {f.get('minimized_args', f['args'])}")
            print(f["traceback"].rstrip())
        for a in o.artifacts:
            kind = a.name.split("-")[0]
            what = {"slow": f"an input slower than {SLOW_UNIT} s", "timeout": "a hang"}
            data = a.read_bytes()
            print(f"\n=== {kind.upper()} {o.name}: {what.get(kind, 'libFuzzer stopped')}, "
                  f"{len(data)} bytes: {data[:1500]!r}")  # fmt: skip
        if (o.returncode != 0 or o.runs is None) and not o.findings:
            print(f"\n=== WORKER {o.name} exited {o.returncode}; log tail:")
            print("\n".join(o.log.splitlines()[-25:]))
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="libFuzzer runs per target")
    parser.add_argument("--target", action="append", choices=TARGETS, help="repeatable")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--max-time", type=int, default=0, help="seconds per target (0: none)")
    parser.add_argument("--max-len", type=int, default=0, help="override per-target max_len")
    parser.add_argument("--timeout", type=int, default=10, help="seconds per input: a hang")
    parser.add_argument("--rss-mb", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer seed (0: random)")
    parser.add_argument("--target-timeout", type=int, default=600, help="seconds per worker")
    parser.add_argument("--minimize-seconds", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep corpora and artifacts")
    parser.add_argument("--list", action="store_true")
    # internal: the per-target worker
    parser.add_argument("--worker", choices=TARGETS, help=argparse.SUPPRESS)
    parser.add_argument("--minimize", action="store_true", help=argparse.SUPPRESS)
    for name in ("--corpus", "--dict", "--artifacts", "--findings"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.list:
        print("\n".join(f"{t:<18} max_len {MAX_LEN[t]}" for t in TARGETS))
        return 0
    if opts.worker:
        return minimize(opts) if opts.minimize else worker(opts)
    try:
        import atheris  # noqa: F401
    except ImportError as exc:
        print(f"atheris is not importable ({exc}); .venv/bin/pip install atheris==3.0.0")
        return 2
    names = opts.target or TARGETS
    work = Path(tempfile.mkdtemp(prefix="davproxy-fuzz-"))
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=max(1, opts.jobs)) as pool:
            outcomes = list(pool.map(lambda n: run_target(n, opts, work), names))
        return report(outcomes, time.monotonic() - started, opts)
    finally:
        if opts.keep:
            print(f"\ncorpora, dictionaries and artifacts kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
