"""Feeds benchmark: what subscriptions cost davproxy, and what they save a syncing client.

One run measures four things, against a real feed origin on 127.0.0.1
(``bench/feed_origin.py``, its own process, counting every fetch):

1. **Bytes for one change.**  A 10,000-event feed configured as an operator feed in a
   real davproxy (in front of a real Radicale).  One event changes at the origin and a
   refresh is forced with ``davproxy admin refresh``.  Then the bytes a client downloads
   to catch up: (a) RFC 6578 ``sync-collection`` with its previous token plus
   ``calendar-multiget`` of the changed hrefs, (b) enhanced GET (``Prefer:
   subscribe-enhanced-get`` + ``Sync-Token``), against (c) the whole ``.ics``.
2. **CPU per refresh** of the 10,000-event feed, in this process (Store, FeedStore,
   Fetcher, Refresher as davproxy wires them): same bytes again, a 304, one changed
   event, DTSTAMP-only churn; the ``Refresher.apply`` step alone; ``split_feed`` alone.
3. **First import** of 10,000 and 100,000 events (each in a fresh child process): CPU and
   wall time, tracemalloc peak, peak RSS growth, store size.
4. **100 subscribers of one source** through the real davproxy: 100 users each create
   their own subscription (extended MKCOL with ``CS:subscribed``) at once; the origin
   counts its fetches.  Then one forced refresh of that source.

    python bench/feeds.py            # full run, about 2 minutes on 2 cores
    python bench/feeds.py --quick    # fewer repetitions, no 100,000-event import (~40 s)

Results are printed (never asserted) and written as JSON to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
from lxml import etree  # noqa: E402

from davproxy.config import FeedsConfig  # noqa: E402
from davproxy.feeds.fetch import Fetcher  # noqa: E402
from davproxy.feeds.refresh import Refresher, RefreshReport  # noqa: E402
from davproxy.feeds.split import split_feed  # noqa: E402
from davproxy.feeds.store import FeedStore  # noqa: E402
from davproxy.ops.embedded import (  # noqa: E402
    EmbeddedError,
    ServerProcess,
    free_port,
    start_davproxy,
    start_radicale,
)
from davproxy.store import Store  # noqa: E402
from davproxy.upstream.identity import hash_password  # noqa: E402
from tests.helpers import basic, write_config  # noqa: E402

HOST = "127.0.0.1"
FEED_EVENTS = 10_000
IMPORT_SIZES = (10_000, 100_000)
SUBSCRIBERS = 100
READER = "alice"
PASSWORD_SUFFIX = "-pw"
FEEDS = "/.davproxy/feeds/"
BIG = "big"  # the operator feed's name (part 1)
SHARED_DELAY = 0.25  # seconds the origin waits before answering the 100 subscribers' feed
SHARED_EVENTS = 200
#: davproxy's default [feeds] max_bytes is 20 MiB; the 100,000-event feed is about 28 MB
IMPORT_MAX_BYTES = 256 * 1024 * 1024
TARGET_RATIO = 1 / 1000  # bytes for one change vs. the whole feed
TARGET_UNCHANGED_MS = 50.0  # CPU of a refresh that got the very same bytes
TARGET_IMPORT_MEMORY = 3.0  # issue 17: a first import's peak, times the feed's size
CHANGED_INDEX = FEED_EVENTS // 2 + 42  # the event that changes at the origin
REQUEST_TIMEOUT = 120.0
WAIT_IMPORT = 120.0  # seconds davproxy may take for its first import of the feed
REPS_FULL = {"fast": 9, "slow": 5, "churn": 3, "split": 3}
REPS_QUICK = {"fast": 5, "slow": 2, "churn": 2, "split": 1}

NS = {"D": "DAV:", "C": "urn:ietf:params:xml:ns:caldav", "CS": "http://calendarserver.org/ns/"}
ENHANCED = "subscribe-enhanced-get"

T = TypeVar("T")

# ---------------------------------------------------------------- feed generation

ZONES = {
    "Europe/Berlin": (
        "BEGIN:VTIMEZONE\r\nTZID:Europe/Berlin\r\n"
        "BEGIN:DAYLIGHT\r\nTZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\nTZNAME:CEST\r\n"
        "DTSTART:19700329T020000\r\nRRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU\r\nEND:DAYLIGHT\r\n"
        "BEGIN:STANDARD\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nTZNAME:CET\r\n"
        "DTSTART:19701025T030000\r\nRRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r\nEND:STANDARD\r\n"
        "END:VTIMEZONE\r\n"
    ),
    "America/New_York": (
        "BEGIN:VTIMEZONE\r\nTZID:America/New_York\r\n"
        "BEGIN:DAYLIGHT\r\nTZOFFSETFROM:-0500\r\nTZOFFSETTO:-0400\r\nTZNAME:EDT\r\n"
        "DTSTART:19700308T020000\r\nRRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=2SU\r\nEND:DAYLIGHT\r\n"
        "BEGIN:STANDARD\r\nTZOFFSETFROM:-0400\r\nTZOFFSETTO:-0500\r\nTZNAME:EST\r\n"
        "DTSTART:19701101T020000\r\nRRULE:FREQ=YEARLY;BYMONTH=11;BYDAY=1SU\r\nEND:STANDARD\r\n"
        "END:VTIMEZONE\r\n"
    ),
}
YEAR_START = dt.date(2026, 1, 1)
BASE_STAMP = "20260101T000000Z"


def make_event(number: int, stamp: str, changed: bool = False) -> str:
    """One deterministic VEVENT: start spread over 2026, every 3rd one in Europe/Berlin,
    some in America/New_York, every 10th recurring."""
    day = YEAR_START + dt.timedelta(days=(number * 7919) % 365)
    hour = 8 + number % 10 + (1 if changed else 0)
    date = day.strftime("%Y%m%d")
    if number % 3 == 0:
        zone = ";TZID=Europe/Berlin"
        start, end = f"{date}T{hour:02d}0000", f"{date}T{hour + 1:02d}0000"
    elif number % 5 == 1:
        zone = ";TZID=America/New_York"
        start, end = f"{date}T{hour:02d}3000", f"{date}T{hour + 1:02d}0000"
    else:
        zone = ""
        start, end = f"{date}T{hour:02d}0000Z", f"{date}T{hour:02d}4500Z"
    lines = [
        "BEGIN:VEVENT",
        f"UID:event-{number:06d}@feeds.bench.davproxy.example",
        f"DTSTAMP:{stamp}",
        f"DTSTART{zone}:{start}",
        f"DTEND{zone}:{end}",
    ]
    if number % 20 == 0:
        lines.append("RRULE:FREQ=WEEKLY;COUNT=12")
    elif number % 20 == 10:
        lines.append(f"RRULE:FREQ=MONTHLY;BYMONTHDAY={day.day};COUNT=6")
    if changed:
        lines.append("SEQUENCE:1")
    summary = f"Team meeting {number}" + (" (moved one hour later)" if changed else "")
    lines += [
        f"SUMMARY:{summary}",
        f"LOCATION:Room {number % 50}",
        f"DESCRIPTION:Generated event {number} of the davproxy feeds benchmark.",
        "END:VEVENT",
    ]
    return "\r\n".join(lines) + "\r\n"


def make_feed(
    events: int, stamp: str = BASE_STAMP, changed: int | None = None, name: str = "Bench"
) -> bytes:
    head = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//davproxy//feeds bench//EN\r\n"
        f"METHOD:PUBLISH\r\nX-WR-CALNAME:{name}\r\nX-WR-TIMEZONE:Europe/Berlin\r\n"
    )
    body = "".join(make_event(n, stamp, changed=n == changed) for n in range(events))
    return (head + "".join(ZONES.values()) + body + "END:VCALENDAR\r\n").encode()


def churn_stamp(k: int) -> str:
    return f"20260301T{k // 3600 % 24:02d}{k // 60 % 60:02d}{k % 60:02d}Z"


# ---------------------------------------------------------------- the origin


class OriginControl:
    """The origin subprocess and its control endpoints."""

    def __init__(self, server: ServerProcess, folder: Path) -> None:
        self.server = server
        self.folder = folder
        self.base = f"http://{HOST}:{server.port}"
        self._count = 0

    def url(self, path: str) -> str:
        return self.base + path

    async def serve(
        self, path: str, body: bytes, *, etag: bool = False, delay: float = 0.0
    ) -> None:
        self._count += 1
        file = self.folder / f"feed-{self._count}.ics"
        file.write_bytes(body)
        spec = {"path": path, "file": str(file), "etag": etag, "delay": delay}
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.url("/_control/serve"), json=spec) as answer,
        ):
            if answer.status != 200:
                raise RuntimeError(f"origin refused {spec}: {answer.status}")
            await answer.read()
        file.unlink()

    async def hits(self, path: str) -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.url("/_control/hits")) as answer,
        ):
            counts: dict[str, int] = await answer.json()
        return int(counts.get(path, 0))


def start_origin(folder: Path) -> OriginControl:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port(HOST)
    argv = [
        sys.executable, str(Path(__file__).with_name("feed_origin.py")),
        "--host", HOST, "--port", str(port),
    ]  # fmt: skip
    log_path = folder / "feed-origin.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    server = ServerProcess("feed-origin", process, HOST, port, folder, log_path)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return OriginControl(server, folder)


# ---------------------------------------------------------------- HTTP client side


@dataclass
class Got:
    status: int
    headers: dict[str, str]
    body: bytes
    wire: int  # status line + header block + body, as received


def new_session() -> aiohttp.ClientSession:
    # No Accept-Encoding: the byte counts are for uncompressed answers, like the origin's.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=SUBSCRIBERS, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding", "User-Agent"),
    )


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    body: str | bytes | None = None,
) -> Got:
    data = body.encode() if isinstance(body, str) else body
    async with session.request(
        method, url, headers=headers or {}, data=data, allow_redirects=False
    ) as answer:
        raw = await answer.read()
        version = "1.1" if answer.version is None else f"{answer.version[0]}.{answer.version[1]}"
        head = len(f"HTTP/{version} {answer.status} {answer.reason}\r\n")
        head += sum(len(k) + len(v) + 4 for k, v in answer.raw_headers) + 2
        return Got(answer.status, dict(answer.headers), raw, head + len(raw))


def auth(user: str) -> dict[str, str]:
    return basic(user, user + PASSWORD_SUFFIX)


def sync_body(token: str) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?><D:sync-collection xmlns:D="DAV:">'
        f"<D:sync-token>{token}</D:sync-token><D:sync-level>1</D:sync-level>"
        "<D:prop><D:getetag/></D:prop></D:sync-collection>"
    )


def multiget_body(hrefs: list[str]) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?><C:calendar-multiget xmlns:D="DAV:"'
        ' xmlns:C="urn:ietf:params:xml:ns:caldav"><D:prop><D:getetag/><C:calendar-data/>'
        "</D:prop>" + "".join(f"<D:href>{h}</D:href>" for h in hrefs) + "</C:calendar-multiget>"
    )


PROPFIND_TOKEN = (
    '<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"'
    ' xmlns:CS="http://calendarserver.org/ns/"><D:prop><D:sync-token/><CS:getctag/>'
    "</D:prop></D:propfind>"
)


def sync_answer(body: bytes) -> tuple[list[str], list[str], str]:
    """(changed hrefs, deleted hrefs, new token) of a sync-collection answer."""
    root = etree.fromstring(body)
    changed, deleted = [], []
    for response in root.findall("D:response", NS):
        href = response.findtext("D:href", namespaces=NS) or ""
        if response.find("D:propstat", NS) is not None:
            changed.append(href)
        elif "404" in (response.findtext("D:status", namespaces=NS) or ""):
            deleted.append(href)
    return changed, deleted, root.findtext("D:sync-token", namespaces=NS) or ""


def token_of(body: bytes) -> str:
    return etree.fromstring(body).findtext(".//D:sync-token", namespaces=NS) or ""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"unexpected answer: {what}")


# ---------------------------------------------------------------- part 1 and 4: real davproxy


@dataclass
class Deployment:
    origin: OriginControl
    proxy: ServerProcess
    config: Path

    def url(self, path: str) -> str:
        return self.proxy.url.rstrip("/") + path

    def admin_refresh(self, name: str) -> tuple[list[dict[str, Any]], float]:
        """``davproxy admin refresh NAME`` as an operator runs it; (its JSON rows, seconds)."""
        argv = [sys.executable, "-m", "davproxy", "admin", "-c", str(self.config), "--json"]
        started = time.perf_counter()
        done = subprocess.run(
            [*argv, "refresh", name], capture_output=True, text=True, timeout=300, cwd=REPO
        )
        seconds = time.perf_counter() - started
        try:
            rows: list[dict[str, Any]] = json.loads(done.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(
                f"admin refresh {name}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
            ) from None
        return rows, seconds


def users() -> list[str]:
    return [READER, *(f"user{n:03d}" for n in range(SUBSCRIBERS))]


def write_users(path: Path) -> Path:
    path.write_text(
        "".join(f"{u}:{hash_password(u + PASSWORD_SUFFIX)}\n" for u in users()), encoding="utf-8"
    )
    return path


async def wait_imported(session: aiohttp.ClientSession, deployment: Deployment) -> float:
    """Seconds until davproxy's own scheduler has imported the configured feed."""
    started = time.monotonic()
    url = deployment.url(f"{FEEDS}{BIG}/")
    headers = {**auth(READER), "Depth": "0", "Content-Type": "application/xml"}
    while time.monotonic() - started < WAIT_IMPORT:
        got = await call(session, "PROPFIND", url, headers, PROPFIND_TOKEN)
        if got.status == 207 and not token_of(got.body).endswith("-0"):
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise RuntimeError(f"davproxy did not import {BIG} within {WAIT_IMPORT:g} s")


