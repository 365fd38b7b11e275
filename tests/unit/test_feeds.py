"""Feed splitting, fingerprinting and diffing (davproxy.feeds.split): small hand-written feeds."""

from __future__ import annotations

import hashlib
import re

import pytest

from davproxy.feeds.lines import FeedWarning
from davproxy.feeds.normal import (
    Diff,
    diff,
    fingerprint,
    href_for,
    parse_duration_seconds,
    plausible,
)
from davproxy.feeds.split import split_feed

HEAD = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//Example//Feed//EN"]
TAIL = ["END:VCALENDAR"]


def ics(*lines: str, nl: str = "\r\n") -> bytes:
    return nl.join([*HEAD, *lines, *TAIL, ""]).encode("utf-8")


def crlf(*lines: str) -> str:
    return "\r\n".join([*lines, ""])


def event(uid: str, *extra: str, stamp: str = "20240101T000000Z") -> list[str]:
    return ["BEGIN:VEVENT", f"UID:{uid}", f"DTSTAMP:{stamp}", *extra, "END:VEVENT"]


def wrap(*lines: str) -> str:
    return crlf(*HEAD, *lines, *TAIL)


def codes(warnings: tuple[FeedWarning, ...]) -> list[str]:
    return [w.code for w in warnings]


def test_single_event_exact_text_and_fields() -> None:
    split = split_feed(ics(*event("a@x", "DTSTART:20240102T100000Z", "SUMMARY:A")))
    assert list(split.resources) == ["a@x"]
    res = split.resources["a@x"]
    assert res.text == wrap(*event("a@x", "DTSTART:20240102T100000Z", "SUMMARY:A"))
    assert res.kind == "VEVENT"
    assert res.master is True
    assert res.recurrence_ids == ()
    assert res.tzids == ()
    assert res.href == href_for("a@x")
    assert res.fingerprint == fingerprint(res.text)
    assert split.warnings == ()
    assert split.complete is True


def test_folded_lines_kept_as_sent_and_fingerprint_ignores_folding() -> None:
    folded = ["DESCRIPTION:a long descr", " iption that was", "\tfolded"]
    split = split_feed(ics(*event("f@x", *folded)))
    res = split.resources["f@x"]
    # the origin's physical lines are served unchanged
    assert res.text == wrap(*event("f@x", *folded))
    unfolded = wrap(*event("f@x", "DESCRIPTION:a long description that wasfolded"))
    assert fingerprint(unfolded) == res.fingerprint


def test_fold_inside_a_utf8_sequence_is_unfolded_on_octets() -> None:
    # RFC 5545 §3.1: a naive folder may split "é" (C3 A9) across the fold
    raw = b"\r\n".join(
        [
            *(h.encode() for h in HEAD),
            b"BEGIN:VEVENT",
            b"UID:u@x",
            b"SUMMARY:caf\xc3",
            b" \xa9 ok",
            b"END:VEVENT",
            b"END:VCALENDAR",
            b"",
        ]
    )
    split = split_feed(raw)
    res = split.resources["u@x"]
    assert "SUMMARY:café ok\r\n" in res.text
    assert split.warnings == ()


def test_master_and_overrides_grouped_in_one_resource() -> None:
    master = event("r@x", "DTSTART:20240101T090000Z", "RRULE:FREQ=DAILY;COUNT=5", "SUMMARY:M")
    o1 = event("r@x", "RECURRENCE-ID:20240102T090000Z", "SUMMARY:O1")
    o2 = event("r@x", "RECURRENCE-ID;RANGE=THISANDFUTURE:20240104T090000Z", "SUMMARY:O2")
    other = event("b@x", "SUMMARY:B")
    # overrides before the master and interleaved with another object
    split = split_feed(ics(*o1, *other, *master, *o2))
    assert sorted(split.resources) == ["b@x", "r@x"]
    res = split.resources["r@x"]
    assert res.text == wrap(*master, *o1, *o2)
    assert res.master is True
    assert res.recurrence_ids == ("20240102T090000Z", "20240104T090000Z")
    assert split.warnings == ()


def test_override_only_object_is_its_own_resource() -> None:
    only = event("o@x", "RECURRENCE-ID:20240301T100000Z", "SUMMARY:moved")
    split = split_feed(ics(*only))
    res = split.resources["o@x"]
    assert res.master is False
    assert res.recurrence_ids == ("20240301T100000Z",)
    assert res.text == wrap(*only)
    assert split.warnings == ()


