"""200 concurrent clients on loopback for 60 s: passthrough, sharee traffic and
notification sync through one davproxy in front of a real Radicale.

Every answer is checked (status, and for the sharee that no owner path leaks); any
5xx, connection error, timeout or unexpected status counts as an error.  The run
stops by itself at ``SOAK_LOAD_SECONDS`` (60) or ``SOAK_LOAD_MAX_REQUESTS`` (200,000),
whichever comes first, and prints a table of the figures: requests, errors, p50/p99
latency per kind, davproxy's RSS at start and end.  Radicale sits behind davproxy's
default ``max_connections = 2``, so Radicale-bound latencies are mostly queueing in
davproxy; that is expected.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from lxml import etree

from tests.integration.test_sharing import reply_body, share_body

from .conftest import Site, auth, event, session

pytestmark = pytest.mark.soak

CLIENTS = int(os.environ.get("SOAK_LOAD_CLIENTS", "200"))
SECONDS = float(os.environ.get("SOAK_LOAD_SECONDS", "60"))
MAX_REQUESTS = int(os.environ.get("SOAK_LOAD_MAX_REQUESTS", "200000"))
BIG_EVENTS = 50
SHARED_EVENTS = 10
PUT_SLOTS = 10  # sharee PUTs overwrite these, so the shared calendar stays small

BIG = "/alice/big/"
SHARED = "/alice/shared/"
NS = {"D": "DAV:"}
XML = {"Content-Type": "application/xml; charset=utf-8"}
SHARING = {"Content-Type": "application/davsharing+xml; charset=utf-8"}
PROPFIND_ETAGS = (
    '<D:propfind xmlns:D="DAV:"><D:prop><D:getetag/><D:getcontenttype/>'
    "<D:displayname/></D:prop></D:propfind>"
)
SYNC = (
    '<D:sync-collection xmlns:D="DAV:"><D:sync-token>{token}</D:sync-token>'
    "<D:sync-level>1</D:sync-level><D:prop><D:getetag/></D:prop></D:sync-collection>"
)
NOTE_SYNC = (
    '<D:sync-collection xmlns:D="DAV:"><D:sync-token>{token}</D:sync-token>'
    "<D:sync-level>1</D:sync-level><D:prop><D:notificationtype/><D:getetag/></D:prop>"
    "</D:sync-collection>"
)

# kind -> (weight, user, who is served): the mix every client draws from
KINDS = {
    "alice GET event": (18, "passthrough"),
    "alice PROPFIND d1": (7, "passthrough"),
    "bob PROPFIND d1 copy": (10, "sharee"),
    "bob GET via copy": (15, "sharee"),
    "bob sync copy": (8, "sharee"),
    "bob PUT via copy": (4, "sharee"),
    "notification sync": (28, "notifications"),
    "notification PROPFIND": (10, "notifications"),
}


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    samples: list[str] = field(default_factory=list)  # the first few errors, verbatim
    requests: int = 0

    def error(self, kind: str, what: str) -> None:
        self.errors[kind] += 1
        if len(self.samples) < 10:
            self.samples.append(f"{kind}: {what}")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[index]


async def prepare(http: aiohttp.ClientSession, url: str) -> tuple[str, dict[str, str]]:
    """alice's 50-event calendar and her calendar shared read-write with bob (accepted);
    carol holds an open invitation.  Returns bob's copy and each user's sync token."""

    async def call(user: str, method: str, path: str, body: str | None = None, **h: str) -> int:
        async with http.request(
            method, url + path, data=body, headers={**auth(user), **h}
        ) as answer:
            await answer.read()
            return answer.status

    for user in ("bob", "carol"):
        assert await call(user, "PROPFIND", f"/{user}/", Depth="0") == 207
    assert await call("alice", "MKCALENDAR", BIG) == 201
    assert await call("alice", "MKCALENDAR", SHARED) == 201
    ics = {"Content-Type": "text/calendar"}
    for n in range(BIG_EVENTS):
        assert await call("alice", "PUT", f"{BIG}e{n}.ics", event(f"big-{n}"), **ics) == 201
    for n in range(SHARED_EVENTS):
        assert await call("alice", "PUT", f"{SHARED}s{n}.ics", event(f"sh-{n}"), **ics) == 201
    body = share_body(("mailto:bob@example.org", "read-write"))
    assert await call("alice", "POST", SHARED, body, **SHARING) == 204
    body = share_body(("mailto:carol@example.org", "read"))
    assert await call("alice", "POST", BIG, body, **SHARING) == 204
    async with http.request(
        "PROPFIND",
        f"{url}/.davproxy/notifications/bob/",
        data=PROPFIND_ETAGS,
        headers={**auth("bob"), **XML, "Depth": "1"},
    ) as answer:
        hrefs = [h.text for h in etree.fromstring(await answer.read()).iterfind(".//D:href", NS)]
    invite = next(h for h in hrefs if h and h.endswith(".xml"))
    async with http.post(
        url + invite, data=reply_body(True), headers={**auth("bob"), **SHARING}
    ) as answer:
        assert answer.status == 201, await answer.text()
        copy = "/" + answer.headers["Location"].split("://", 1)[1].split("/", 1)[1]
    tokens = {}
    for user in ("alice", "bob", "carol"):
        async with http.request(
            "REPORT",
            f"{url}/.davproxy/notifications/{user}/",
            data=NOTE_SYNC.format(token=""),
            headers={**auth(user), **XML},
        ) as answer:
            assert answer.status == 207
            tokens[user] = etree.fromstring(await answer.read()).findtext("D:sync-token", None, NS)
    return copy, tokens


def request_for(
    kind: str, rng: random.Random, copy: str, tokens: dict[str, str]
) -> tuple[str, str, str, str | None, dict[str, str], frozenset[int]]:
    """(user, method, path, body, headers, statuses that are right) for one request."""
    if kind == "alice GET event":
        return "alice", "GET", f"{BIG}e{rng.randrange(BIG_EVENTS)}.ics", None, {}, frozenset({200})
    if kind == "alice PROPFIND d1":
        return "alice", "PROPFIND", BIG, PROPFIND_ETAGS, {**XML, "Depth": "1"}, frozenset({207})
    if kind == "bob PROPFIND d1 copy":
        return "bob", "PROPFIND", copy, PROPFIND_ETAGS, {**XML, "Depth": "1"}, frozenset({207})
    if kind == "bob GET via copy":
        path = f"{copy}s{rng.randrange(SHARED_EVENTS)}.ics"
        return "bob", "GET", path, None, {}, frozenset({200})
    if kind == "bob sync copy":
        return "bob", "REPORT", copy, SYNC.format(token=""), XML, frozenset({207})
    if kind == "bob PUT via copy":
        slot = rng.randrange(PUT_SLOTS)
        body = event(f"load-{slot}", f"Bob {rng.randrange(10**6)}")
        headers = {"Content-Type": "text/calendar"}
        return "bob", "PUT", f"{copy}load-{slot}.ics", body, headers, frozenset({201, 204})
    user = rng.choice(("alice", "bob", "carol"))
    base = f"/.davproxy/notifications/{user}/"
    if kind == "notification sync":
        token = tokens[user] if rng.random() < 0.5 else ""
        return user, "REPORT", base, NOTE_SYNC.format(token=token), XML, frozenset({207})
    return user, "PROPFIND", base, PROPFIND_ETAGS, {**XML, "Depth": "1"}, frozenset({207})


async def client(
    number: int,
    http: aiohttp.ClientSession,
    url: str,
    copy: str,
    tokens: dict[str, str],
    deadline: float,
    stats: Stats,
) -> None:
    rng = random.Random(number)
    names, weights = list(KINDS), [w for w, _ in KINDS.values()]
    while time.monotonic() < deadline and stats.requests < MAX_REQUESTS:
        kind = rng.choices(names, weights)[0]
        user, method, path, body, headers, right = request_for(kind, rng, copy, tokens)
        stats.requests += 1
        started = time.perf_counter()
        try:
            async with http.request(
                method, url + path, data=body, headers={**auth(user), **headers}
            ) as answer:
                content = await answer.read()
                status = answer.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            stats.error(kind, f"{type(exc).__name__}: {exc}")
            continue
        stats.latencies[kind].append(time.perf_counter() - started)
        if status not in right:
            stats.error(kind, f"{status} {content[:200]!r}")
        elif kind.startswith("bob") and method != "PUT" and SHARED.encode() in content:
            stats.error(kind, f"the owner's path leaked: {content[:200]!r}")


async def test_200_clients_for_60_seconds(site: Site) -> None:
    davproxy = await site.start_async()
    try:
        async with session(limit=CLIENTS + 50, timeout=120) as http:
            copy, tokens = await prepare(http, site.url)
            pid = davproxy.process.pid
            rss_start = rss_kib(pid)
            stats = Stats()
            started = time.monotonic()
            deadline = started + SECONDS
            peak = rss_start

            async def watch() -> None:
                nonlocal peak
                while time.monotonic() < deadline:
                    peak = max(peak, rss_kib(pid))
                    await asyncio.sleep(1)

            watcher = asyncio.create_task(watch())
            await asyncio.gather(
                *(client(n, http, site.url, copy, tokens, deadline, stats) for n in range(CLIENTS))
            )
            elapsed = time.monotonic() - started
            await watcher
            rss_end = rss_kib(pid)
            peak = max(peak, rss_end)
            assert davproxy.process.poll() is None, "davproxy died under load"
    finally:
        davproxy.stop()

    done = sum(len(v) for v in stats.latencies.values())
    errors = sum(stats.errors.values())
    lines = [
        f"load: {CLIENTS} clients, {elapsed:.1f} s, {stats.requests} requests"
        f" ({stats.requests / elapsed:.0f} req/s), {errors} errors;"
        f" davproxy RSS start {rss_start / 1024:.1f} MB, end {rss_end / 1024:.1f} MB,"
        f" peak {peak / 1024:.1f} MB",
        "",
        "| kind | served by | requests | errors | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    everything: list[float] = []
    for kind, (_, served) in KINDS.items():
        values = stats.latencies.get(kind, [])
        everything += values
        lines.append(
            f"| {kind} | {served} | {len(values) + stats.errors.get(kind, 0)} |"
            f" {stats.errors.get(kind, 0)} | {percentile(values, 50) * 1000:.1f} |"
            f" {percentile(values, 99) * 1000:.1f} | {max(values, default=0) * 1000:.1f} |"
        )
    lines.append(
        f"| all | | {stats.requests} | {errors} | {percentile(everything, 50) * 1000:.1f} |"
        f" {percentile(everything, 99) * 1000:.1f} | {max(everything, default=0) * 1000:.1f} |"
    )
    print("\n" + "\n".join(lines))
    assert errors == 0, "\n".join(stats.samples)
    assert done == stats.requests
    assert rss_end < 1.5 * rss_start + 30 * 1024, f"RSS grew {rss_start} -> {rss_end} KiB"
