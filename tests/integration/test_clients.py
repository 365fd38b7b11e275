"""Real clients through davproxy: the python caldav library and caldav-server-tester.

caldav-server-tester probes ~100 CalDAV features; its verdicts directly against an
upstream and through davproxy must be the same.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import caldav
import pytest

from davproxy.ops.embedded import start_xandikos
from tests.helpers import USERS, start_proxy, write_htpasswd

from .conftest import Pair

# Fields the tester itself ignores when comparing runs (timings).
TIMING_KEYS = {"delay", "save-load-delay", "delay-is-lower-bound", "note"}

ICS = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//davproxy tests//EN
BEGIN:VEVENT
UID:{uid}
DTSTAMP:20261101T090000Z
DTSTART:20261124T100000Z
DTEND:20261124T110000Z
SUMMARY:{summary}
END:VEVENT
END:VCALENDAR
"""


def _caldav_round_trip(url: str) -> None:
    import datetime as dt

    with caldav.DAVClient(url=url, username="alice", password=USERS["alice"]) as client:
        principal = client.principal()
        name = f"client-{uuid.uuid4().hex[:8]}"
        calendar = principal.make_calendar(name=name, cal_id=name)
        try:
            calendar.save_event(ICS.format(uid="ev-1", summary="Planning"))
            calendar.save_event(ICS.format(uid="ev-2", summary="Review"))
            found = calendar.search(
                start=dt.datetime(2026, 11, 24, tzinfo=dt.UTC),
                end=dt.datetime(2026, 11, 25, tzinfo=dt.UTC),
                event=True,
            )
            assert sorted(str(e.icalendar_component["SUMMARY"]) for e in found) == [
                "Planning", "Review",
            ]  # fmt: skip
            event = calendar.event_by_uid("ev-1")
            event.icalendar_component["SUMMARY"] = "Planning (moved)"
            event.save()
            assert "Planning (moved)" in calendar.event_by_uid("ev-1").data
            event.delete()
            assert [str(e.icalendar_component["UID"]) for e in calendar.events()] == ["ev-2"]
            assert name in [c.id for c in principal.calendars()]
        finally:
            calendar.delete()


def test_caldav_library_through_davproxy(pair: Pair) -> None:
    _caldav_round_trip(pair.proxy.base)


def verdicts_of(url: str, user: str | None, home: Path) -> dict[str, dict[str, object]]:
    exe = shutil.which("caldav-server-tester", path=str(Path(sys.executable).parent))
    assert exe, "caldav-server-tester is a test dependency"
    command = [exe, "--caldav-url", url, "--format", "hints"]
    if user is not None:
        command += ["--caldav-username", user, "--caldav-password", USERS[user]]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(home)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "raised an unexpected exception" not in result.stderr, result.stderr[-3000:]
    raw = ast.literal_eval(result.stdout.strip())
    return {
        feature: {k: v for k, v in info.items() if k not in TIMING_KEYS}
        for feature, info in raw.items()
    }


def differences(a: dict[str, object], b: dict[str, object]) -> dict[str, object]:
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def without_principal_search(
    diff: dict[str, object], proxied: dict[str, object]
) -> dict[str, object]:
    """The one verdict davproxy changes on purpose: it answers principal searches from
    its own directory (issue 15), which neither upstream does; the searches work."""
    search = {k for k in diff if k.startswith("principal-search")}
    assert search == {
        "principal-search", "principal-search.by-name.self", "principal-search.list-all"
    }, diff  # fmt: skip
    assert all(proxied.get(k) in ({}, {"support": "full"}, None) for k in search), diff
    return {k: v for k, v in diff.items() if k not in search}


def test_caldav_server_tester_same_verdicts_radicale(
    radicale_basic_pair: Pair, tmp_path: Path
) -> None:
    pair = radicale_basic_pair
    direct = verdicts_of(pair.direct.base, "alice", tmp_path)
    proxied = verdicts_of(pair.proxy.base, "alice", tmp_path)
    assert len(direct) > 80
    assert without_principal_search(differences(direct, proxied), proxied) == {}


def test_caldav_server_tester_same_verdicts_xandikos(tmp_path: Path) -> None:
    """Xandikos single-user (no auth of its own) directly, and behind davproxy proxy-auth.

    davproxy adds authentication Xandikos lacks, so only the ``auth.*`` verdicts may
    differ; every protocol verdict must be the same.
    """
    with start_xandikos(tmp_path / "xandikos", single_user="alice") as upstream:
        htpasswd = write_htpasswd(tmp_path / "users.htpasswd")
        with start_proxy(
            tmp_path / "davproxy", upstream_url=upstream.url, kind="xandikos",
            mode="proxy-auth", htpasswd=htpasswd,
        ) as proxy:  # fmt: skip
            direct = verdicts_of(upstream.url, None, tmp_path)
            proxied = verdicts_of(proxy.url, "alice", tmp_path)
    assert len(direct) > 80
    diff = without_principal_search(differences(direct, proxied), proxied)
    assert {k: v for k, v in diff.items() if not k.startswith("auth")} == {}
    # What davproxy adds: a Basic challenge where Xandikos had none.
    assert proxied.get("auth.www-authenticate", {}).get("support") != "unknown"


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_caldav_library_shares_with_a_raw_post(radicale_pair: Pair) -> None:
    """docs/clients.md: the caldav library has no sharing calls, but its post() carries
    the README's share and reply documents; bob's principal().calendars() then lists
    the accepted copy under its distinguishable name."""
    import re

    from .test_sharing import share_body

    url = radicale_pair.proxy.url("/")
    name = f"libshare-{uuid.uuid4().hex[:6]}"
    sharing = {"Content-Type": "application/davsharing+xml; charset=utf-8"}
    with (
        caldav.DAVClient(url=url, username="bob", password=USERS["bob"]) as bob,
        caldav.DAVClient(url=url, username="alice", password=USERS["alice"]) as alice,
    ):
        bob.principal()
        calendar = alice.principal().make_calendar(name="Library", cal_id=name)
        shared = alice.post(str(calendar.url), share_body(("bob", "read")), sharing)
        assert shared.status == 204
        listing = bob.request(
            radicale_pair.proxy.url("/.davproxy/notifications/bob/"), "PROPFIND", "",
            {"Depth": "1"},
        )  # fmt: skip
        notes = re.findall(r"/\.davproxy/notifications/bob/[^<]*\.xml", listing.raw)
        invite = next(
            n for n in notes if f"/alice/{name}/" in bob.request(radicale_pair.proxy.url(n)).raw
        )
        reply = '<D:invite-reply xmlns:D="DAV:"><D:invite-accepted/></D:invite-reply>'
        accepted = bob.post(radicale_pair.proxy.url(invite), reply, sharing)
        assert accepted.status == 201
        names = {c.get_display_name() for c in bob.principal().calendars()}
        assert "Library (Alice)" in names