TZ_BERLIN = [
    "BEGIN:VTIMEZONE",
    "TZID:Europe/Berlin",
    "BEGIN:STANDARD",
    "DTSTART:19701025T030000",
    "TZOFFSETFROM:+0200",
    "TZOFFSETTO:+0100",
    "END:STANDARD",
    "END:VTIMEZONE",
]
TZ_NY = [
    "BEGIN:VTIMEZONE",
    "TZID:America/New_York",
    "BEGIN:STANDARD",
    "DTSTART:19701101T020000",
    "TZOFFSETFROM:-0400",
    "TZOFFSETTO:-0500",
    "END:STANDARD",
    "END:VTIMEZONE",
]


def test_each_resource_gets_only_the_timezones_it_references() -> None:
    ber = event("ber@x", "DTSTART;TZID=Europe/Berlin:20240102T100000")
    ny = event("ny@x", 'DTSTART;TZID="America/New_York":20240102T100000')
    utc = event("utc@x", "DTSTART:20240102T100000Z")
    split = split_feed(ics(*TZ_BERLIN, *TZ_NY, *ber, *ny, *utc))
    assert split.resources["ber@x"].text == wrap(*TZ_BERLIN, *ber)
    assert split.resources["ny@x"].text == wrap(*TZ_NY, *ny)
    assert split.resources["utc@x"].text == wrap(*utc)
    assert split.resources["ber@x"].tzids == ("Europe/Berlin",)
    assert split.resources["ny@x"].tzids == ("America/New_York",)
    assert set(split.timezones) == {"Europe/Berlin", "America/New_York"}
    assert split.timezones["Europe/Berlin"] == crlf(*TZ_BERLIN)
    assert split.warnings == ()


def test_override_timezone_and_exdate_references_count() -> None:
    master = event("r@x", "DTSTART:20240101T090000Z", "EXDATE;TZID=Europe/Berlin:20240103T100000")
    o1 = event("r@x", "RECURRENCE-ID;TZID=America/New_York:20240102T040000")
    split = split_feed(ics(*TZ_NY, *TZ_BERLIN, *master, *o1))
    res = split.resources["r@x"]
    assert res.tzids == ("Europe/Berlin", "America/New_York")
    # zones in feed order
    assert res.text == wrap(*TZ_NY, *TZ_BERLIN, *master, *o1)


def test_missing_timezone_passed_through_and_reported() -> None:
    ev = event("m@x", "DTSTART;TZID=Mars/Olympus:20240102T100000")
    split = split_feed(ics(*ev))
    res = split.resources["m@x"]
    assert res.text == wrap(*ev)
    assert res.missing_tzids == ("Mars/Olympus",)
    assert split.warnings == (FeedWarning("missing-timezone", 4, "Mars/Olympus"),)


def test_method_stripped_and_calendar_properties_become_metadata() -> None:
    raw = ics(
        "METHOD:PUBLISH",
        "CALSCALE:GREGORIAN",
        "X-WR-CALNAME:Team\\, Berlin",
        "X-WR-CALDESC:Line one\\nline two",
        "X-APPLE-CALENDAR-COLOR:#FF0000",
        "X-WR-TIMEZONE:Europe/Berlin",
        "REFRESH-INTERVAL;VALUE=DURATION:PT4H",
        "X-PUBLISHED-TTL:PT1H",
        *event("a@x", "SUMMARY:A"),
    )
    split = split_feed(raw)
    res = split.resources["a@x"]
    assert res.text == crlf(
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//Example//Feed//EN",
        "CALSCALE:GREGORIAN",
        *event("a@x", "SUMMARY:A"),
        "END:VCALENDAR",
    )
    meta = split.meta
    assert meta.name == "Team, Berlin"
    assert meta.description == "Line one\nline two"
    assert meta.color == "#FF0000"
    assert meta.timezone == "Europe/Berlin"
    assert meta.refresh_seconds == 4 * 3600  # REFRESH-INTERVAL wins over X-PUBLISHED-TTL
    assert meta.header == ("VERSION:2.0", "PRODID:-//Example//Feed//EN", "CALSCALE:GREGORIAN")
    assert meta.properties == (
        "X-WR-CALNAME:Team\\, Berlin",
        "X-WR-CALDESC:Line one\\nline two",
        "X-APPLE-CALENDAR-COLOR:#FF0000",
        "X-WR-TIMEZONE:Europe/Berlin",
        "REFRESH-INTERVAL;VALUE=DURATION:PT4H",
        "X-PUBLISHED-TTL:PT1H",
    )


