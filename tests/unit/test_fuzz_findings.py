"""Inputs the coverage-guided fuzzer (bench/fuzz_atheris.py) found, each once a crash or a
stall; now each must give davproxy's documented answer."""

from __future__ import annotations

import time

import pytest
from lxml import etree
from yarl import URL

from davproxy.config import feed_url
from davproxy.dav import davxml
from davproxy.dav.paths import PathMap
from davproxy.dav.sync import positive_limit, token_revision
from davproxy.feeds import caldav_query
from davproxy.feeds.fetch import parse_retry_after
from davproxy.feeds.split import fingerprint, split_feed
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
