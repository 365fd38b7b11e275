"""CALDAV:calendar-query filters (davproxy.feeds.caldav_query): parsing and matching stored objects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

from davproxy.dav.davxml import CALDAV
from davproxy.dav.errors import DavError
from davproxy.feeds.caldav_query import (
    SUPPORTED_FILTER,
    VALID_FILTER,
    CompFilter,
    PropFilter,
    Query,
    matches,
    parse_filter,
)

NS = 'xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav"'


def report(inner: str) -> etree._Element:
    return etree.fromstring(
        f"<C:calendar-query {NS}><D:prop><D:getetag/></D:prop>{inner}</C:calendar-query>"
    )


def query(inner: str) -> Query:
    """A filter whose VCALENDAR comp-filter holds ``inner``."""
    return parse_filter(
        report(f'<C:filter><C:comp-filter name="VCALENDAR">{inner}</C:comp-filter></C:filter>')
    )


def events_in(start: str, end: str | None = None, kind: str = "VEVENT") -> Query:
    end_attr = f' end="{end}"' if end else ""
    return query(
        f'<C:comp-filter name="{kind}"><C:time-range start="{start}"{end_attr}/></C:comp-filter>'
    )


def prop(xml: str, kind: str = "VEVENT") -> Query:
    return query(f'<C:comp-filter name="{kind}">{xml}</C:comp-filter>')


def ics(*components: str) -> str:
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//test//query//EN"]
    for component in components:
        lines += component.strip().splitlines()
    lines.append("END:VCALENDAR")
    return "\r\n".join(lines) + "\r\n"


def vevent(*props: str, uid: str = "ev@x") -> str:
    return "\n".join(
        ["BEGIN:VEVENT", f"UID:{uid}", "DTSTAMP:20260101T000000Z", *props, "END:VEVENT"]
    )


# 2026-01-05 (a Monday) 09:00-10:00 UTC
PLAIN = ics(
    vevent(
        "DTSTART:20260105T090000Z",
        "DTEND:20260105T100000Z",
        "SUMMARY:Team Meeting",
        "BEGIN:VALARM",
        "ACTION:DISPLAY",
        "TRIGGER:-PT15M",
        "DESCRIPTION:soon",
        "END:VALARM",
    )
)
# every Monday 09:00-10:00 UTC from 2026-01-05; 2026-06-01 excluded; 2026-06-08 moved
WEEKLY = ics(
    vevent(
        "DTSTART:20260105T090000Z",
        "DTEND:20260105T100000Z",
        "RRULE:FREQ=WEEKLY",
        "EXDATE:20260601T090000Z",
        "SUMMARY:Weekly",
        uid="weekly@x",
    ),
    vevent(
        "RECURRENCE-ID:20260608T090000Z",
        "DTSTART:20260610T140000Z",
        "DTEND:20260610T150000Z",
        "SUMMARY:Weekly (moved)",
        uid="weekly@x",
    ),
)
ALL_DAY = ics(vevent("DTSTART;VALUE=DATE:20260310", "DTEND;VALUE=DATE:20260311", "SUMMARY:Holiday"))
TODO = ics(
    "\n".join(["BEGIN:VTODO", "UID:t@x", "DTSTAMP:20260101T000000Z", "SUMMARY:Chores", "END:VTODO"])
)


# --- parsing --------------------------------------------------------------------------------


def raises(xml: etree._Element) -> DavError:
    with pytest.raises(DavError) as caught:
        parse_filter(xml)
    return caught.value


def test_missing_filter_is_400_valid_filter() -> None:
    error = raises(report(""))
    assert (error.status, error.condition) == (400, VALID_FILTER)
    assert error.condition == "{urn:ietf:params:xml:ns:caldav}valid-filter"


@pytest.mark.parametrize(
    "inner",
    [
        "<C:filter/>",  # no comp-filter
        '<C:filter><C:comp-filter name="VEVENT"/></C:filter>',  # not VCALENDAR at the top
        '<C:filter><C:comp-filter name="VCALENDAR"/><C:comp-filter name="VCALENDAR"/></C:filter>',
        '<C:filter><C:comp-filter name="VCALENDAR"><C:comp-filter/></C:comp-filter></C:filter>',
    ],
)
def test_malformed_filters_are_400_valid_filter(inner: str) -> None:
    error = raises(report(inner))
    assert (error.status, error.condition) == (400, VALID_FILTER)


def test_param_filter_is_403_supported_filter() -> None:
    xml = (
        '<C:comp-filter name="VEVENT"><C:prop-filter name="ATTENDEE">'
        '<C:param-filter name="PARTSTAT"><C:text-match>NEEDS-ACTION</C:text-match>'
        "</C:param-filter></C:prop-filter></C:comp-filter>"
    )
    with pytest.raises(DavError) as caught:
        query(xml)
    assert (caught.value.status, caught.value.condition) == (403, SUPPORTED_FILTER)


@pytest.mark.parametrize(
    "inner",
    [
        '<C:comp-filter name="VEVENT"/><C:comp-filter name="VTODO"/>',  # two kinds
        '<C:prop-filter name="PRODID"/>',  # a filter on VCALENDAR itself
        '<C:time-range start="20260101T000000Z"/>',
    ],
)
def test_unsupported_shapes_are_403_supported_filter(inner: str) -> None:
    with pytest.raises(DavError) as caught:
        query(inner)
    assert (caught.value.status, caught.value.condition) == (403, SUPPORTED_FILTER)


def test_unknown_collation_is_403_supported_collation() -> None:
    with pytest.raises(DavError) as caught:
        prop(
            '<C:prop-filter name="SUMMARY"><C:text-match collation="i;klingon">x</C:text-match>'
            "</C:prop-filter>"
        )
    assert caught.value.status == 403
    assert caught.value.condition == f"{{{CALDAV}}}supported-collation"


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("20260105", "20260106T000000Z"),  # a DATE, not a date-time
        ("2026-01-05T00:00:00Z", None),  # extended ISO 8601
        ("20260105T000000", None),  # floating, not UTC
        ("20260105T000000+0100", None),
        ("20260105T000000Z", "tomorrow"),
        ("20260106T000000Z", "20260105T000000Z"),  # end before start
        ("20260105T000000Z", "20260105T000000Z"),  # empty range
    ],
)
def test_bad_time_range_is_400_valid_filter(start: str, end: str | None) -> None:
    with pytest.raises(DavError) as caught:
        events_in(start, end)
    assert (caught.value.status, caught.value.condition) == (400, VALID_FILTER)


def test_time_range_needs_start_or_end() -> None:
    with pytest.raises(DavError) as caught:
        query('<C:comp-filter name="VEVENT"><C:time-range/></C:comp-filter>')
    assert (caught.value.status, caught.value.condition) == (400, VALID_FILTER)


def test_parsed_structure() -> None:
    parsed = query(
        '<C:comp-filter name="vevent"><C:time-range start="20260101T000000Z"/>'
        '<C:prop-filter name="summary"><C:text-match negate-condition="yes">x</C:text-match>'
        '</C:prop-filter><C:prop-filter name="LOCATION"><C:is-not-defined/></C:prop-filter>'
        "</C:comp-filter>"
    )
    assert parsed.kind == "VEVENT"
    assert parsed.needs_parsing
    comp = parsed.comp
    assert isinstance(comp, CompFilter) and comp.time_range is not None
    assert comp.time_range.start.isoformat() == "2026-01-01T00:00:00+00:00"
    assert comp.time_range.end.year == 9999  # open end
    assert comp.props[0] == PropFilter("SUMMARY", text=comp.props[0].text)
    assert comp.props[0].text is not None and comp.props[0].text.negate
    assert comp.props[1] == PropFilter("LOCATION", undefined=True)


def test_vcalendar_alone_matches_everything_and_its_negation_nothing() -> None:
    anything = query("")
    assert (anything.kind, anything.comp, anything.needs_parsing) == (None, None, False)
    assert matches(anything, "VEVENT", PLAIN) and matches(anything, "VTODO", TODO)
    nothing = query("<C:is-not-defined/>")
    assert nothing.negated_calendar
    assert not matches(nothing, "VEVENT", PLAIN) and not matches(nothing, "VTODO", TODO)


# --- component kind ---------------------------------------------------------------------------


def test_comp_filter_selects_the_kind() -> None:
    events = query('<C:comp-filter name="VEVENT"/>')
    assert not events.needs_parsing
    assert matches(events, "VEVENT", PLAIN)
    assert not matches(events, "VTODO", TODO)
    todos = query('<C:comp-filter name="VTODO"/>')
    assert matches(todos, "VTODO", TODO)
    assert not matches(todos, "VEVENT", PLAIN)


def test_comp_filter_is_not_defined() -> None:
    no_events = query('<C:comp-filter name="VEVENT"><C:is-not-defined/></C:comp-filter>')
    assert not matches(no_events, "VEVENT", PLAIN)
    assert matches(no_events, "VTODO", TODO)


def test_nested_valarm_comp_filter() -> None:
    with_alarm = prop('<C:comp-filter name="VALARM"/>')
    without_alarm = prop('<C:comp-filter name="VALARM"><C:is-not-defined/></C:comp-filter>')
    assert matches(with_alarm, "VEVENT", PLAIN)
    assert not matches(with_alarm, "VEVENT", ALL_DAY)
    assert not matches(without_alarm, "VEVENT", PLAIN)
    assert matches(without_alarm, "VEVENT", ALL_DAY)


# --- time ranges ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "hit"),
    [
        ("20260105T000000Z", "20260106T000000Z", True),  # the whole day
        ("20260105T093000Z", "20260105T094500Z", True),  # inside the event
        ("20260105T095959Z", "20260105T100000Z", True),  # its last second
        ("20260105T080000Z", "20260105T090001Z", True),  # its first second
        ("20260105T080000Z", "20260105T090000Z", False),  # ends where the event starts
        ("20260105T100000Z", "20260105T110000Z", False),  # starts where the event ends
        ("20260106T000000Z", None, False),  # open-ended, after it
        ("20251201T000000Z", None, True),  # open-ended, before it
    ],
)
def test_time_range_on_a_plain_event(start: str, end: str | None, hit: bool) -> None:
    assert matches(events_in(start, end), "VEVENT", PLAIN) is hit


def test_time_range_with_only_an_end() -> None:
    before = query(
        '<C:comp-filter name="VEVENT"><C:time-range end="20260105T090000Z"/></C:comp-filter>'
    )
    assert not matches(before, "VEVENT", PLAIN)
    through = query(
        '<C:comp-filter name="VEVENT"><C:time-range end="20260105T090100Z"/></C:comp-filter>'
    )
    assert matches(through, "VEVENT", PLAIN)


def test_weekly_rule_matches_a_window_months_later() -> None:
    assert matches(events_in("20260615T000000Z", "20260616T000000Z"), "VEVENT", WEEKLY)  # Mon
    assert not matches(events_in("20260616T000000Z", "20260617T000000Z"), "VEVENT", WEEKLY)
    assert matches(events_in("20270104T085900Z", "20270104T090100Z"), "VEVENT", WEEKLY)
    assert not matches(events_in("20251229T000000Z", "20251230T000000Z"), "VEVENT", WEEKLY)


def test_open_ended_time_range_on_an_endless_rule_answers_quickly() -> None:
    # DAVx5 and others send a time-range with only a start ("events since N days ago");
    # run in a child process so that a hang costs this test 5 s, not the whole suite
    code = (
        "from tests.unit.test_caldav_query import WEEKLY, events_in, matches\n"
        "assert matches(events_in('20260601T000000Z'), 'VEVENT', WEEKLY)\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, timeout=5, check=True)


def test_exdate_instance_does_not_match() -> None:
    assert not matches(events_in("20260601T000000Z", "20260602T000000Z"), "VEVENT", WEEKLY)
    assert matches(events_in("20260525T000000Z", "20260526T000000Z"), "VEVENT", WEEKLY)


def test_overridden_instance_moved_out_of_a_window() -> None:
    # 2026-06-08 09:00 was moved to Wednesday 2026-06-10 14:00
    assert not matches(events_in("20260608T000000Z", "20260609T000000Z"), "VEVENT", WEEKLY)
    assert matches(events_in("20260610T000000Z", "20260611T000000Z"), "VEVENT", WEEKLY)
    assert not matches(events_in("20260610T000000Z", "20260610T140000Z"), "VEVENT", WEEKLY)


def test_all_day_event() -> None:
    assert matches(events_in("20260310T120000Z", "20260310T130000Z"), "VEVENT", ALL_DAY)
    assert matches(events_in("20260310T235900Z", "20260311T000000Z"), "VEVENT", ALL_DAY)
    assert not matches(events_in("20260311T000000Z", "20260311T010000Z"), "VEVENT", ALL_DAY)
    assert not matches(events_in("20260309T230000Z", "20260310T000000Z"), "VEVENT", ALL_DAY)


def test_time_range_needs_the_right_kind() -> None:
    assert not matches(events_in("20260105T000000Z", "20260106T000000Z"), "VTODO", TODO)


def test_unparsable_text_does_not_match_a_filter_that_needs_parsing() -> None:
    assert not matches(events_in("20260105T000000Z"), "VEVENT", "this is not iCalendar")


# --- properties -------------------------------------------------------------------------------


def text_match(value: str, name: str = "SUMMARY", extra: str = "") -> Query:
    return prop(
        f'<C:prop-filter name="{name}"><C:text-match{extra}>{value}</C:text-match></C:prop-filter>'
    )


@pytest.mark.parametrize(
    ("needle", "hit"),
    [
        ("Team", True),
        ("team meeting", True),  # i;ascii-casemap: case-insensitive
        ("EAM MEE", True),  # a substring
        ("Meetings", False),
        ("standup", False),
    ],
)
def test_text_match_is_a_case_insensitive_substring(needle: str, hit: bool) -> None:
    assert matches(text_match(needle), "VEVENT", PLAIN) is hit


@pytest.mark.parametrize(("needle", "hit"), [("team", False), ("standup", True)])
def test_text_match_negate_condition(needle: str, hit: bool) -> None:
    negated = text_match(needle, extra=' negate-condition="yes"')
    assert matches(negated, "VEVENT", PLAIN) is hit


def test_text_match_on_a_missing_property_never_matches() -> None:
    assert not matches(text_match("x", name="LOCATION"), "VEVENT", PLAIN)
    negated = text_match("x", name="LOCATION", extra=' negate-condition="yes"')
    assert not matches(negated, "VEVENT", PLAIN)  # RFC 4791 §9.7.5: the property must exist


def test_text_match_octet_collation_is_case_sensitive() -> None:
    octet = text_match("team", extra=' collation="i;octet"')
    assert not matches(octet, "VEVENT", PLAIN)  # SUMMARY is "Team Meeting"


def test_prop_filter_is_not_defined() -> None:
    no_location = prop('<C:prop-filter name="LOCATION"><C:is-not-defined/></C:prop-filter>')
    no_summary = prop('<C:prop-filter name="SUMMARY"><C:is-not-defined/></C:prop-filter>')
    assert matches(no_location, "VEVENT", PLAIN)
    assert not matches(no_summary, "VEVENT", PLAIN)
    with_location = ics(vevent("DTSTART:20260105T090000Z", "LOCATION:Room 1"))
    assert not matches(no_location, "VEVENT", with_location)


def test_prop_filter_without_a_condition_tests_presence() -> None:
    has_summary = prop('<C:prop-filter name="SUMMARY"/>')
    has_location = prop('<C:prop-filter name="LOCATION"/>')
    assert matches(has_summary, "VEVENT", PLAIN)
    assert not matches(has_location, "VEVENT", PLAIN)


def test_every_prop_filter_must_hold() -> None:
    both = prop(
        '<C:prop-filter name="SUMMARY"><C:text-match>team</C:text-match></C:prop-filter>'
        '<C:prop-filter name="LOCATION"><C:is-not-defined/></C:prop-filter>'
    )
    assert matches(both, "VEVENT", PLAIN)
    clash = prop(
        '<C:prop-filter name="SUMMARY"><C:text-match>team</C:text-match></C:prop-filter>'
        '<C:prop-filter name="SUMMARY"><C:text-match>holiday</C:text-match></C:prop-filter>'
    )
    assert not matches(clash, "VEVENT", PLAIN)


def test_prop_filter_sees_overrides_too() -> None:
    # the moved instance's SUMMARY lives only in the override component
    assert matches(text_match("(moved)"), "VEVENT", WEEKLY)


def test_prop_time_range_on_dtstart() -> None:
    inside = prop(
        '<C:prop-filter name="DTSTART"><C:time-range start="20260105T090000Z" '
        'end="20260105T090001Z"/></C:prop-filter>'
    )
    after = prop(
        '<C:prop-filter name="DTSTART"><C:time-range start="20260105T090001Z"/></C:prop-filter>'
    )
    assert matches(inside, "VEVENT", PLAIN)
    assert not matches(after, "VEVENT", PLAIN)


def test_time_range_and_text_match_combined() -> None:
    combined = prop(
        '<C:time-range start="20260105T000000Z" end="20260106T000000Z"/>'
        '<C:prop-filter name="SUMMARY"><C:text-match>meeting</C:text-match></C:prop-filter>'
    )
    assert matches(combined, "VEVENT", PLAIN)
    assert not matches(combined, "VEVENT", ALL_DAY)