@dataclass
class Download:
    label: str
    requests: int
    body: int
    wire: int
    note: str = ""


async def bytes_for_one_change(deployment: Deployment) -> dict[str, Any]:
    origin = deployment.origin
    collection = deployment.url(f"{FEEDS}{BIG}/")
    feed = deployment.url(f"{FEEDS}{BIG}.ics")
    report = {**auth(READER), "Depth": "0", "Content-Type": "application/xml; charset=utf-8"}
    reader = auth(READER)
    enhanced = {**reader, "Prefer": ENHANCED}
    result: dict[str, Any] = {}
    async with new_session() as session:
        result["davproxy_first_import_s"] = round(await wait_imported(session, deployment), 2)

        # the client's starting point: a full sync, and an enhanced GET without a token
        initial = await call(session, "REPORT", collection, report, sync_body(""))
        first, _, token = sync_answer(initial.body)
        check(initial.status == 207 and len(first) == FEED_EVENTS, "initial sync-collection")
        whole = await call(session, "GET", feed, enhanced)
        feed_token = whole.headers.get("Sync-Token", "")
        check(whole.status == 200 and bool(feed_token), "enhanced GET without a token")

        # one event changes at the origin; the operator forces a refresh
        await origin.serve(f"/{BIG}.ics", make_feed(FEED_EVENTS, changed=CHANGED_INDEX), etag=True)
        rows, seconds = deployment.admin_refresh(BIG)
        check(rows[0]["outcome"] == "changed" and rows[0]["changed"] == 1, f"refresh {rows}")
        result["admin_refresh_change_s"] = round(seconds, 2)

        # (a) RFC 6578 sync-collection with the previous token, then multiget of the changes
        delta = await call(session, "REPORT", collection, report, sync_body(token))
        changed, deleted, new_token = sync_answer(delta.body)
        check(delta.status == 207 and len(changed) == 1 and not deleted, "sync-collection delta")
        multiget = await call(session, "REPORT", collection, report, multiget_body(changed))
        check(
            multiget.status == 207 and multiget.body.count(b"moved one hour later") == 1,
            "calendar-multiget of the changed href",
        )
        # (b) enhanced GET with the previous Sync-Token
        delta_get = await call(session, "GET", feed, {**enhanced, "Sync-Token": feed_token})
        check(
            delta_get.status == 200 and delta_get.body.count(b"BEGIN:VEVENT") == 1,
            f"enhanced GET delta ({delta_get.status})",
        )
        # (c) the whole feed
        full = await call(session, "GET", feed, reader)
        check(full.status == 200 and full.body.count(b"BEGIN:VEVENT") == FEED_EVENTS, "full GET")

        # DTSTAMP-only churn at the origin: no change a client should have to download
        churned = make_feed(FEED_EVENTS, stamp=churn_stamp(1), changed=CHANGED_INDEX)
        await origin.serve(f"/{BIG}.ics", churned, etag=True)
        rows, _ = deployment.admin_refresh(BIG)
        churn_outcome = f"{rows[0]['outcome']} (+{rows[0]['added']} ~{rows[0]['changed']})"
        churn_sync = await call(session, "REPORT", collection, report, sync_body(new_token))
        churn_changed, churn_deleted, _ = sync_answer(churn_sync.body)
        churn_get = await call(
            session,
            "GET",
            feed,
            {**enhanced, "Sync-Token": delta_get.headers.get("Sync-Token", "")},
        )

    downloads = [
        Download("(a) sync-collection REPORT", 1, len(delta.body), delta.wire),
        Download("    + calendar-multiget (1 href)", 1, len(multiget.body), multiget.wire),
        Download(
            "(a) sync-collection + multiget, total",
            2,
            len(delta.body) + len(multiget.body),
            delta.wire + multiget.wire,
        ),
        Download("(b) enhanced GET with Sync-Token", 1, len(delta_get.body), delta_get.wire),
        Download("(c) full .ics GET", 1, len(full.body), full.wire),
    ]
    reference = [
        Download(
            "initial sync-collection (10,000 etags)",
            1,
            len(initial.body),
            initial.wire,
            "a new client's first sync",
        ),
        Download(
            "churn: sync-collection",
            1,
            len(churn_sync.body),
            churn_sync.wire,
            f"{len(churn_changed) + len(churn_deleted)} changes listed",
        ),
        Download(
            "churn: enhanced GET",
            1,
            len(churn_get.body),
            churn_get.wire,
            f"status {churn_get.status}",
        ),
    ]
    result.update(
        {
            "origin_feed_bytes": len(make_feed(FEED_EVENTS)),
            "downloads": [d.__dict__ for d in downloads],
            "reference": [d.__dict__ for d in reference],
            "churn_refresh_outcome": churn_outcome,
            "full_wire": full.wire,
        }
    )
    return result