def test_rfc7986_name_and_colour_preferred_and_ttl_fallback() -> None:
    raw = ics("NAME:New", "X-WR-CALNAME:Old", "COLOR:teal", "X-PUBLISHED-TTL:P1D")
    meta = split_feed(raw).meta
    assert (meta.name, meta.color, meta.refresh_seconds) == ("New", "teal", 86400)


def test_bad_refresh_interval_is_reported_not_used() -> None:
    split = split_feed(ics("REFRESH-INTERVAL;VALUE=DURATION:soon"))
    assert split.meta.refresh_seconds is None
    assert codes(split.warnings) == ["bad-refresh"]


def test_missing_header_gets_defaults() -> None:
    raw = crlf("BEGIN:VCALENDAR", *event("a@x"), "END:VCALENDAR").encode()
    res = split_feed(raw).resources["a@x"]
    assert res.text == crlf(
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//davproxy//feeds//EN",
        *event("a@x"),
        "END:VCALENDAR",
    )


def test_missing_uid_gets_a_deterministic_uid() -> None:
    body = ["BEGIN:VEVENT", "DTSTART:20240105T100000Z", "SUMMARY:No UID", "END:VEVENT"]

    def split_with(stamp: str, summary: str = "No UID") -> tuple[str, str]:
        lines = [ln.replace("No UID", summary) for ln in body]
        split = split_feed(ics(*lines[:1], f"DTSTAMP:{stamp}", *lines[1:]))
        assert codes(split.warnings) == ["synthetic-uid"]
        [(uid, res)] = split.resources.items()
        assert res.synthetic_uid
        return uid, res.text

    uid1, text1 = split_with("20240101T000000Z")
    uid2, text2 = split_with("20240202T020202Z")  # regenerated DTSTAMP: same object
    uid3, _ = split_with("20240101T000000Z", "Other")
    assert uid1 == uid2 != uid3
    assert re.fullmatch(r"[0-9a-f]{32}@synthetic\.davproxy", uid1)
    # the UID is written into the served object, right after BEGIN
    assert text1 == wrap(
        "BEGIN:VEVENT",
        f"UID:{uid1}",
        "DTSTAMP:20240101T000000Z",
        "DTSTART:20240105T100000Z",
        "SUMMARY:No UID",
        "END:VEVENT",
    )
    assert fingerprint(text1) == fingerprint(text2)


def test_dtstamp_churn_keeps_fingerprint_but_content_changes_do_not() -> None:
    def fp(*extra: str, stamp: str = "20240101T000000Z") -> str:
        return split_feed(ics(*event("a@x", *extra, stamp=stamp))).resources["a@x"].fingerprint

    base = fp("SUMMARY:A", "SEQUENCE:0")
    assert fp("SUMMARY:A", "SEQUENCE:0", stamp="20991231T235959Z") == base
    assert fp("SUMMARY:A", "SEQUENCE:0", "LAST-MODIFIED:20240301T000000Z") == base
    assert fp("SEQUENCE:0", "SUMMARY:A") == base  # property order carries no meaning
    assert fp("SUMMARY:B", "SEQUENCE:0") != base
    assert fp("SUMMARY:A", "SEQUENCE:1") != base
    assert fp("SUMMARY:A", "SEQUENCE:0", "EXDATE:20240102T000000Z") != base


def test_fingerprint_ignores_prodid_and_vtimezone_order_and_folding() -> None:
    ev = event(
        "r@x",
        "DTSTART;TZID=Europe/Berlin:20240101T100000",
        "RECURRENCE-ID;TZID=America/New_York:20240101T040000",
    )
    a = wrap(*TZ_BERLIN, *TZ_NY, *ev)
    folded_ny = [*TZ_NY[:1], "TZID:America/", " New_York", *TZ_NY[2:]]
    b = a.replace(crlf(*TZ_BERLIN, *TZ_NY), crlf(*folded_ny, *TZ_BERLIN)).replace(
        "PRODID:-//Example//Feed//EN", "PRODID:-//Example//Feed 2.0//EN"
    )
    assert a != b
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(a.replace("TZOFFSETTO:-0500", "TZOFFSETTO:-0600"))


def test_removed_override_changes_the_fingerprint() -> None:
    master = event("r@x", "RRULE:FREQ=DAILY")
    o1 = event("r@x", "RECURRENCE-ID:20240102T090000Z")
    with_o = split_feed(ics(*master, *o1)).resources["r@x"].fingerprint
    without = split_feed(ics(*master)).resources["r@x"].fingerprint
    assert with_o != without


