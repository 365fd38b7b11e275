"""A REPORT body under a copy mapped on its text means what the tree mapping means.

``sharing/copies.py`` maps a request body's hrefs into the owner's collection with
``dav/textedit.map_prefix`` when every href is the copy's path and a plain member name,
else on the parsed tree (``davxml.map_hrefs``) as before.  Generated bodies (prefixes
other than ``D``, the default namespace, hrefs with escapes, percent-encoding, dots,
absolute URLs and spaces, hrefs with attributes, comments, CDATA) must come out of
both as the same document, with the copy's own href mapping.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from davproxy.dav import davxml, textedit
from davproxy.dav.errors import DavError
from davproxy.dav.paths import canonical
from davproxy.sharing.copies import _PROBE, copy_request_hrefs

COPY, OWNER = "/bob/copy%400/", "/alice/cal0/"
UPSTREAM = "/dav/alice/cal0/"


def to_upstream(href: str) -> str:
    return "/dav/" + href[1:]  # a public -> upstream prefix mapping, as rewrite has


MAPPER = copy_request_hrefs(canonical(COPY), canonical(OWNER), to_upstream)
NAMES = st.one_of(
    st.text("abcXYZ019._~-", min_size=1, max_size=12),
    st.sampled_from(["a b", "a%20b", "x&amp;y", "..", ".", "", "sub/x.ics", "%7Ex", "é.ics"]),
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    prefix = draw(st.sampled_from(["D", "d", "dav", ""]))
    q = f"{prefix}:" if prefix else ""
    declare = f'xmlns:{prefix}="DAV:"' if prefix else 'xmlns="DAV:"'
    hrefs = []
    odd = draw(st.integers(0, 3))  # how often an href is not a plain member (0: never)
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.integers(0, 3)) >= odd:
            name = draw(st.text("abcXYZ019._~-", min_size=1, max_size=12))
            hrefs.append(f"<{q}href>{COPY}{name}</{q}href>")
            continue
        base = draw(st.sampled_from([COPY, canonical(COPY), COPY, "http://h" + COPY, OWNER]))
        name = draw(NAMES)
        pad = draw(st.sampled_from(["", "", "", " ", "\n"]))
        attr = draw(st.sampled_from(["", "", "", ' x="1"']))
        hrefs.append(f"<{q}href{attr}>{pad}{base}{name}{pad}</{q}href>")
    extra = draw(st.sampled_from(["", "", "", "", "<!-- c -->", "<![CDATA[x]]>", "&#65;"]))
    other = draw(st.sampled_from(["", "<C:filter/>", '<C:x xmlns:D="DAV:"/>']))
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n<C:calendar-multiget {declare}'
        f' xmlns:C="urn:ietf:params:xml:ns:caldav"><{q}prop><{q}getetag/></{q}prop>'
        f"{other}{''.join(hrefs)}{extra}</C:calendar-multiget>"
    ).encode()


def c14n(body: bytes) -> bytes:
    return etree.tostring(davxml.parse(body), method="c14n")


@settings(max_examples=300, deadline=None)
@given(body=bodies())
def test_text_mapping_means_what_the_tree_mapping_means(body: bytes) -> None:
    root = davxml.parse(body)
    new = MAPPER(COPY + _PROBE)[: -len(_PROBE)]
    try:
        text = textedit.map_prefix(root, body, COPY, new)
    except textedit.Unsupported:
        return
    try:
        tree = davxml.map_hrefs(body, MAPPER)
    except DavError:
        pytest.fail("the text path mapped a body the tree path refuses")
    assert c14n(text) == c14n(tree)
    # nothing but the hrefs changed: the rest is the client's own bytes
    assert text.replace(new.encode(), COPY.encode()) == body


@given(
    name=st.text("abcXYZ019._~-", min_size=1, max_size=20).filter(lambda n: n not in {".", ".."})
)
def test_a_plain_member_maps_by_prefix(name: str) -> None:
    """What map_prefix relies on: the copy's mapping of prefix + name is the mapping of
    the prefix followed by the same name, for either spelling of the copy's path."""
    for spelling in (COPY, canonical(COPY)):
        prefix = MAPPER(spelling + _PROBE)[: -len(_PROBE)]
        assert MAPPER(spelling + name) == prefix + name == UPSTREAM + name


def test_a_plain_multiget_body_takes_the_text_path() -> None:
    hrefs = "".join(f"<D:href>{COPY}e{n}.ics</D:href>" for n in range(50))
    body = (
        '<?xml version="1.0"?><C:calendar-multiget xmlns:D="DAV:"'
        ' xmlns:C="urn:ietf:params:xml:ns:caldav"><D:prop><D:getetag/></D:prop>'
        f"{hrefs}</C:calendar-multiget>"
    ).encode()
    mapped = textedit.map_prefix(davxml.parse(body), body, COPY, UPSTREAM)
    assert mapped == body.replace(COPY.encode(), UPSTREAM.encode())