async def many_subscribers(deployment: Deployment) -> dict[str, Any]:
    origin = deployment.origin
    path = "/shared.ics"
    source_url = origin.url(path)
    await origin.serve(path, make_feed(SHARED_EVENTS, name="Shared"), etag=True, delay=SHARED_DELAY)
    body = (
        '<?xml version="1.0" encoding="utf-8"?><D:mkcol xmlns:D="DAV:"'
        ' xmlns:CS="http://calendarserver.org/ns/"><D:set><D:prop><D:resourcetype>'
        "<D:collection/><CS:subscribed/></D:resourcetype><CS:source>"
        f"<D:href>{source_url}</D:href></CS:source></D:prop></D:set></D:mkcol>"
    )
    subscribers = users()[1:]
    before = await origin.hits(path)
    async with new_session() as session:

        async def subscribe(user: str) -> Got:
            headers = {**auth(user), "Content-Type": "application/xml; charset=utf-8"}
            return await call(session, "MKCOL", deployment.url(f"/{user}/shared/"), headers, body)

        started = time.perf_counter()
        created = await asyncio.gather(*(subscribe(u) for u in subscribers))
        create_s = time.perf_counter() - started
        statuses = sorted({g.status for g in created})
        after_create = await origin.hits(path)

        async def ctag(user: str) -> str:
            headers = {**auth(user), "Depth": "0", "Content-Type": "application/xml"}
            got = await call(
                session, "PROPFIND", deployment.url(f"/{user}/shared/"), headers, PROPFIND_TOKEN
            )
            return token_of(got.body) if got.status == 207 else f"status {got.status}"

        tokens = await asyncio.gather(*(ctag(u) for u in subscribers))
        rows, refresh_s = deployment.admin_refresh(source_url)
        after_refresh = await origin.hits(path)
    return {
        "method": "real davproxy: 100 users, one extended MKCOL each, all at once",
        "subscribers": len(subscribers),
        "mkcol_statuses": statuses,
        "mkcol_wall_s": round(create_s, 2),
        "origin_delay_s": SHARED_DELAY,
        "fetches_for_creation": after_create - before,
        "distinct_tokens_seen": len(set(tokens)),
        "forced_refresh_rows": len(rows),
        "forced_refresh_outcome": rows[0]["outcome"] if rows else "none",
        "fetches_for_forced_refresh": after_refresh - after_create,
        "admin_refresh_s": round(refresh_s, 2),
    }