def test_odd_rrules_preserved_byte_for_byte() -> None:
    odd = ["RRULE:", "RRULE:FREQ=WEEKLY;BYDAY=MO, TU"]
    raw = ics(*event("a@x", odd[0]), *event("b@x", "DTSTART:20240101T100000Z", odd[1]))
    split = split_feed(raw)
    assert split.resources["a@x"].text == wrap(*event("a@x", "RRULE:"))
    assert split.resources["b@x"].text == wrap(*event("b@x", "DTSTART:20240101T100000Z", odd[1]))
    assert b"RRULE:FREQ=WEEKLY;BYDAY=MO, TU\r\n" in split.resources["b@x"].text.encode()


def test_unescaped_comma_and_trailing_backslash_preserved() -> None:
    # vobject truncates at the comma and turns the trailing backslash into "\eof"
    lines = [
        "SUMMARY:move -3h, make 7 hours long",
        "DESCRIPTION:path C:\\temp\\",
        "CREATED:00000101T000000Z",
    ]
    res = split_feed(ics(*event("v@x", *lines))).resources["v@x"]
    assert res.text == wrap(*event("v@x", *lines))


def test_truncated_components_are_skipped_and_the_rest_kept() -> None:
    raw = ics(
        *event("ok1@x", "SUMMARY:one"),
        "BEGIN:VEVENT",
        "UID:cut@x",
        "SUMMARY:lost its END",
        *event("ok2@x", "SUMMARY:two"),
        "BEGIN:VEVENT",
        "UID:alarm@x",
        "BEGIN:VALARM",
        "ACTION:DISPLAY",
        "END:VEVENT",
        *event("ok3@x", "SUMMARY:three"),
        "BEGIN:VTODO",
        "UID:last@x",
    )
    split = split_feed(raw)
    assert sorted(split.resources) == ["ok1@x", "ok2@x", "ok3@x"]
    assert split.warnings == (
        FeedWarning("truncated", 9, "VEVENT skipped: no END:VEVENT before line 12"),
        FeedWarning("truncated", 17, "VEVENT skipped: unbalanced END:VEVENT at line 21"),
        FeedWarning("truncated", 27, "VTODO skipped: no END:VTODO before END:VCALENDAR"),
    )
    assert split.complete is True
    assert split.resources["ok3@x"].text == wrap(*event("ok3@x", "SUMMARY:three"))


def test_download_cut_mid_component_is_incomplete() -> None:
    raw = crlf(*HEAD, *event("a@x"), "BEGIN:VEVENT", "UID:b@x", "SUMM").encode()
    split = split_feed(raw)
    assert list(split.resources) == ["a@x"]
    assert split.complete is False
    assert codes(split.warnings) == ["truncated"]


@pytest.mark.parametrize(
    "raw",
    [b"", b"<html><body>Service Unavailable</body></html>", crlf(*HEAD, *event("a@x")).encode()],
)
def test_garbage_empty_or_unclosed_calendar_is_incomplete(raw: bytes) -> None:
    assert split_feed(raw).complete is False


def test_empty_calendar_is_complete() -> None:
    split = split_feed(ics())
    assert (dict(split.resources), split.complete) == ({}, True)


def test_bom_and_lf_only_input_give_the_same_resources() -> None:
    lines = [
        *TZ_BERLIN,
        *event("a@x", "DTSTART;TZID=Europe/Berlin:20240101T100000", "DESCRIPTION:x", " y"),
    ]
    reference = split_feed(ics(*lines))
    for raw in (
        b"\xef\xbb\xbf" + ics(*lines),
        ics(*lines, nl="\n"),
        b"\xef\xbb\xbf" + ics(*lines, nl="\n"),
    ):
        split = split_feed(raw)
        assert split.resources == reference.resources
        assert split.warnings == ()
    assert "\r\n" in reference.resources["a@x"].text
    assert "\n" not in reference.resources["a@x"].text.replace("\r\n", "")


def test_non_utf8_bytes_read_as_windows_1252() -> None:
    raw = ics(*event("a@x", "SUMMARY:PLACEHOLDER")).replace(
        b"PLACEHOLDER", b"Caf\xe9 \x93quoted\x94"
    )
    split = split_feed(raw)
    assert "SUMMARY:Café “quoted”\r\n" in split.resources["a@x"].text
    assert split.warnings == (
        FeedWarning("decode", 7, "1 line(s) not UTF-8, read as Windows-1252"),
    )
    # the served text is valid UTF-8
    split.resources["a@x"].text.encode("utf-8")


def test_duplicate_master_keeps_the_last_and_warns() -> None:
    split = split_feed(ics(*event("d@x", "SUMMARY:first"), *event("d@x", "SUMMARY:second")))
    assert split.resources["d@x"].text == wrap(*event("d@x", "SUMMARY:second"))
    assert split.warnings == (FeedWarning("duplicate-master", 9, "d@x"),)


