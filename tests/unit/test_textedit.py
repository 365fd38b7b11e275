"""The text edit of a copy's REPORT answer means exactly what the tree edit means.

``dav/textedit.py`` rewrites a multistatus on its text (hrefs by prefix, each ETag by
itself) where nobody has per-user data of the copy; wherever it cannot be sure, it
refuses and the tree is edited.  Generated answers (namespace prefixes other than
``D``, the default namespace, hrefs with escapes and percent-encoding, prefixes that
are substrings of others, CDATA, comments, attributes, sync tokens, members that are
gone) must come out of both paths as the same document (canonical XML).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from yarl import URL

from davproxy.dav import davxml, textedit
from davproxy.dav.paths import PathMap
from davproxy.sharing.peruser_store import PerUserStore
from davproxy.sharing.peruser_view import View
from davproxy.store import Store
from davproxy.store.records import Share
from davproxy.upstream.proxy import Forward, _edit_tree

CALDAV = "urn:ietf:params:xml:ns:caldav"
OWNER, COPY = "/alice/cal0/", "/bob/copy0/"


@pytest.fixture(scope="module")
def view(tmp_path_factory: pytest.TempPathFactory) -> Iterator[View]:
    store = Store.open(Path(tmp_path_factory.mktemp("textedit")) / "store.sqlite3")
    share = Share(1, "up", "alice", "alice/cal0/", "calendar", "bob", "mailto:bob@example.org",
                  "read-write", "accepted", "invite-1", "", "", "", "bob/copy0/", 0.0, 0.0)  # fmt: skip
    copy = PathMap(COPY, OWNER)
    origin = URL("http://127.0.0.1:5232")
    made = View.__new__(View)
    made.share, made.store, made.copy_key, made.tag = share, PerUserStore(store), COPY, "t"
    made.spec = Forward(
        upstream=None,  # type: ignore[arg-type]  # only the edit is exercised
        path=OWNER + "?x=1",
        response_hrefs=lambda href: copy.href_to_public(href, origin, "http://proxy.test"),
    )
    yield made
    store.close()


def both(view: View, body: bytes) -> tuple[bytes, bytes | None]:
    """(the tree edit's answer, the text edit's or None where it refused)."""
    tree = replace(view.spec, edit_tree=lambda root: view.edit_tree(root, (), 7))
    expected = _edit_tree(body, tree)
    try:
        root = davxml.parse(body)
    except davxml.XmlError:
        return expected, None
    try:
        return expected, view.edit_text(root, body, 7)
    except textedit.Unsupported:
        return expected, None


def canonical(body: bytes) -> bytes:
    root = etree.fromstring(body, etree.XMLParser(remove_comments=True, remove_pis=True))
    return etree.tostring(root, method="c14n", with_comments=False)


MEMBERS = st.sampled_from(
    [
        "e1.ics",
        "x.ics",
        "caf\u00e9.ics",
        "e2.ics",
        "e%201.ics",
        "a&amp;b.ics",
        "sub/",
        "",
        "e 1.ics",
    ]
)
HREF_PREFIXES = st.sampled_from(
    [*[OWNER] * 12, "/alice/cal01/", "/alice/cal0", "http://127.0.0.1:5232/alice/cal0/"]
)
ETAGS = st.sampled_from(
    ['"abc"', '"abc"', '"def"', "&quot;abc&quot;", '  "a b"  ', "", '"x&amp;y"', '<![CDATA["c"]]>']
)
DATA = st.sampled_from(
    ["BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n", "BEGIN:VEVENT\nEND:VEVENT\n", "BEGIN:VCALENDAR&#13;\nEND:VCALENDAR", "<![CDATA[a<b]]>",
     "BEGIN:VALARM", "plain &lt;text&gt;", ""]
)  # fmt: skip


@st.composite
def answers(draw: st.DrawFn) -> bytes:
    d = draw(st.sampled_from(["D:", "d:", "", "x:"]))
    c = draw(st.sampled_from(["C:", "cal:"]))
    dns = f'xmlns{":" + d[:-1] if d else ""}="DAV:"'
    cns = f'xmlns:{c[:-1]}="{CALDAV}"'
    responses = []
    for _ in range(draw(st.integers(0, 4))):
        href = draw(HREF_PREFIXES) + draw(MEMBERS)
        attribute = draw(st.sampled_from(["", "", ' a="1>2"']))
        parts = [f"<{d}href{attribute}>{href}</{d}href>"]
        if draw(st.integers(0, 12)) == 0:
            parts.append(f"<{d}status>HTTP/1.1 404 Not Found</{d}status>")
        else:
            props = [f"<{d}getetag>{draw(ETAGS)}</{d}getetag>"]
            if draw(st.booleans()):
                props.append(f"<{c}calendar-data>{draw(DATA)}</{c}calendar-data>")
            if draw(st.integers(0, 12)) == 0:
                props.append(f"<{d}owner><{d}href>/alice/</{d}href></{d}owner>")
            if draw(st.integers(0, 6)) == 0:
                props.append(f"<{d}getetag/>")
            if draw(st.integers(0, 16)) == 0:
                props.append("<!-- a comment -->")
            parts.append(
                f"<{d}propstat><{d}prop>{''.join(props)}</{d}prop>"
                f"<{d}status>HTTP/1.1 200 OK</{d}status></{d}propstat>"
            )
        if draw(st.integers(0, 16)) == 0:
            parts.reverse()
        responses.append(f"<{d}response>{''.join(parts)}</{d}response>")
    if draw(st.booleans()):
        responses.append(f"<{d}sync-token>{draw(st.sampled_from(['tok-1', ' t&amp;2 ', '']))}"
                         f"</{d}sync-token>")  # fmt: skip
    declaration = draw(st.sampled_from(["", '<?xml version="1.0" encoding="utf-8"?>\n',
                                        "<?xml version='1.0'?>"]))  # fmt: skip
    line_end = draw(st.sampled_from(["", "\r\n"]))
    document = (
        f"{declaration}<{d}multistatus {dns} {cns}>{line_end.join(responses)}</{d}multistatus>"
    )
    return document.encode()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=answers())
def test_text_edit_means_what_the_tree_edit_means(view: View, body: bytes) -> None:
    expected, edited = both(view, body)
    if edited is not None:
        assert canonical(edited) == canonical(expected)


def test_a_plain_multiget_answer_takes_the_text_path(view: View) -> None:
    body = (
        '<?xml version="1.0" encoding="utf-8"?>\n<multistatus xmlns="DAV:" '
        f'xmlns:C="{CALDAV}"><response><href>{OWNER}e1.ics</href><propstat><prop>'
        '<getetag>"e1"</getetag><C:calendar-data>BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n'
        "</C:calendar-data></prop><status>HTTP/1.1 200 OK</status></propstat></response>"
        "</multistatus>"
    ).encode()
    expected, edited = both(view, body)
    assert edited is not None
    assert canonical(edited) == canonical(expected)
    assert f"<href>{COPY}e1.ics</href>".encode() in edited
    assert b"\r\n" in edited  # everything else as the upstream wrote it


@pytest.mark.parametrize(
    "body",
    [
        f'<multistatus xmlns="DAV:"><response><href>{OWNER}</href></response></multistatus>',
        f'<multistatus xmlns="DAV:"><response><href>{OWNER}a/</href></response></multistatus>',
        f'<multistatus xmlns="DAV:"><response><href>{OWNER}a%20b</href></response></multistatus>',
        '<multistatus xmlns="DAV:"><response><href xmlns="DAV:">/x</href></response></multistatus>',
        f'<multistatus xmlns="DAV:"><!-- <href>{OWNER}a</href> --><response><href>{OWNER}a b'
        "</href></response></multistatus>",
        f'<multistatus xmlns="DAV:"><response><href>{OWNER}a</href><propstat><prop><getetag>'
        'x<y xmlns="DAV:"/></getetag></prop></propstat></response></multistatus>',
        f'<multistatus xmlns="DAV:"><response><href>{OWNER}a</href><propstat><prop><getetag>'
        "BEGIN:VALARM</getetag></prop></propstat></response></multistatus>",
    ],
)
def test_what_the_text_path_refuses(view: View, body: str) -> None:
    expected, edited = both(view, body.encode())
    assert edited is None
    assert expected  # the tree edit answers it