def run_deployment(
    stack: ExitStack, workdir: Path, origin: OriginControl
) -> tuple[dict[str, Any], dict[str, Any]]:
    radicale = stack.enter_context(
        start_radicale(workdir / "radicale", auth="x-remote-user", log_level="warning")
    )
    tables = (
        f'[[feeds]]\nname = "{BIG}"\nurl = "{origin.url(f"/{BIG}.ics")}"\nusers = ["{READER}"]\n'
    )
    main, port = write_config(
        workdir / "davproxy",
        upstream_url=radicale.url,
        kind="radicale",
        mode="proxy-auth",
        htpasswd=write_users(workdir / "users.htpasswd"),
        mapping_extra=tables,
        server_extra='[feeds]\nallow_networks = ["127.0.0.0/8"]\n',
    )
    asyncio.run(origin.serve(f"/{BIG}.ics", make_feed(FEED_EVENTS), etag=True))
    proxy = stack.enter_context(start_davproxy(main, port=port))
    deployment = Deployment(origin, proxy, main)
    print(f"  davproxy at {proxy.url}, Radicale at {radicale.url}, origin at {origin.base}")
    started = time.monotonic()
    one_change = asyncio.run(bytes_for_one_change(deployment))
    print(f"  part 1 (bytes for one change) done in {time.monotonic() - started:.0f} s", flush=True)
    started = time.monotonic()
    subscribers = asyncio.run(many_subscribers(deployment))
    print(f"  part 4 (100 subscribers) done in {time.monotonic() - started:.0f} s", flush=True)
    for server in (proxy, radicale):
        if server.process.poll() is not None:
            raise EmbeddedError(f"{server.name} died; log {server.log_path}:\n{server.log_tail()}")
    proxy.stop()
    radicale.stop()
    return one_change, subscribers


