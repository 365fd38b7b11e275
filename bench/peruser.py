"""Per-user data benchmark: a sharee's calendar-multiget of 200 events vs the owner's.

A real Radicale (``http_x_remote_user``) with davproxy (proxy-auth) in front.  alice
owns a calendar of 200 events, each with her own alarm and transparency; bob has it
shared read-write and has set his own alarm on every event, so each of his answers is
split and merged (the worst case).  Both send the same ``calendar-multiget`` of all 200
members (``getetag`` + ``calendar-data``) through davproxy; rounds are interleaved
A-B-B-A so drift of the host favours neither.  Printed: median and p90 latency of each,
and the ratio sharee ÷ owner (target ≤ 1.3).  Never asserted.

    python bench/peruser.py            # 40 requests each
    python bench/peruser.py --quick    # 10 each, a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from davproxy.ops.embedded import start_radicale  # noqa: E402
from tests.helpers import basic, start_proxy, write_htpasswd  # noqa: E402

EVENTS = 200
CALENDAR = "/alice/bench-shared/"
PLAIN = "/alice/bench-plain/"  # the same events without any alarm: nothing to split
SHARING = {"Content-Type": "application/davsharing+xml; charset=utf-8"}
XML = {"Content-Type": "application/xml; charset=utf-8", "Depth": "1"}


def event(n: int, personal: str) -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//davproxy bench//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:bench-{n:04d}\r\nDTSTAMP:20300101T000000Z\r\n"
        f"DTSTART:203001{1 + n % 28:02d}T{8 + n % 10:02d}0000Z\r\nDURATION:PT1H\r\n"
        f"SUMMARY:Meeting {n}\r\nLOCATION:Room {n % 7}\r\n{personal}END:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def alarm(who: str) -> str:
    return (
        f"TRANSP:OPAQUE\r\nBEGIN:VALARM\r\nACTION:DISPLAY\r\nTRIGGER:-PT10M\r\n"
        f"DESCRIPTION:{who}\r\nEND:VALARM\r\n"
    )


def multiget(base: str) -> bytes:
    hrefs = "".join(f"<D:href>{base}e{n:04d}.ics</D:href>" for n in range(EVENTS))
    return (
        '<C:calendar-multiget xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
        f"<D:prop><D:getetag/><C:calendar-data/></D:prop>{hrefs}</C:calendar-multiget>"
    ).encode()


async def setup(session: aiohttp.ClientSession, url: str) -> tuple[str, str]:
    """alice's two calendars, shared with bob, who accepts both and sets his alarms in
    the first; his copies."""

    async def call(user: str, method: str, path: str, body: str | bytes = b"", **h: str) -> str:
        async with session.request(
            method, url + path, data=body, headers={**basic(user), **h}
        ) as r:
            text = await r.text()
            assert r.status < 300, (method, path, r.status, text[:300])
            return text

    await call("bob", "PROPFIND", "/bob/", Depth="0")
    copies = []
    for calendar, personal in ((CALENDAR, alarm("alice")), (PLAIN, "")):
        await call("alice", "MKCALENDAR", calendar)
        for n in range(EVENTS):
            await call("alice", "PUT", f"{calendar}e{n:04d}.ics", event(n, personal),
                       **{"Content-Type": "text/calendar"})  # fmt: skip
        share = (
            '<D:share-resource xmlns:D="DAV:"><D:sharee><D:href>mailto:bob@example.org</D:href>'
            "<D:share-access><D:read-write/></D:share-access></D:sharee></D:share-resource>"
        )
        await call("alice", "POST", calendar, share, **SHARING)
        listing = await call("bob", "PROPFIND", "/.davproxy/notifications/bob/", Depth="1")
        invite = re.findall(r"/\.davproxy/notifications/bob/[^<]+\.xml", listing)[-1]
        async with session.post(
            url + invite,
            data='<D:invite-reply xmlns:D="DAV:"><D:invite-accepted/></D:invite-reply>',
            headers={**basic("bob"), **SHARING},
        ) as answer:
            assert answer.status == 201
            copies.append("/" + answer.headers["Location"].split("://", 1)[1].split("/", 1)[1])
    for n in range(EVENTS):
        await call("bob", "PUT", f"{copies[0]}e{n:04d}.ics", event(n, alarm("bob")),
                   **{"Content-Type": "text/calendar"})  # fmt: skip
    return copies[0], copies[1]


async def timed(
    session: aiohttp.ClientSession, url: str, user: str, body: bytes, alarms: bool = True
) -> float:
    started = time.perf_counter()
    async with session.request("REPORT", url, data=body, headers={**basic(user), **XML}) as r:
        text = await r.read()
    elapsed = time.perf_counter() - started
    assert r.status == 207 and text.count(b"BEGIN:VEVENT") == EVENTS, (r.status, text[:200])
    who = b"DESCRIPTION:" + user.encode()
    assert text.count(who) == (EVENTS if alarms else 0), f"{user}: only their own alarms"
    assert text.count(b"BEGIN:VALARM") == (EVENTS if alarms else 0)
    return elapsed


async def run(base: str, rounds: int) -> None:
    async with aiohttp.ClientSession() as session:
        copy, plain = await setup(session, base)
        series: dict[str, tuple[str, str, bytes, bool]] = {
            "owner (alice)": (CALENDAR, "alice", multiget(CALENDAR), True),
            "sharee (bob)": (copy, "bob", multiget(copy), True),
            "sharee, no alarms": (plain, "bob", multiget(plain), False),
        }
        times: dict[str, list[float]] = {name: [] for name in series}
        for _ in range(3):  # warm-up
            for path, user, body, alarms in series.values():
                await timed(session, base + path, user, body, alarms)
        for half in range(2 * rounds):
            names = list(series) if half % 2 == 0 else list(reversed(series))
            for name in names:
                path, user, body, alarms = series[name]
                times[name].append(await timed(session, base + path, user, body, alarms))

    def row(name: str, values: list[float]) -> str:
        values = sorted(values)
        p90 = values[int(0.9 * (len(values) - 1))]
        median = statistics.median(values) * 1000
        return f"{name:<18} n={len(values):<4} p50 {median:7.1f} ms   p90 {p90 * 1000:7.1f} ms"

    print(f"calendar-multiget of {EVENTS} events through davproxy (Radicale upstream)")
    for name, values in times.items():
        print(row(name, values))
    owner = statistics.median(times["owner (alice)"])
    for name in ("sharee (bob)", "sharee, no alarms"):
        print(f"ratio {name} / owner (p50): {statistics.median(times[name]) / owner:.2f}x")
    ratio = statistics.median(times["sharee (bob)"]) / owner
    print(f"target sharee / owner <= 1.30x: {'ok' if ratio <= 1.3 else 'OVER TARGET'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 requests each")
    args = parser.parse_args()
    rounds = 5 if args.quick else 20
    with tempfile.TemporaryDirectory(prefix="davproxy-peruser-") as folder:
        work = Path(folder)
        with (
            start_radicale(work / "radicale", auth="x-remote-user") as upstream,
            start_proxy(
                work / "davproxy", upstream_url=upstream.url, kind="radicale", mode="proxy-auth",
                htpasswd=write_htpasswd(work / "users.htpasswd"),
            ) as proxy,
        ):  # fmt: skip
            asyncio.run(run(proxy.url.rstrip("/"), rounds))


if __name__ == "__main__":
    main()
