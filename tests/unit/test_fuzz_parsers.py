"""Property-based checks: every parser of client input either accepts or raises its own
clear error — never anything else (which would surface as a 500)."""

from __future__ import annotations

import base64
import contextlib
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from davproxy.dav import davxml
from davproxy.dav.errors import DavError
from davproxy.dav.paths import PathRejected, canonical, check_path, resolve_path
from davproxy.sharing.requests import parse_cs_share, parse_share_resource
from davproxy.upstream.identity import parse_basic

EXAMPLES = int(os.environ.get("DAVPROXY_PARSER_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = ["D:share-resource", "D:sharee", "D:href", "D:share-access", "D:read", "D:read-write",
         "D:no-access", "D:comment", "D:prop", "D:displayname", "CS:share", "CS:set",
         "CS:remove", "CS:read", "CS:read-write", "CS:summary", "CS:common-name", "D:all",
         "D:propfind", "D:allprop", "D:propname", "D:include", "X:other"]  # fmt: skip
# Text XML can carry (control characters other than tab/newline are not XML at all, nor
# are the noncharacters U+FFFE and U+FFFF: XML 1.0 §2.2).
TEXT = st.text(
    st.characters(
        blacklist_categories=("Cs", "Cc"),
        blacklist_characters="\ufffe\uffff",
        whitelist_characters="\t\n",
    ),
    max_size=40,
)


@st.composite
def dav_trees(draw: st.DrawFn, depth: int = 0) -> str:
    """Random XML made of the element names davproxy understands (and some it does not)."""
    name = draw(st.sampled_from(NAMES))
    children = "" if depth > 4 else "".join(draw(st.lists(dav_trees(depth + 1), max_size=4)))
    text = draw(TEXT).replace("&", "&amp;").replace("<", "&lt;")
    return f"<{name}>{text}{children}</{name}>"


def document(inner: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<W xmlns:D="DAV:" xmlns:CS="http://calendarserver.org/ns/" xmlns:X="urn:x">{inner}</W>'
    ).encode()


@FUZZ
@given(dav_trees())
def test_share_parsers_only_raise_dav_errors(tree: str) -> None:
    root = davxml.parse(document(tree))[0]
    for parser in (parse_share_resource, parse_cs_share):
        try:
            result = parser(root)
        except DavError as exc:
            assert exc.status in (400, 403)
        else:
            assert all(s.href and s.access in ("read", "read-write", "no-access") for s in result)


@FUZZ
@given(st.binary(max_size=300) | dav_trees().map(lambda t: document(t)))
def test_xml_parse_accepts_or_says_why(body: bytes) -> None:
    try:
        root = davxml.parse(body)
    except davxml.XmlError as exc:
        assert str(exc)
    else:
        assert isinstance(root.tag, str)
        with contextlib.suppress(davxml.XmlError):
            davxml.parse_propfind(body)


@FUZZ
@given(dav_trees())
def test_href_mapping_round_trips_or_keeps_bytes(tree: str) -> None:
    body = document(f"<D:href>/up/a%20b/</D:href>{tree}<D:href>/other/</D:href>")
    mapped = davxml.map_hrefs(body, lambda h: h.replace("/up/", "/dav/", 1))
    hrefs = [e.text for e in etree.fromstring(mapped).iter("{DAV:}href")]
    assert hrefs[0] == "/dav/a%20b/" and hrefs[-1] == "/other/"


@FUZZ
@given(st.text(max_size=60))
def test_check_path_refuses_or_the_path_is_stable(path: str) -> None:
    candidate = "/" + path
    try:
        check_path(candidate)
        resolved = resolve_path(candidate)
    except PathRejected:
        return
    # an accepted path resolves to a form with no segment the upstream could resolve to
    # somewhere else, and that form is a fixed point
    segments = canonical(resolved).split("/")
    assert ".." not in segments and "." not in segments
    assert "" not in segments[1:-1]
    assert resolve_path(resolved) == resolved


@FUZZ
@given(st.binary(max_size=80))
def test_basic_auth_parsing_never_raises(raw: bytes) -> None:
    header = "Basic " + base64.b64encode(raw).decode()
    credentials = parse_basic(header)
    if credentials is not None:
        assert credentials.user and "/" not in credentials.user
    assert parse_basic(raw.decode("latin-1")) is None or raw.lower().startswith(b"basic ")