# ---------------------------------------------------------------- part 2: CPU per refresh


@dataclass
class Timing:
    label: str
    outcome: str
    cpu_ms: list[float]
    wall_ms: list[float]
    target_ms: float | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "outcome": self.outcome,
            "runs": len(self.cpu_ms),
            "cpu_ms_median": round(statistics.median(self.cpu_ms), 2),
            "cpu_ms_min": round(min(self.cpu_ms), 2),
            "cpu_ms_max": round(max(self.cpu_ms), 2),
            "wall_ms_median": round(statistics.median(self.wall_ms), 2),
            "target_cpu_ms": self.target_ms,
        }


async def measured(work: Callable[[], Awaitable[T]]) -> tuple[T, float, float]:
    """(result, CPU ms of this whole process, wall ms); the split thread's CPU counts."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = await work()
    return result, (time.process_time() - cpu) * 1000, (time.perf_counter() - wall) * 1000


def describe(report: RefreshReport) -> str:
    if report.outcome in ("changed", "unchanged") and (report.added or report.changed):
        return f"{report.outcome} +{report.added} ~{report.changed} -{report.removed}"
    return report.outcome


def new_refresher(path: Path) -> tuple[Store, FeedStore, Fetcher, Refresher]:
    settings = FeedsConfig(allow_networks=("127.0.0.0/8",), max_bytes=IMPORT_MAX_BYTES)
    store = Store.open(path)
    feeds = FeedStore(store)
    fetcher = Fetcher(settings)
    return store, feeds, fetcher, Refresher(feeds, fetcher, settings)


async def refresh_cpu(origin: OriginControl, workdir: Path, reps: dict[str, int]) -> dict[str, Any]:
    path = "/inproc.ics"
    plain = make_feed(FEED_EVENTS)
    moved = make_feed(FEED_EVENTS, changed=CHANGED_INDEX)
    store, feeds, fetcher, refresher = new_refresher(workdir / "inproc.sqlite3")
    timings: list[Timing] = []
    churn = iter(range(2, 10_000))  # a new DTSTAMP set per churn run

    async def series(
        label: str,
        runs: int,
        before: Callable[[int], Awaitable[None]] | None,
        work: Callable[[int], Awaitable[RefreshReport]],
        target: float | None = None,
    ) -> RefreshReport:
        cpu: list[float] = []
        wall: list[float] = []
        reports: list[RefreshReport] = []
        for run in range(runs):
            if before is not None:
                await before(run)
            report, c, w = await measured(functools.partial(work, run))
            cpu.append(c)
            wall.append(w)
            reports.append(report)
        outcomes = ", ".join(sorted({describe(r) for r in reports}))
        timings.append(Timing(label, outcomes, cpu, wall, target))
        return reports[-1]

    try:
        await origin.serve(path, plain)
        with feeds.transaction():
            source_id = feeds.source_ensure(origin.url(path)).id

        async def refresh() -> RefreshReport:
            return await refresher.refresh(source_id)

        first = await series("first import (in this process)", 1, None, lambda _: refresh())

        state = {"moved": False}  # which of the two versions the store holds now

        def current(stamp: str = BASE_STAMP) -> bytes:
            if stamp == BASE_STAMP:
                return moved if state["moved"] else plain
            return make_feed(FEED_EVENTS, stamp, CHANGED_INDEX if state["moved"] else None)

        def flip() -> bytes:
            state["moved"] = not state["moved"]
            return current()

        async def serve_changed(run: int) -> None:
            await origin.serve(path, flip())

        async def serve_churn(run: int) -> None:
            await origin.serve(path, current(churn_stamp(next(churn))))

        async def apply(body: bytes) -> RefreshReport:
            source = feeds.source(source_id)
            assert source is not None
            return await refresher.apply(source, body)

        # unchanged: the origin sends the very same bytes again (no validators, so a 200)
        await series(
            "unchanged refresh (200, same bytes)",
            reps["fast"],
            None,
            lambda _: refresh(),
            TARGET_UNCHANGED_MS,
        )
        await series("  apply() only, same bytes", reps["fast"], None, lambda _: apply(plain))
        # one changed event (alternating between the two versions)
        await series("one-change refresh", reps["slow"], serve_changed, lambda _: refresh())
        changes = [flip() for _ in range(reps["slow"])]
        await series("  apply() only, one change", reps["slow"], None, lambda r: apply(changes[r]))
        # DTSTAMP-only churn: every byte sequence new, no object changed
        await series("DTSTAMP-only churn refresh", reps["churn"], serve_churn, lambda _: refresh())
        churn_bodies = [current(churn_stamp(next(churn))) for _ in range(reps["churn"])]
        await series(
            "  apply() only, DTSTAMP churn",
            reps["churn"],
            None,
            lambda run: apply(churn_bodies[run]),
        )

        # the origin sends an ETag: the first fetch stores it, then every refresh is a 304
        async def with_etag(run: int) -> None:
            if run == 0:
                await origin.serve(path, current(), etag=True)
                await refresh()

        await series("not-modified refresh (304)", reps["fast"], with_etag, lambda _: refresh())

        # split_feed alone (the parse every changed body needs)
        split_cpu, split_wall = [], []
        for _ in range(reps["split"]):
            cpu, wall = time.process_time(), time.perf_counter()
            split_feed(plain)
            split_cpu.append((time.process_time() - cpu) * 1000)
            split_wall.append((time.perf_counter() - wall) * 1000)
        timings.append(Timing("  split_feed() alone", "-", split_cpu, split_wall))

        # 100 concurrent refreshes of one source (the refresher shares one fetch)
        await origin.serve(path, flip(), delay=SHARED_DELAY)
        hits = await origin.hits(path)
        fetches = refresher.fetches
        reports = await asyncio.gather(*(refresher.refresh(source_id) for _ in range(100)))
        concurrent = {
            "method": "in-process: 100 concurrent Refresher.refresh() calls on one source",
            "calls": len(reports),
            "outcomes": sorted({describe(r) for r in reports}),
            "origin_fetches": await origin.hits(path) - hits,
            "refresher_fetches": refresher.fetches - fetches,
        }
    finally:
        await fetcher.close()
        store.close()
    return {
        "events": FEED_EVENTS,
        "feed_bytes": len(plain),
        "first": describe(first),
        "timings": [t.summary() for t in timings],
        "concurrent": concurrent,
    }


# ---------------------------------------------------------------- part 3: first import


def rss_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


async def import_once(url: str, path: Path) -> tuple[RefreshReport, float, float]:
    store, feeds, fetcher, refresher = new_refresher(path)
    try:
        with feeds.transaction():
            source_id = feeds.source_ensure(url).id
        return await measured(lambda: refresher.refresh(source_id))
    finally:
        await fetcher.close()
        store.close()


def import_child(events: int, url: str, workdir: Path) -> int:
    """Child process: first import of ``url`` into empty stores; prints one JSON line."""
    rss_before = rss_kb("VmRSS")
    peak_reset = True
    try:  # Linux: writing 5 resets the peak RSS (VmHWM) of this process
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        peak_reset = False
    report, cpu_ms, wall_ms = asyncio.run(import_once(url, workdir / f"import-{events}.sqlite3"))
    rss_peak = rss_kb("VmHWM")
    store_bytes = sum(
        p.stat().st_size for p in workdir.glob(f"import-{events}.sqlite3*") if p.is_file()
    )
    tracemalloc.start()
    traced, _, traced_wall = asyncio.run(import_once(url, workdir / f"traced-{events}.sqlite3"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    result = {
        "events": events,
        "outcome": describe(report),
        "traced_outcome": describe(traced),
        "cpu_s": round(cpu_ms / 1000, 2),
        "wall_s": round(wall_ms / 1000, 2),
        "tracemalloc_peak_mb": round(peak / 1e6, 1),
        "rss_growth_mb": (
            round((rss_peak - rss_before) / 1000, 1)
            if rss_peak is not None and rss_before is not None
            else None
        ),
        "rss_peak_reset": peak_reset,
        "store_mb": round(store_bytes / 1e6, 1),
    }
    print(json.dumps(result))
    return 0


async def serve_import_feeds(origin: OriginControl, sizes: tuple[int, ...]) -> dict[int, int]:
    lengths = {}
    for events in sizes:
        body = make_feed(events)
        lengths[events] = len(body)
        await origin.serve(f"/import-{events}.ics", body)
    return lengths


def first_imports(origin: OriginControl, workdir: Path, sizes: tuple[int, ...]) -> list[Any]:
    lengths = asyncio.run(serve_import_feeds(origin, sizes))
    results = []
    for events in sizes:
        started = time.monotonic()
        folder = workdir / f"import-{events}"
        folder.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, str(Path(__file__).resolve()), "--import-child", str(events),
            "--origin", origin.url(f"/import-{events}.ics"), "--workdir", str(folder),
        ]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"import child for {events} events failed:\n{done.stderr}")
        result = json.loads(lines[-1])
        result["feed_mb"] = round(lengths[events] / 1e6, 1)
        results.append(result)
        shutil.rmtree(folder, ignore_errors=True)
        print(
            f"  part 3: first import of {events:,} events done in"
            f" {time.monotonic() - started:.0f} s",
            flush=True,
        )
    return results


# ---------------------------------------------------------------- report


def ratio_text(part: int, whole: int) -> str:
    return f"1/{whole / part:,.0f}" if part else "0"


def print_report(results: dict[str, Any]) -> None:
    print("\n== 1. Bytes a syncing client downloads for one changed event")
    one = results["one_change"]
    print(
        f"   {FEED_EVENTS:,}-event feed (origin body {one['origin_feed_bytes']:,} B), real"
        f" davproxy + Radicale; refresh forced with `davproxy admin refresh`"
    )
    full = one["full_wire"]
    header = f"   {'download':<40} {'reqs':>4} {'body B':>11} {'wire B':>11} {'vs full':>10}"
    print(header)
    print("   " + "-" * (len(header) - 3))
    for d in one["downloads"]:
        print(
            f"   {d['label']:<40} {d['requests']:>4} {d['body']:>11,} {d['wire']:>11,}"
            f" {ratio_text(d['wire'], full):>10}"
        )
    for d in one["reference"]:
        print(
            f"   {d['label']:<40} {d['requests']:>4} {d['body']:>11,} {d['wire']:>11,}"
            f"   ({d['note']})"
        )
    print(
        "   wire B = status line + headers + body as received; no compression on either side."
        f"\n   DTSTAMP-only churn refresh: {one['churn_refresh_outcome']}."
        f" davproxy's scheduler imported the feed {one['davproxy_first_import_s']} s after"
        f" start; `admin refresh` of the change took {one['admin_refresh_change_s']} s"
        " (a new process)."
    )

    print(f"\n== 2. CPU per refresh, {FEED_EVENTS:,} events, in this process")
    cpu = results["refresh_cpu"]
    header = (
        f"   {'case':<38} {'outcome':<22} {'runs':>4} {'CPU ms (median)':>15}"
        f" {'min-max':>15} {'wall ms':>8}"
    )
    print(header)
    print("   " + "-" * (len(header) - 3))
    for t in cpu["timings"]:
        spread = f"{t['cpu_ms_min']:.1f}-{t['cpu_ms_max']:.1f}"
        print(
            f"   {t['label']:<38} {t['outcome']:<22} {t['runs']:>4} {t['cpu_ms_median']:>15.1f}"
            f" {spread:>15} {t['wall_ms_median']:>8.1f}"
        )
    print(
        "   CPU = time.process_time() of the whole process (the split runs in a worker thread"
        "\n   and counts); the origin is another process. refresh = fetch + apply; apply() ="
        " hash,\n   split, diff, store."
    )
    c = cpu["concurrent"]
    print(
        f"   {c['calls']} concurrent refresh() calls on one source: {c['origin_fetches']}"
        f" origin fetch(es), outcome {', '.join(c['outcomes'])}"
    )

    print("\n== 3. First import (fresh child process and empty store per size)")
    header = (
        f"   {'events':>8} {'feed MB':>8} {'CPU s':>7} {'wall s':>7} {'tracemalloc peak MB':>20}"
        f" {'RSS growth MB':>14} {'store MB':>9}  outcome"
    )
    print(header)
    print("   " + "-" * (len(header) - 3))
    for r in results["imports"]:
        rss = "n/a" if r["rss_growth_mb"] is None else f"{r['rss_growth_mb']:.1f}"
        print(
            f"   {r['events']:>8,} {r['feed_mb']:>8.1f} {r['cpu_s']:>7.2f} {r['wall_s']:>7.2f}"
            f" {r['tracemalloc_peak_mb']:>20.1f} {rss:>14} {r['store_mb']:>9.1f}  {r['outcome']}"
        )
    if not results["quick"]:
        print(
            "   The 100,000-event feed exceeds davproxy's default [feeds] max_bytes (20 MiB);"
            f" this run\n   raises it to {IMPORT_MAX_BYTES // 2**20} MiB."
        )
    print(
        "   CPU/wall from a run without tracemalloc; the peak from a second, traced run."
        "\n   RSS growth = peak RSS (VmHWM, reset first) minus RSS before the import."
    )

    print("\n== 4. 100 subscribers of one source")
    s = results["subscribers"]
    print(f"   {s['method']}")
    print(
        f"   MKCOL answers: {s['mkcol_statuses']} in {s['mkcol_wall_s']} s (origin answers after"
        f" {s['origin_delay_s']} s)"
        f"\n   origin fetches while the {s['subscribers']} subscriptions were created:"
        f" {s['fetches_for_creation']}"
        f"\n   sync tokens the {s['subscribers']} subscribers see: {s['distinct_tokens_seen']}"
        f" distinct"
        f"\n   `admin refresh <source URL>` (matches all {s['subscribers']}):"
        f" {s['fetches_for_forced_refresh']} origin fetch(es), outcome"
        f" {s['forced_refresh_outcome']}"
    )

    print("\nTargets")
    for verdict in results["verdicts"]:
        print(
            f"  {'PASS' if verdict['pass'] else 'FAIL'}  {verdict['target']:<58} {verdict['value']}"
        )


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    one = results["one_change"]
    by_label = {d["label"]: d for d in one["downloads"]}
    full = one["full_wire"]
    found = []
    for label in ("(a) sync-collection + multiget, total", "(b) enhanced GET with Sync-Token"):
        wire = by_label[label]["wire"]
        found.append(
            {
                "target": f"{label.split(' ', 1)[0]} bytes for one change <= 1/1000 of full",
                "value": f"{ratio_text(wire, full)} ({wire:,} of {full:,} B)",
                "pass": wire <= full * TARGET_RATIO,
            }
        )
    unchanged = next(t for t in results["refresh_cpu"]["timings"] if t["target_cpu_ms"])
    found.append(
        {
            "target": f"unchanged refresh CPU < {TARGET_UNCHANGED_MS:g} ms"
            f" ({FEED_EVENTS:,} events)",
            "value": f"{unchanged['cpu_ms_median']:.1f} ms median",
            "pass": unchanged["cpu_ms_median"] < TARGET_UNCHANGED_MS,
        }
    )
    first = next(r for r in results["imports"] if r["events"] == FEED_EVENTS)
    ratio = first["tracemalloc_peak_mb"] / first["feed_mb"]
    found.append(
        {
            "target": f"first import peak memory <= {TARGET_IMPORT_MEMORY:g}x the feed"
            f" ({FEED_EVENTS:,} events)",
            "value": f"{ratio:.1f}x ({first['tracemalloc_peak_mb']} MB for {first['feed_mb']} MB)",
            "pass": ratio <= TARGET_IMPORT_MEMORY,
        }
    )
    s = results["subscribers"]
    total = s["fetches_for_creation"] + s["fetches_for_forced_refresh"]
    found.append(
        {
            "target": f"{s['subscribers']} subscribers: 1 fetch to subscribe, 1 per refresh",
            "value": f"{s['fetches_for_creation']} + {s['fetches_for_forced_refresh']}",
            "pass": total == 2 and s["mkcol_statuses"] == [201],
        }
    )
    return found


def git_describe() -> str | None:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


# ---------------------------------------------------------------- main


def run(args: argparse.Namespace, stack: ExitStack, workdir: Path) -> int:
    begun = time.monotonic()
    reps = REPS_QUICK if args.quick else REPS_FULL
    sizes = IMPORT_SIZES[:1] if args.quick else IMPORT_SIZES
    load = os.getloadavg()
    print(
        f"davproxy feeds benchmark{' (quick)' if args.quick else ''}; work folder {workdir}"
        f"\n  host: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True,
    )
    if load[0] > 0.5 * (os.cpu_count() or 1):
        print("  WARNING: the host is busy before the benchmark starts; expect noisy wall times")
    origin = start_origin(workdir / "origin")
    stack.callback(origin.server.stop)

    one_change, subscribers = run_deployment(stack, workdir, origin)
    started = time.monotonic()
    refresh = asyncio.run(refresh_cpu(origin, workdir, reps))
    print(f"  part 2 (CPU per refresh) done in {time.monotonic() - started:.0f} s", flush=True)
    imports = first_imports(origin, workdir, sizes)

    results: dict[str, Any] = {
        "quick": args.quick,
        "one_change": one_change,
        "refresh_cpu": refresh,
        "imports": imports,
        "subscribers": subscribers,
    }
    results["verdicts"] = verdicts(results)
    print_report(results)
    results["meta"] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(time.monotonic() - begun, 1),
        "git": git_describe(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_start": list(load),
        "load_average_at_end": list(os.getloadavg()),
    }
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"feeds-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(
        f"\nResults written to {path.relative_to(REPO)} ({time.monotonic() - begun:.0f} s in all)"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="davproxy feeds benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer runs, no 100,000 import")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, data)")
    parser.add_argument("--import-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--origin", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.import_child is not None:
        return import_child(args.import_child, args.origin, args.workdir)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="davproxy-feeds-bench-"))
    try:
        with ExitStack() as stack:  # stops every server, in reverse order, on any exit
            return run(args, stack, workdir)
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    except (EmbeddedError, RuntimeError) as exc:
        print(f"\nbenchmark aborted: {exc}", file=sys.stderr)
        args.keep = True
        return 1
    finally:
        if args.keep:
            print(f"work folder kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
