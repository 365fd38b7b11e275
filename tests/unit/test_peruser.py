"""sharing/peruser.py and its store: splitting, merging and keeping per-user data."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from davproxy.sharing import peruser as P
from davproxy.sharing.peruser_store import PerUserStore, sharee_etag
from davproxy.store import Store
from davproxy.store.records import NewShare

HEAD = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\n"
TAIL = "END:VCALENDAR\r\n"


def event(*components: str) -> str:
    return HEAD + "".join(components) + TAIL


def master(personal: str = "", summary: str = "Standup", tz: bool = False) -> str:
    start = "DTSTART;TZID=Europe/Berlin:20300101T090000" if tz else "DTSTART:20300101T090000Z"
    end = "DTEND;TZID=Europe/Berlin:20300101T100000" if tz else "DTEND:20300101T100000Z"
    return (
        f"BEGIN:VEVENT\r\nUID:ev\r\nDTSTAMP:20300101T000000Z\r\n{start}\r\n{end}\r\n"
        f"RRULE:FREQ=WEEKLY;COUNT=30\r\nEXDATE:20300115T090000Z\r\nSUMMARY:{summary}\r\n"
        f"{personal}END:VEVENT\r\n"
    )


def instance(day: str, personal: str = "", start: str = "0900", summary: str = "Standup") -> str:
    return (
        f"BEGIN:VEVENT\r\nUID:ev\r\nDTSTAMP:20300102T000000Z\r\n"
        f"RECURRENCE-ID:2030{day}T090000Z\r\nDTSTART:2030{day}T{start}00Z\r\n"
        f"DTEND:2030{day}T{int(start[:2]) + 1:02d}{start[2:]}00Z\r\nSUMMARY:{summary}\r\n"
        f"{personal}END:VEVENT\r\n"
    )


def alarm(who: str) -> str:
    return f"BEGIN:VALARM\r\nACTION:DISPLAY\r\nTRIGGER:-PT5M\r\nDESCRIPTION:{who}\r\nEND:VALARM\r\n"


def test_split_keeps_shared_lines_verbatim_and_takes_personal_ones() -> None:
    folded = "DESCRIPTION:" + "x" * 80
    text = event(
        master(
            "TRANSP:TRANSPARENT\r\nX-MOZ-LASTACK:20300101T000000Z\r\n"
            "X-APPLE-TRAVEL-DURATION;VALUE=DURATION:PT1H\r\n" + alarm("alice")
        ).replace("SUMMARY", f"{folded[:75]}\r\n {folded[75:]}\r\nX-ALT-DESC:shared\r\nSUMMARY")
    )
    obj = P.parse(text)
    (component,) = obj.components
    assert [p.splitlines()[0] for p in component.personal] == [
        "TRANSP:TRANSPARENT", "X-MOZ-LASTACK:20300101T000000Z",
        "X-APPLE-TRAVEL-DURATION;VALUE=DURATION:PT1H", "BEGIN:VALARM",
    ]  # fmt: skip
    stripped = P.render(obj, None)
    assert "VALARM" not in stripped and "TRANSP" not in stripped and "X-MOZ" not in stripped
    assert f"{folded[:75]}\r\n {folded[75:]}\r\n" in stripped  # the origin's fold
    assert "X-ALT-DESC:shared" in stripped  # other X- properties stay shared
    # the writer's own view: every line they wrote, personal ones before END:VEVENT
    assert sorted(P.render(obj, obj.personal()).split("\r\n")) == sorted(text.split("\r\n"))
    assert not P.might_hold_personal(P.render(P.parse(event(master())), None).replace("X-", ""))


def test_overrides_take_the_viewers_master_entry_unless_they_have_their_own() -> None:
    obj = P.parse(event(master(), instance("0108", start="1400")))
    view = P.render(obj, P.lookup({"": alarm("mine").rstrip()}))
    assert view.count("DESCRIPTION:mine") == 2
    own = P.lookup(
        {"": alarm("mine").rstrip(), "RID 20300108T090000Z RECURRENCE-ID:20300108T090000Z": ""}
    )
    assert P.render(obj, own).count("DESCRIPTION:mine") == 1


def test_write_of_personal_data_only_is_no_shared_change() -> None:
    stored = P.parse(event(master(alarm("alice")), instance("0108", start="1400")))
    mine = event(
        master("TRANSP:TRANSPARENT\r\n" + alarm("bob")).replace(
            "20300101T000000Z", "20300201T000000Z"
        ),
        instance("0108", alarm("bobmoved"), start="1400"),
        instance("0122", alarm("bob22")),
    )
    write = P.split_write(P.parse(mine), stored)
    assert not write.shared_changed
    assert "0122" not in P.with_owner(write.shared, stored)  # kept as bob's entry alone
    upstream = P.with_owner(write.shared, stored)
    assert "DESCRIPTION:alice" in upstream and "bob" not in upstream
    assert sorted(write.personal) == [
        "", "RID 20300108T090000Z RECURRENCE-ID:20300108T090000Z",
        "RID 20300122T090000Z RECURRENCE-ID:20300122T090000Z",
    ]  # fmt: skip
    bob_view = P.render(write.shared, P.lookup(write.personal))
    assert "RECURRENCE-ID:20300122T090000Z" in bob_view and "DESCRIPTION:bob22" in bob_view
    assert "DTEND:20300122T100000Z" in bob_view  # derived from the master's length
    assert "RRULE" not in bob_view.split("RECURRENCE-ID:20300122")[1]
    changed = P.split_write(P.parse(mine.replace("SUMMARY:Standup", "SUMMARY:Other")), stored)
    assert changed.shared_changed
    moved = P.split_write(
        P.parse(event(master(), instance("0108", start="1400"), instance("0129", start="1500"))),
        stored,
    )
    assert moved.shared_changed and "0129" in P.with_owner(moved.shared, stored)


def test_a_new_instance_gets_the_owners_master_alarm_upstream() -> None:
    stored = P.parse(event(master(alarm("alice"))))
    write = P.split_write(P.parse(event(master(), instance("0108", start="1400"))), stored)
    upstream = P.with_owner(write.shared, stored)
    assert write.shared_changed and upstream.count("DESCRIPTION:alice") == 2


def test_derived_instances_only_where_the_rule_has_one() -> None:
    obj = P.parse(event(master(tz=True)))
    summer = "RID 20300611T070000Z RECURRENCE-ID;TZID=Europe/Berlin:20300611T090000"
    winter = "RID 20300108T080000Z RECURRENCE-ID;TZID=Europe/Berlin:20300108T090000"
    off = "RID 20300109T080000Z RECURRENCE-ID;TZID=Europe/Berlin:20300109T090000"
    view = P.render(
        obj,
        P.lookup(
            {summer: alarm("s").rstrip(), winter: alarm("w").rstrip(), off: alarm("o").rstrip()}
        ),
    )
    assert "DESCRIPTION:s" in view and "DESCRIPTION:w" in view and "DESCRIPTION:o" not in view
    excluded = P.parse(event(master()))
    gone = "RID 20300115T090000Z RECURRENCE-ID:20300115T090000Z"
    assert "RECURRENCE-ID" not in P.render(excluded, P.lookup({gone: alarm("x").rstrip()}))


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("RECURRENCE-ID:20300101T090000Z", "20300101T090000Z"),
        ("RECURRENCE-ID;VALUE=DATE:20300101", "20300101"),
        ("RECURRENCE-ID;TZID=Europe/Berlin:20300701T090000", "20300701T070000Z"),
        ("RECURRENCE-ID;TZID=Not/AZone:20300701T090000", "20300701T090000"),
        ("RECURRENCE-ID:20300701T090000", "20300701T090000"),
    ],
)
def test_instance_keys(line: str, key: str) -> None:
    assert P.rid_key(line) == key


def test_refusals() -> None:
    with pytest.raises(P.InjectedData):
        P.parse(
            event(
                master(),
                "BEGIN:X-CALENDARSERVER-PERUSER\r\nUID:ev\r\nEND:X-CALENDARSERVER-PERUSER\r\n",
            )
        )
    with pytest.raises(P.NotCalendarData):
        P.parse("<xml/>")
    with pytest.raises(P.NotCalendarData):
        P.parse(HEAD + "BEGIN:VEVENT\r\nUID:x\r\n")


def test_store_keeps_rows_per_share_and_drops_them_when_the_share_ends(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.sqlite3")
    data = PerUserStore(store)
    with store.transaction():
        bob, _ = store.share_upsert(
            NewShare(
                "up", "alice", "/alice/c/", "calendar", "bob", "bob", "read-write", "noresponse"
            )
        )
        carol, _ = store.share_upsert(
            NewShare("up", "alice", "/alice/c/", "calendar", "carol", "carol", "read", "noresponse")
        )
        bob = store.share_set_status(bob, "accepted", "/bob/c/")
        carol = store.share_set_status(carol, "accepted", "/carol/c/")
    assert bob is not None and carol is not None
    first = data.put(bob, "e.ics", "e", {"": "TRANSP:TRANSPARENT"})
    assert data.put(bob, "e.ics", "e", {"": "TRANSP:TRANSPARENT"}) == first  # unchanged
    assert data.put(carol, "e.ics", "e", {"": "X"}) > first
    assert data.changed_since(bob, first - 1) == ["e.ics"] and data.changed_since(bob, first) == []
    assert sharee_etag('"a"', first) != sharee_etag('"a"', first + 1)
    cleared = data.put(bob, "e.ics", "e", {})  # emptied: still a change to report
    assert cleared > first and data.entry(bob, "e.ics").personal == {}
    with store.transaction():
        store.share_set_status(bob, "declined", None)  # bob left
    assert data.entries(bob) == {} and data.entry(carol, "e.ics") is not None
    with store.transaction():
        store.share_delete(carol.id)  # revoked
    assert store.execute("SELECT COUNT(*) FROM peruser_data").fetchone()[0] == 0
    store.close()


LINES = [
    "BEGIN:VCALENDAR", "END:VCALENDAR", "BEGIN:VEVENT", "END:VEVENT", "BEGIN:VTODO",
    "END:VTODO", "BEGIN:VALARM", "END:VALARM", "BEGIN:VTIMEZONE", "END:VTIMEZONE",
    "BEGIN:X-THING", "END:X-THING", "UID:ev", "UID:other", "TRANSP:TRANSPARENT",
    "X-MOZ-SNOOZE-TIME-1:20300101T000000Z", "RECURRENCE-ID:20300108T090000Z",
    "RECURRENCE-ID;TZID=Europe/Berlin:20300108T090000", "RECURRENCE-ID;VALUE=DATE:2030010",
    "DTSTART:20300101T090000Z", "DTSTART;TZID=Nowhere:2030", "DTEND:20300101T100000Z",
    "RRULE:FREQ=WEEKLY;COUNT=3", "RRULE:FREQ=NONSENSE", "RRULE:", "EXDATE:20300108T090000Z,x",
    "RDATE:20300109T090000Z", "DURATION:PT1H", "SUMMARY:a;b:c", " folded", "TRIGGER:-PT5M",
    "", "DESCRIPTION:\u00e9\u20ac",
]  # fmt: skip


@given(st.lists(st.sampled_from(LINES), max_size=30), st.booleans())
@settings(max_examples=300, deadline=None)
def test_any_line_soup_splits_or_is_refused_clearly(lines: list[str], as_bytes: bool) -> None:
    """Hostile bodies: parse either refuses with its own errors or gives an object whose
    writer's view holds every line, which re-splits as no change, and renders for
    anybody (derived instances included) without raising."""
    text = "\r\n".join(["BEGIN:VCALENDAR", *lines]) + "\r\n"
    try:
        obj = P.parse(text.encode() if as_bytes else text)
    except (P.NotCalendarData, P.InjectedData):
        return
    again = P.parse(P.render(obj, obj.personal(), synthesize=False))
    assert not P.split_write(again, obj).shared_changed
    write = P.split_write(obj, obj)
    P.render(write.shared, P.lookup(write.personal))
    P.with_owner(write.shared, obj)
