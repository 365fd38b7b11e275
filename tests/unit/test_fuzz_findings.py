"""Inputs the coverage-guided fuzzer (bench/fuzz_atheris.py) found, each once a crash or a
stall; now each must give davproxy's documented answer."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from lxml import etree
from yarl import URL

from davproxy.config import feed_url
from davproxy.dav import davxml
from davproxy.dav.paths import PathMap
from davproxy.dav.sync import positive_limit, token_revision
from davproxy.feeds import caldav_query
from davproxy.feeds.fetch import parse_retry_after
from davproxy.feeds.normal import fingerprint
from davproxy.feeds.split import split_feed
from davproxy.feeds.store import FeedSource
from davproxy.feeds.views import CALENDAR_DATA


@pytest.mark.parametrize(
    "feed",
    [
        b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:a\r\nSUMMARY:x\x00y\r\nEND:VEVENT\r\nEND:VCALENDAR",
        b"BEGIN:VCALENDAR\r\nNAME:r\x1cD\r\nBEGIN:VEVENT\r\nUID:a\r\nEND:VEVENT\r\nEND:VCALENDAR",
        b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:a\r\nDESCRIPTION:\x00\r\n folded\x07\r\n"
        b"END:VEVENT\r\nEND:VCALENDAR",
    ],
)
def test_control_characters_never_reach_the_xml_answers(feed: bytes) -> None:
    split = split_feed(feed)
    assert split.resources
    for resource in split.resources.values():
        davxml.serialize(davxml.element(CALENDAR_DATA, text=resource.text))  # must not raise
        assert fingerprint(resource.text) == resource.fingerprint
    if split.meta.name:
        davxml.element("{DAV:}displayname", text=split.meta.name)
    assert any(w.code == "control-characters" for w in split.warnings)


def test_folded_calendar_header_keeps_fingerprints_stable() -> None:
    feed = b"BEGIN:VCALENDAR\nVERSION:\n 2.0\nBEGIN:VEVENT\nUID:a\nEND:VEVENT\nEND:VCALENDAR\n"
    resource = split_feed(feed).resources["a"]
    assert fingerprint(resource.text) == resource.fingerprint


def _source(revision: int = 5) -> FeedSource:
    return FeedSource(
        1, "u", "u", "t0", None, None, None, None, "{}", "{}", revision, 0, "ok", "", 0,
        None, None, None, 0.0, None, 0, 0.0,
    )  # fmt: skip


@pytest.mark.parametrize("digits", ["²", "①", "٣", "1²"])
def test_unicode_digits_are_not_numbers(digits: str) -> None:
    assert token_revision(f"urn:x-davproxy:feed:t0-{digits}", _source()) is None
    assert positive_limit(digits) is None
    assert parse_retry_after(digits, 0.0) is None
    root = davxml.parse(
        f'<D:multistatus xmlns:D="DAV:"><D:response><D:status>HTTP/1.1 {digits}</D:status>'
        "</D:response></D:multistatus>".encode()
    )
    assert davxml.response_status(root) is None


def test_out_of_range_dates_are_ignored() -> None:
    assert parse_retry_after("2 Oct 5 7:2888888888", 0.0) is None


@pytest.mark.parametrize("text", ["//[]@", "http://[]@/x", "http://[:]:0#f", "webcal://[]@/x"])
def test_hostile_feed_urls_are_refused_not_raised(text: str) -> None:
    assert feed_url(text) is None


@pytest.mark.parametrize("href", ["p://@:r", "http://[]@/dav/x"])
def test_hostile_absolute_hrefs_pass_unmapped(href: str) -> None:
    paths = PathMap("/dav/", "/")
    assert paths.href_to_public(href, URL("http://127.0.0.1:5232"), "http://h") == href
    assert paths.href_to_upstream(href) == href


def _query(start: str, end: str) -> caldav_query.Query:
    return caldav_query.parse_filter(
        etree.fromstring(
            '<C:calendar-query xmlns:C="urn:ietf:params:xml:ns:caldav"><C:filter>'
            '<C:comp-filter name="VCALENDAR"><C:comp-filter name="VEVENT">'
            f'<C:time-range start="{start}" end="{end}"/></C:comp-filter></C:comp-filter>'
            "</C:filter></C:calendar-query>"
        )
    )


@pytest.mark.parametrize(
    ("dtstart", "rule", "expected"),
    [
        ("50000101T000000Z", "FREQ=DAILY", False),  # starts after the window: no expansion
        ("30000101T000000Z", "FREQ=WEEKLY", False),
        ("20000101T000000Z", "FREQ=MINUTELY", True),  # dense: matched by its bounds
        ("10000101T000000Z", "FREQ=DAILY", True),  # a millennium of days: by its bounds
    ],
)
def test_costly_recurrences_are_decided_quickly(dtstart: str, rule: str, expected: bool) -> None:
    text = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:r\r\nDTSTAMP:20240101T000000Z\r\n"
        f"DTSTART:{dtstart}\r\nRRULE:{rule}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    started = time.perf_counter()
    found = caldav_query.matches(_query("20240101T000000Z", "20240102T000000Z"), "VEVENT", text)
    assert found is expected
    assert time.perf_counter() - started < 0.5


def test_a_line_of_only_control_characters_vanishes() -> None:
    split = split_feed(b"BEGIN:VEVENT\r\x00\nEND:VEVENT")
    for resource in split.resources.values():
        assert fingerprint(resource.text) == resource.fingerprint


def test_a_broken_date_value_matches_no_filter() -> None:
    query = caldav_query.parse_filter(
        etree.fromstring(
            '<C:calendar-query xmlns:C="urn:ietf:params:xml:ns:caldav"><C:filter>'
            '<C:comp-filter name="VCALENDAR"><C:comp-filter name="VTODO">'
            '<C:prop-filter name="DUE"><C:time-range start="20240101T000000Z"/></C:prop-filter>'
            "</C:comp-filter></C:comp-filter></C:filter></C:calendar-query>"
        )
    )
    text = "BEGIN:VCALENDAR\r\nBEGIN:VTODO\r\nUID:t\r\nDUE:202301\r\nEND:VTODO\r\nEND:VCALENDAR\r\n"
    assert caldav_query.matches(query, "VTODO", text) is False


def test_a_first_line_that_looks_folded_stays_its_own_line() -> None:
    split = split_feed(b" BEGIN:VEVENT\nEND:VEVENT")
    for resource in split.resources.values():
        assert fingerprint(resource.text) == resource.fingerprint


def test_a_line_blank_once_controls_go_is_not_a_fold() -> None:
    split = split_feed(b"BEGiN:VEVENT\r\x00\tEND:VEVENT")
    for resource in split.resources.values():
        assert fingerprint(resource.text) == resource.fingerprint


def test_a_fold_onto_a_line_of_controls_is_refolded_cleanly() -> None:
    split = split_feed(b"BEGIN:VEVENT\r\x00\n END:VEVENT")
    for resource in split.resources.values():
        assert fingerprint(resource.text) == resource.fingerprint


#: issue 21: icalendar 7.3.2 raises AttributeError ("'list' object has no attribute
#: 'upper'") for a VALUE parameter of empty list items; davproxy caught only ValueError
EMPTY_VALUE_PARAMETER = b"BEGIN:VTODO\rE;VALUE=,\nEND:VTODO"


def _filter(inner: str, kind: str = "VTODO") -> caldav_query.Query:
    return caldav_query.parse_filter(
        etree.fromstring(
            '<C:calendar-query xmlns:C="urn:ietf:params:xml:ns:caldav"><C:filter>'
            f'<C:comp-filter name="VCALENDAR"><C:comp-filter name="{kind}">{inner}'
            "</C:comp-filter></C:comp-filter></C:filter></C:calendar-query>"
        )
    )


HOSTILE_QUERIES = [
    '<C:time-range start="20240101T000000Z" end="20250101T000000Z"/>',
    '<C:prop-filter name="E"/>',
    '<C:prop-filter name="E"><C:is-not-defined/></C:prop-filter>',
    '<C:prop-filter name="SUMMARY"><C:text-match negate-condition="yes">x</C:text-match></C:prop-filter>',
    '<C:comp-filter name="VALARM"><C:is-not-defined/></C:comp-filter>',
]


@pytest.mark.parametrize("inner", HOSTILE_QUERIES)
def test_an_empty_value_parameter_matches_no_filter(inner: str) -> None:
    (resource,) = split_feed(EMPTY_VALUE_PARAMETER).resources.values()
    assert caldav_query.matches(_filter(inner), resource.kind, resource.text) is False
    # the trivial filter needs no parsing: the object is still listed
    assert caldav_query.matches(_filter(""), resource.kind, resource.text) is True


@pytest.mark.parametrize(
    "line", ["SUMMARY;VALUE=,:x", "DTSTART;VALUE=,,:20240105T100000Z", "X-Y;VALUE=,:z"]
)
def test_empty_value_parameters_on_any_property(line: str) -> None:
    text = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:e\r\n"
        f"DTSTART:20240105T100000Z\r\n{line}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    for inner in HOSTILE_QUERIES:
        assert caldav_query.matches(_filter(inner, "VEVENT"), "VEVENT", text) is False


GOOD_EVENT = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:e\r\nSUMMARY:x\r\n"
    "DTSTART:20240105T100000Z\r\nRRULE:FREQ=WEEKLY;COUNT=3\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
)
IN_2024 = '<C:time-range start="20240101T000000Z" end="20250101T000000Z"/>'


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("icalendar.Calendar.from_ical", AttributeError("'list' object has no attribute 'upper'")),
        ("icalendar.Calendar.from_ical", RuntimeError("a future release")),
        ("icalendar.cal.Component.walk", KeyError("VEVENT")),
        ("recurring_ical_events.of", IndexError("a future release")),
    ],
)
def test_whatever_the_libraries_raise_matches_no_filter(
    monkeypatch: pytest.MonkeyPatch, target: str, error: Exception
) -> None:
    """Not only today's exception types: any a release of the libraries may raise."""
    query = _filter(IN_2024, "VEVENT")
    assert caldav_query.matches(query, "VEVENT", GOOD_EVENT) is True

    def broken(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(target, broken)
    assert caldav_query.matches(query, "VEVENT", GOOD_EVENT) is False


def test_a_library_failing_mid_expansion_matches_no_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    import recurring_ical_events

    def broken_after(self: object, start: object) -> Iterator[object]:
        raise AttributeError("raised while expanding")
        yield  # a generator, like the library's own

    monkeypatch.setattr(recurring_ical_events.CalendarQuery, "after", broken_after)
    assert caldav_query.matches(_filter(IN_2024, "VEVENT"), "VEVENT", GOOD_EVENT) is False


@pytest.mark.parametrize("inner", [IN_2024, '<C:prop-filter name="SUMMARY"/>'])
def test_davproxys_own_bugs_are_not_hidden(monkeypatch: pytest.MonkeyPatch, inner: str) -> None:
    """Only the library calls are guarded: a bug in davproxy's own matching code still
    raises (and so is a 500 with a traceback in the log), it is no silent "no match"."""

    def buggy(*args: object) -> bool:
        raise AttributeError("davproxy's own bug")

    monkeypatch.setattr(caldav_query, "_instances", buggy)
    monkeypatch.setattr(caldav_query, "_prop_matches", buggy)
    with pytest.raises(AttributeError, match="davproxy's own bug"):
        caldav_query.matches(_filter(inner, "VEVENT"), "VEVENT", GOOD_EVENT)


@pytest.mark.parametrize("error", [TypeError("x"), AttributeError("y"), RecursionError()])
def test_whatever_lxml_raises_is_an_xml_error(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(davxml.etree, "fromstring", broken)
    with pytest.raises(davxml.XmlError, match=type(error).__name__):
        davxml.parse(b"<a/>")
