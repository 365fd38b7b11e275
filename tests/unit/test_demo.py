"""The demo's own pieces: the sample feed and the commands it prints."""

from __future__ import annotations

import datetime as dt
import re
import sys
from pathlib import Path

import icalendar

from davproxy.ops.demo import _repair_old_sample, davproxy_command, sample_feed


def test_sample_feed_times_are_valid_and_the_standup_ends_after_it_starts() -> None:
    text = sample_feed(dt.date(2026, 11, 23))
    assert all(
        re.fullmatch(r"\d{8}T\d{6}Z", value)
        for value in re.findall(r"^DT(?:START|END):(\S+)\r$", text, flags=re.M)
    )
    events = {str(e["UID"]): e for e in icalendar.Calendar.from_ical(text).walk("VEVENT")}
    standup = events["standup@demo.davproxy"]
    assert standup["DTEND"].dt - standup["DTSTART"].dt == dt.timedelta(minutes=15)


def test_a_kept_folder_with_the_old_dtend_is_mended(tmp_path: Path) -> None:
    sample = tmp_path / "team.ics"
    good = sample_feed(dt.date(2026, 11, 23))
    sample.write_bytes(good.replace("DTEND:20261116T091500Z", "DTEND:20261116T09001500Z").encode())
    assert b"09001500Z" in sample.read_bytes()
    _repair_old_sample(sample)
    assert sample.read_bytes() == good.encode()


def test_the_printed_davproxy_command_is_this_one() -> None:
    command = davproxy_command()
    script = Path(sys.executable).parent / "davproxy"
    assert command in ("davproxy", str(script.absolute()))