def test_mixed_component_types_under_one_uid_keep_the_first() -> None:
    todo = ["BEGIN:VTODO", "UID:m@x", "SUMMARY:todo", "END:VTODO"]
    split = split_feed(ics(*event("m@x", "SUMMARY:ev"), *todo))
    res = split.resources["m@x"]
    assert res.kind == "VEVENT"
    assert res.text == wrap(*event("m@x", "SUMMARY:ev"))
    assert codes(split.warnings) == ["mixed-types"]


def test_vtodo_and_vjournal_become_resources_unknown_components_do_not() -> None:
    todo = ["BEGIN:VTODO", "UID:t@x", "END:VTODO"]
    journal = ["BEGIN:VJOURNAL", "UID:j@x", "END:VJOURNAL"]
    xcomp = ["BEGIN:X-THING", "UID:x@x", "END:X-THING"]
    split = split_feed(ics(*todo, *journal, *xcomp))
    assert {u: r.kind for u, r in split.resources.items()} == {"t@x": "VTODO", "j@x": "VJOURNAL"}
    assert split.warnings == (FeedWarning("unsupported-component", 10, "X-THING"),)


def test_uid_of_nested_alarm_is_not_the_objects_uid() -> None:
    alarm = ["BEGIN:VALARM", "UID:alarm-1", "ACTION:DISPLAY", "TRIGGER:-PT5M", "END:VALARM"]
    split = split_feed(ics("BEGIN:VEVENT", *alarm, "UID:real@x", "END:VEVENT"))
    assert list(split.resources) == ["real@x"]


def test_concatenated_calendars_are_merged() -> None:
    raw = ics(*event("a@x")) + ics(*event("b@x"))
    split = split_feed(raw)
    assert sorted(split.resources) == ["a@x", "b@x"]
    assert split.meta.header == ("VERSION:2.0", "PRODID:-//Example//Feed//EN")
    assert split.complete is True


def test_href_is_stable_url_safe_and_distinct() -> None:
    uids = ["a@x", "../../etc/passwd", "wéird uid/with?query#frag", "", "a" * 2000]
    hrefs = [href_for(u) for u in uids]
    assert all(re.fullmatch(r"[0-9a-f]{32}\.ics", h) for h in hrefs)
    assert len(set(hrefs)) == len(uids)
    assert href_for("a@x") == hashlib.sha256(b"a@x").hexdigest()[:32] + ".ics"


def test_diff_added_changed_removed() -> None:
    old = {"a": "1", "b": "2", "c": "3"}
    new = {"b": "2", "c": "33", "d": "4", "e": "5"}
    assert diff(old, new) == Diff(added=("d", "e"), changed=("c",), removed=("a",))
    assert diff(new, new).empty
    assert diff({}, {"x": "1"}) == Diff(("x",), (), ())


def test_diff_of_two_splits() -> None:
    old = split_feed(ics(*event("a@x", "SUMMARY:A"), *event("b@x", "SUMMARY:B")))
    new = split_feed(
        ics(
            *event("a@x", "SUMMARY:A", stamp="20250101T000000Z"),
            *event("b@x", "SUMMARY:B2"),
            *event("c@x"),
        )
    )
    assert diff(old.fingerprints(), new.fingerprints()) == Diff(("c@x",), ("b@x",), ())


@pytest.mark.parametrize(
    ("old", "new", "ok"),
    [
        (0, 0, True),
        (0, 5, True),
        (10, 5, True),  # exactly half: not more than 50%
        (10, 4, False),
        (100, 49, False),
        (100, 100, True),
        (9, 1, True),  # too few objects to judge
        (3, 0, False),  # any feed turning empty needs confirming
        (1000, 900, True),
    ],
)
def test_plausible(old: int, new: int, ok: bool) -> None:
    assert plausible(old, new) is ok


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("PT1H", 3600),
        ("P1D", 86400),
        ("P1W", 604800),
        ("PT15M", 900),
        ("P1DT2H3M4S", 93784),
        ("+PT30S", 30),
        ("-PT5M", -300),
        (" pt1h ", 3600),
        ("P1W2D", 9 * 86400),
        ("P", None),
        ("PT", None),
        ("P1M", None),
        ("1H", None),
        ("", None),
        ("PT1H30", None),
    ],
)
def test_parse_duration_seconds(value: str, seconds: int | None) -> None:
    assert parse_duration_seconds(value) == seconds
