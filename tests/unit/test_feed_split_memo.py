"""The octet-level split and its memo give exactly what reading every line gives.

``split_feed`` cuts a regular feed at the octet level and, with the memo of an earlier
split, lexes and fingerprints only components whose bytes changed.  Whatever the feed
and whatever changed, the resources (text, fingerprint and every other field), the
calendar metadata and the time zones must be those of a full line-by-line split.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from davproxy.feeds import split as split_mod
from davproxy.feeds.blocks import segment
from davproxy.feeds.split import FeedSplit, split_feed

ZONE = (
    "BEGIN:VTIMEZONE\r\nTZID:{tz}\r\nBEGIN:STANDARD\r\nDTSTART:19701025T030000\r\n"
    "TZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nEND:STANDARD\r\nEND:VTIMEZONE\r\n"
)


def event(n: int, version: int, kind: str = "VEVENT", **options: bool) -> str:
    lines = [f"BEGIN:{kind}"]
    if not options.get("no_uid"):
        lines.append(f"UID:item-{n}@example.org")
    lines.append(f"DTSTAMP:2026010{version % 10}T000000Z")
    zone = ";TZID=Europe/Berlin" if n % 3 == 0 else (";TZID=Nowhere/Lost" if n % 7 == 6 else "")
    lines.append(f"DTSTART{zone}:202601{n % 28 + 1:02d}T090000")
    if options.get("override"):
        lines.append(f"RECURRENCE-ID:202601{n % 28 + 1:02d}T090000Z")
    if options.get("folded"):
        lines.append("DESCRIPTION:a long description that the origin folded at\r\n  an odd place")
    lines.append(f"SUMMARY:Item {n} v{version} \u00e9t\u00e9")
    if options.get("alarm"):
        lines += ["BEGIN:VALARM", "ACTION:DISPLAY", "TRIGGER:-PT5M", "END:VALARM"]
    lines.append(f"END:{kind}")
    return "\r\n".join(lines) + "\r\n"


@st.composite
def feeds(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """Two versions of a feed: the second with some items changed, added, removed,
    reordered, and perhaps its time zones or header changed or its line ends."""
    count = draw(st.integers(0, 12))
    items = []
    for n in range(count):
        options = {key: draw(st.booleans()) for key in ("no_uid", "override", "folded", "alarm")}
        kind = draw(st.sampled_from(["VEVENT", "VEVENT", "VTODO"]))
        items.append((n % 9, kind, options))  # n % 9: duplicate UIDs happen
    versions = [draw(st.integers(0, 3)) for _ in items]

    def render(
        items: list, versions: list[int], zone: str, name: str, lf: bool, scale: str = ""
    ) -> bytes:
        text = (
            f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\n{scale}"
            f"X-WR-CALNAME:{name}\r\n" + zone
            + "".join(event(n, v, kind, **o) for (n, kind, o), v in zip(items, versions, strict=True))
            + "END:VCALENDAR\r\n"
        )  # fmt: skip
        return text.replace("\r\n", "\n").encode() if lf else text.encode()

    zone = ZONE.format(tz="Europe/Berlin")
    lf = draw(st.booleans())
    first = render(items, versions, zone, "Feed", lf)
    changed = list(items)
    new_versions = [v + draw(st.sampled_from([0, 0, 0, 1])) for v in versions]
    if changed and draw(st.booleans()):
        del changed[0], new_versions[0]
    if draw(st.booleans()):
        changed.append((draw(st.integers(0, 12)), "VEVENT", {"alarm": True}))
        new_versions.append(0)
    if draw(st.booleans()):
        changed.reverse()
        new_versions.reverse()
    zone2 = draw(st.sampled_from([zone, zone + ZONE.format(tz="Nowhere/Lost"), ""]))
    name2 = draw(st.sampled_from(["Feed", "Renamed"]))
    scale = draw(st.sampled_from(["", "", "CALSCALE:GREGORIAN\r\n"]))
    return first, render(changed, new_versions, zone2, name2, lf, scale)


def line_by_line(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> FeedSplit:
    with monkeypatch.context() as patch:
        patch.setattr(split_mod, "segment", lambda data: None)
        return split_feed(raw)


def same(a: FeedSplit, b: FeedSplit) -> None:
    assert a.fingerprints() == b.fingerprints()
    assert set(a.resources) == set(b.resources)
    for uid in a.resources:
        assert a.resources[uid] == b.resources[uid]
    assert (a.meta, dict(a.timezones), a.complete) == (b.meta, dict(b.timezones), b.complete)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pair=feeds())
def test_octet_split_and_memo_agree_with_reading_every_line(
    pair: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = pair
    assert segment(old) is not None  # these feeds take the octet-level path
    whole_old = line_by_line(old, monkeypatch)
    fresh = split_feed(old)
    same(fresh, whole_old)
    assert sorted(fresh.warnings, key=repr) == sorted(whole_old.warnings, key=repr)
    incremental = split_feed(new, fresh.memo)
    same(incremental, line_by_line(new, monkeypatch))


def test_memo_spares_unchanged_components() -> None:
    """With the memo, only the changed component is lexed and fingerprinted again."""
    body = "".join(event(n, 0) for n in range(50))
    old = f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\n{body}END:VCALENDAR\r\n".encode()
    new = old.replace(b"SUMMARY:Item 7 v0", b"SUMMARY:Item 7 v1")
    first = split_feed(old)
    second = split_feed(new, first.memo)
    assert len(first.resources.built) == 50  # type: ignore[attr-defined]
    assert list(second.resources.built) == ["item-7@example.org"]  # type: ignore[attr-defined]
    changed = {u for u, f in second.fingerprints().items() if first.fingerprints()[u] != f}
    assert changed == {"item-7@example.org"}
    # a resource the memo knew is still built in full when asked for
    assert second.resources["item-8@example.org"] == first.resources["item-8@example.org"]


@pytest.mark.parametrize(
    "text",
    [
        b"BEGIN:VCALENDAR\rVERSION:2.0\rEND:VCALENDAR\r",  # bare CR line ends
        b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:a\r\nEND:VCALENDAR\r\n",  # unclosed
        b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\nBEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n",  # two
        b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:a\r\nEND:VEVENT\r\n X\r\nEND:VCALENDAR\r\n",
        b"junk\r\nBEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n",
        b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\nX-AFTER:1\r\n",
    ],
)
def test_irregular_feeds_are_read_line_by_line(text: bytes) -> None:
    assert segment(text) is None


@pytest.mark.parametrize(
    "text",
    [
        # a fold onto a BEGIN line, a component that lost its END, one inside another
        b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\n X\r\nUID:a\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
        b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:a\r\nBEGIN:VEVENT\r\nUID:b\r\n"
        b"END:VEVENT\r\nEND:VCALENDAR\r\n",
        b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:a\r\nBEGIN:VTODO\r\nUID:b\r\nEND:VTODO\r\n"
        b"END:VEVENT\r\nBEGIN:X-ODD\r\nEND:X-ODD\r\nEND:VCALENDAR\r\n",
    ],
)
def test_broken_components_split_as_a_whole_read_does(
    text: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = line_by_line(text, monkeypatch)
    octets = split_feed(text)
    same(octets, whole)
    assert sorted(octets.warnings, key=repr) == sorted(whole.warnings, key=repr)
    same(split_feed(text, octets.memo), whole)
