"""Passthrough benchmark: the same requests directly to an upstream and through davproxy.

Two upstreams, each with davproxy (proxy-auth mode, htpasswd) in front:

* a real Radicale (``http_x_remote_user``), calendar ``/alice/bench/`` with 200 events;
* a trivially fast aiohttp server (``bench/fast_upstream.py``, its own process) that
  answers canned copies of Radicale's own answers, so davproxy's overhead is isolated.

For each upstream: PROPFIND Depth 1 on the calendar and GET of one event, at
concurrency 1 and 16.  Direct requests send ``X-Remote-User: alice``; requests through
davproxy send ``Authorization: Basic alice:alice-pw``.  Direct and proxied rounds are
interleaved A-B-B-A (each side runs half its budget twice) so slow drift of the host
does not favour one side.  Results are printed as a table with verdicts and written as
JSON to ``bench/results/``.

    python bench/passthrough.py            # full run, a couple of minutes on 2 cores
    python bench/passthrough.py --quick    # budgets / 5, a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from davproxy.ops.embedded import (  # noqa: E402
    EmbeddedError,
    ServerProcess,
    free_port,
    start_davproxy,
    start_radicale,
)
from tests.helpers import USERS, basic, write_config, write_htpasswd  # noqa: E402

HOST = "127.0.0.1"
USER = "alice"
CALENDAR = f"/{USER}/bench/"
EVENTS = 200
EVENT_SIZE = 470  # bytes, as in specs/upstreams.md section B
GET_PATH = f"{CALENDAR}event-0042.ics"
WARMUP = 10
REQUEST_TIMEOUT = 120.0  # seconds, per request (a PROPFIND at conc 16 takes ~1 s)

PROPFIND_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:propfind xmlns:D="DAV:"><D:prop>'
    b"<D:getetag/><D:getcontenttype/><D:resourcetype/>"
    b"</D:prop></D:propfind>\n"
)
PROPFIND_HEADERS = {"Depth": "1", "Content-Type": "application/xml; charset=utf-8"}

# Full-run request budgets per (upstream, request, concurrency); --quick divides by 5.
BUDGETS: dict[tuple[str, str, int], int] = {
    ("radicale", "PROPFIND", 1): 60,
    ("radicale", "PROPFIND", 16): 120,
    ("radicale", "GET", 1): 1000,
    ("radicale", "GET", 16): 2000,
    ("fast", "PROPFIND", 1): 1000,
    ("fast", "PROPFIND", 16): 2000,
    ("fast", "GET", 1): 2000,
    ("fast", "GET", 16): 4000,
}
CONCURRENCIES = (1, 16)
TARGET_ADDED_MS = 1.0
TARGET_RATIO = 0.9
OTHER_CPU_WARN = 0.10  # warn when unrelated processes take more of the host than this

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ---------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of one process (all its threads), from /proc; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # fields[0] is field 3 ("state")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def system_busy_seconds() -> float | None:
    """CPU time all processes on the host spent busy (every core), from /proc/stat."""
    try:
        line = Path("/proc/stat").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    # cpu user nice system idle iowait irq softirq steal ...
    values = [int(v) for v in line.split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


def start_fast_upstream(folder: Path, propfind: bytes, get: bytes, etag: str) -> ServerProcess:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "propfind.xml").write_bytes(propfind)
    (folder / "event.ics").write_bytes(get)
    port = free_port(HOST)
    argv = [
        sys.executable, str(Path(__file__).with_name("fast_upstream.py")),
        "--host", HOST, "--port", str(port),
        "--propfind", str(folder / "propfind.xml"), "--get", str(folder / "event.ics"),
        "--etag", etag,
    ]  # fmt: skip
    log_path = folder / "fast-upstream.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    server = ServerProcess("fast-upstream", process, HOST, port, folder, log_path)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def start_proxy_for(
    folder: Path,
    upstream: ServerProcess,
    kind: str,
    htpasswd: Path,
    max_connections: int | None = None,
) -> ServerProcess:
    mapping_extra = ""
    if kind == "generic":
        mapping_extra = (
            '[layout]\nprincipal = "{user}/"\ncalendar_home = "{user}/"\n'
            'addressbook_home = "{user}/"\n'
        )
    main, port = write_config(
        folder,
        upstream_url=upstream.url,
        kind=kind,
        mode="proxy-auth",
        htpasswd=htpasswd,
        mapping_extra=mapping_extra,
        upstream_extra=f"max_connections = {max_connections}" if max_connections else "",
    )
    return start_davproxy(main, port=port)


def check_alive(*servers: ServerProcess) -> None:
    for server in servers:
        if server.process.poll() is not None:
            raise EmbeddedError(
                f"{server.name} exited with code {server.process.returncode} during the"
                f" benchmark; log {server.log_path}:\n{server.log_tail()}"
            )


# ---------------------------------------------------------------- client


def new_session(concurrency: int) -> aiohttp.ClientSession:
    # No Accept-Encoding: Radicale would gzip the PROPFIND answer otherwise, and the
    # spec's reference numbers are for the plain 60 KB answer.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max(concurrency, 1), limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding", "User-Agent"),
    )


@dataclass
class Request:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    expect_status: int
    expect_length: int | None  # body length every answer must have, when known


@dataclass
class Round:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    elapsed: float = 0.0


async def run_round(
    session: aiohttp.ClientSession, req: Request, total: int, concurrency: int
) -> Round:
    """``concurrency`` workers share ``total`` requests; every answer is checked."""
    result = Round()
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            problem = None
            try:
                async with session.request(
                    req.method, req.url, headers=req.headers, data=req.body, allow_redirects=False
                ) as response:
                    body = await response.read()
                    if response.status != req.expect_status:
                        problem = f"status {response.status}: {body[:120]!r}"
                    elif req.expect_length is not None and len(body) != req.expect_length:
                        problem = f"body of {len(body)} bytes, expected {req.expect_length}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"{exc.__class__.__name__}: {exc}"
            if problem is None:
                result.latencies.append(time.perf_counter() - started)
            else:
                result.errors += 1
                if len(result.error_samples) < 5:
                    result.error_samples.append(problem)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, total))))
    result.elapsed = time.perf_counter() - started
    return result


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..1)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class SideStats:
    requests: int
    ok: int
    errors: int
    elapsed_s: float
    req_per_s: float
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    cpu_ms_per_req: dict[str, float | None]  # process name (or "other") -> CPU ms per request
    other_cpu_share: float | None  # CPU used by unrelated processes, share of all cores
    error_samples: list[str]


def summarise(rounds: list[Round], cpu: dict[str, float | None]) -> SideStats:
    latencies = sorted(x for r in rounds for x in r.latencies)
    ok = len(latencies)
    errors = sum(r.errors for r in rounds)
    elapsed = sum(r.elapsed for r in rounds)
    total = ok + errors

    def ms(value: float) -> float:
        return round(value * 1000, 3)

    return SideStats(
        requests=total,
        ok=ok,
        errors=errors,
        elapsed_s=round(elapsed, 3),
        req_per_s=round(ok / elapsed, 2) if elapsed > 0 else 0.0,
        median_ms=ms(statistics.median(latencies)) if latencies else math.nan,
        p90_ms=ms(percentile(latencies, 0.90)),
        p99_ms=ms(percentile(latencies, 0.99)),
        mean_ms=ms(statistics.fmean(latencies)) if latencies else math.nan,
        max_ms=ms(latencies[-1]) if latencies else math.nan,
        cpu_ms_per_req={
            name: (round(value * 1000 / total, 3) if value is not None and total else None)
            for name, value in cpu.items()
        },
        other_cpu_share=(
            round(other / (elapsed * (os.cpu_count() or 1)), 3)
            if (other := cpu.get("other")) is not None and elapsed > 0
            else None
        ),
        error_samples=[s for r in rounds for s in r.error_samples][:5],
    )


@dataclass
class Scenario:
    upstream: str  # "radicale" | "fast"
    request: str  # "PROPFIND" | "GET"
    concurrency: int
    budget: int
    direct: SideStats
    proxy: SideStats

    @property
    def label(self) -> str:
        name = "Radicale" if self.upstream == "radicale" else "fast upstream"
        what = "PROPFIND D1" if self.request == "PROPFIND" else "GET event"
        return f"{name}: {what}"

    @property
    def ratio(self) -> float:
        return self.proxy.req_per_s / self.direct.req_per_s if self.direct.req_per_s else math.nan

    @property
    def added_ms(self) -> float:
        return self.proxy.median_ms - self.direct.median_ms


class Target:
    """One upstream reached directly and through its davproxy."""

    def __init__(
        self,
        name: str,
        upstream: ServerProcess,
        proxy: ServerProcess,
        requests: dict[str, dict[str, Request]],
    ) -> None:
        self.name = name
        self.upstream = upstream
        self.proxy = proxy
        self.requests = requests  # request kind -> side -> Request

    def processes(self) -> dict[str, int]:
        return {
            "client": os.getpid(),
            "upstream": self.upstream.process.pid,
            "davproxy": self.proxy.process.pid,
        }


async def measure(target: Target, kind: str, concurrency: int, budget: int) -> Scenario:
    sides = ("direct", "proxy")
    half = max(budget // 2, concurrency)
    sessions = {side: new_session(concurrency) for side in sides}
    rounds: dict[str, list[Round]] = {side: [] for side in sides}
    cpu: dict[str, dict[str, float | None]] = {side: {} for side in sides}
    try:
        for side in sides:
            warm = await run_round(
                sessions[side], target.requests[kind][side], WARMUP, min(concurrency, WARMUP)
            )
            if warm.errors:
                raise RuntimeError(
                    f"{target.name} {kind} {side}: warm-up failed: {warm.error_samples[0]}"
                )
        for side in ("direct", "proxy", "proxy", "direct"):  # A-B-B-A
            pids = target.processes()
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            before["system"] = system_busy_seconds()
            rounds[side].append(
                await run_round(sessions[side], target.requests[kind][side], half, concurrency)
            )
            spent: dict[str, float | None] = {}
            for name in (*pids, "system"):
                now = system_busy_seconds() if name == "system" else cpu_seconds(pids[name])
                then = before[name]
                spent[name] = now - then if now is not None and then is not None else None
            # CPU that none of the benchmark's processes used: other work on the host.
            ours = [spent[name] for name in pids]
            system = spent.pop("system")
            spent["other"] = (
                max(0.0, system - sum(ours))  # type: ignore[arg-type]
                if system is not None and None not in ours
                else None
            )
            for name, value in spent.items():
                previous = cpu[side].get(name, 0.0)
                cpu[side][name] = None if value is None or previous is None else previous + value
            check_alive(target.upstream, target.proxy)
    finally:
        for session in sessions.values():
            await session.close()
    return Scenario(
        upstream=target.name,
        request=kind,
        concurrency=concurrency,
        budget=2 * half,
        direct=summarise(rounds["direct"], cpu["direct"]),
        proxy=summarise(rounds["proxy"], cpu["proxy"]),
    )


# ---------------------------------------------------------------- data


def make_event(number: int) -> bytes:
    head = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//davproxy bench//EN\r\n"
        "BEGIN:VEVENT\r\n"
        f"UID:bench-{number:04d}@example.org\r\nDTSTAMP:20261101T090000Z\r\n"
        f"DTSTART:202612{1 + number % 28:02d}T{8 + number % 10:02d}0000Z\r\n"
        f"DTEND:202612{1 + number % 28:02d}T{9 + number % 10:02d}0000Z\r\n"
        f"SUMMARY:Benchmark event {number}\r\nDESCRIPTION:"
    )
    tail = "\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    pad = EVENT_SIZE - len(head) - len(tail)
    return (head + "x" * max(pad, 0) + tail).encode()


async def populate(radicale_url: str) -> tuple[bytes, bytes, str]:
    """MKCALENDAR and 200 PUTs directly; returns the PROPFIND answer, the GET answer, its ETag."""
    base = radicale_url.rstrip("/")
    trusted = {"X-Remote-User": USER}
    async with new_session(4) as session:
        async with session.request("MKCALENDAR", base + CALENDAR, headers=trusted) as response:
            if response.status != 201:
                raise RuntimeError(
                    f"MKCALENDAR {CALENDAR}: {response.status} {await response.text()}"
                )

        numbers = iter(range(EVENTS))

        async def putter() -> None:
            for number in numbers:
                url = f"{base}{CALENDAR}event-{number:04d}.ics"
                headers = trusted | {"Content-Type": "text/calendar; charset=utf-8"}
                async with session.put(url, headers=headers, data=make_event(number)) as response:
                    if response.status not in (201, 204):
                        raise RuntimeError(f"PUT {url}: {response.status} {await response.text()}")

        await asyncio.gather(*(putter() for _ in range(4)))

        headers = trusted | PROPFIND_HEADERS
        async with session.request(
            "PROPFIND", base + CALENDAR, headers=headers, data=PROPFIND_BODY
        ) as r:
            propfind = await r.read()
            if r.status != 207:
                raise RuntimeError(f"PROPFIND {CALENDAR}: {r.status}")
        async with session.get(base + GET_PATH, headers=trusted) as r:
            event = await r.read()
            if r.status != 200:
                raise RuntimeError(f"GET {GET_PATH}: {r.status}")
            etag = r.headers.get("ETag", '"bench"')
    found = len(re.findall(rb"<(?:[A-Za-z0-9_]+:)?response[ >]", propfind))
    if found < EVENTS:
        raise RuntimeError(f"PROPFIND listed {found} responses, expected {EVENTS} events + 1")
    return propfind, event, etag


def requests_for(
    direct_url: str, proxy_url: str, propfind_len: int, get_len: int
) -> dict[str, dict[str, Request]]:
    direct_auth = {"X-Remote-User": USER}
    proxy_auth = basic(USER, USERS[USER])
    result: dict[str, dict[str, Request]] = {}
    for kind in ("PROPFIND", "GET"):
        result[kind] = {}
        for side, base, auth in (
            ("direct", direct_url, direct_auth),
            ("proxy", proxy_url, proxy_auth),
        ):
            if kind == "PROPFIND":
                result[kind][side] = Request(
                    "PROPFIND", base.rstrip("/") + CALENDAR, auth | PROPFIND_HEADERS,
                    PROPFIND_BODY, 207, propfind_len,
                )  # fmt: skip
            else:
                result[kind][side] = Request(
                    "GET", base.rstrip("/") + GET_PATH, dict(auth), None, 200, get_len
                )
    return result


# ---------------------------------------------------------------- report


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def print_table(scenarios: list[Scenario]) -> None:
    header = (
        f"{'scenario':<26} {'conc':>4} {'n':>5} | {'req/s dir':>9} {'req/s dp':>9} {'ratio':>6} |"
        f" {'p50 dir':>8} {'p50 dp':>8} {'p99 dir':>8} {'p99 dp':>8} | {'added p50':>9} |"
        f" {'dp cpu/req':>10} | {'errors d/p':>10}"
    )
    print(header)
    print("-" * len(header))
    for s in scenarios:
        cpu = s.proxy.cpu_ms_per_req.get("davproxy")
        print(
            f"{s.label:<26} {s.concurrency:>4} {s.budget:>5} |"
            f" {fmt(s.direct.req_per_s):>9} {fmt(s.proxy.req_per_s):>9}"
            f" {fmt(s.ratio, 2) + 'x':>6} |"
            f" {fmt(s.direct.median_ms, 2):>8} {fmt(s.proxy.median_ms, 2):>8}"
            f" {fmt(s.direct.p99_ms, 2):>8} {fmt(s.proxy.p99_ms, 2):>8} |"
            f" {('+' if s.added_ms >= 0 else '') + fmt(s.added_ms, 2):>9} |"
            f" {fmt(cpu, 2) if cpu is not None else 'n/a':>10} |"
            f" {f'{s.direct.errors}/{s.proxy.errors}':>10}"
        )
    print(
        "  n = requests per side (A-B-B-A halves); latencies in ms; 'dp' = through davproxy;"
        "\n  added p50 = p50 dp - p50 dir; dp cpu/req = davproxy process CPU ms per request."
    )


def verdicts(scenarios: list[Scenario]) -> list[dict[str, Any]]:
    by_key = {(s.upstream, s.request, s.concurrency): s for s in scenarios}
    results: list[dict[str, Any]] = []

    def added(key: tuple[str, str, int], target: bool) -> None:
        s = by_key.get(key)
        if s is None:
            return
        results.append(
            {
                "target": f"median added latency <= {TARGET_ADDED_MS:g} ms",
                "scenario": f"{s.label}, conc {s.concurrency}",
                "value_ms": round(s.added_ms, 3),
                "pass": s.added_ms <= TARGET_ADDED_MS,
                "binding": target,
            }
        )

    def ratio(key: tuple[str, str, int]) -> None:
        s = by_key.get(key)
        if s is None:
            return
        results.append(
            {
                "target": f">= {TARGET_RATIO:g}x Radicale direct throughput at 16 clients",
                "scenario": f"{s.label}, conc {s.concurrency}",
                "value_ratio": round(s.ratio, 3),
                "pass": s.ratio >= TARGET_RATIO,
                "binding": True,
            }
        )

    added(("fast", "GET", 1), True)
    for key in (("fast", "PROPFIND", 1), ("radicale", "GET", 1), ("radicale", "PROPFIND", 1)):
        added(key, False)
    ratio(("radicale", "PROPFIND", 16))
    ratio(("radicale", "GET", 16))
    return results


def print_verdicts(results: list[dict[str, Any]], scenarios: list[Scenario]) -> None:
    print("\nTargets")
    for r in results:
        outcome = "PASS" if r["pass"] else "FAIL"
        value = f"{r['value_ms']:+.2f} ms" if "value_ms" in r else f"{r['value_ratio']:.2f}x"
        note = "" if r["binding"] else "  (for reference)"
        print(f"  {outcome}  {r['target']:<52} {r['scenario']:<34} {value}{note}")
    busy = [
        f"{s.label} conc {s.concurrency} {side} {stats.other_cpu_share:.0%}"
        for s in scenarios
        for side, stats in (("direct", s.direct), ("proxy", s.proxy))
        if stats.other_cpu_share is not None and stats.other_cpu_share > OTHER_CPU_WARN
    ]
    if busy:
        print(
            f"  WARNING: other processes used > {OTHER_CPU_WARN:.0%} of the host's CPU during: "
            + "; ".join(busy)
            + ". Those numbers are noisy; rerun on a quiet host."
        )
    errors = sum(s.direct.errors + s.proxy.errors for s in scenarios)
    if errors:
        print(f"  WARNING: {errors} failed requests; see error_samples in the JSON file")
        for s in scenarios:
            for side, stats in (("direct", s.direct), ("proxy", s.proxy)):
                for sample in stats.error_samples[:2]:
                    print(f"    {s.label} conc {s.concurrency} {side}: {sample}")


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


def write_json(
    scenarios: list[Scenario], results: list[dict[str, Any]], meta: dict[str, Any]
) -> Path:
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"passthrough-{time.strftime('%Y%m%d-%H%M%S')}.json"
    data = {
        "meta": meta,
        "scenarios": [
            {
                "upstream": s.upstream,
                "request": s.request,
                "label": s.label,
                "concurrency": s.concurrency,
                "requests_per_side": s.budget,
                "ratio_proxy_direct": round(s.ratio, 4),
                "added_median_ms": round(s.added_ms, 3),
                "direct": asdict(s.direct),
                "proxy": asdict(s.proxy),
            }
            for s in scenarios
        ],
        "verdicts": results,
    }

    def clean(value: Any) -> Any:  # NaN (no successful request) is not JSON: use null
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    data = clean(data)
    path.write_text(
        json.dumps(data, indent=2, allow_nan=False, default=str) + "\n", encoding="utf-8"
    )
    return path


# ---------------------------------------------------------------- main


async def bench_target(target: Target, scale: float, scenarios: list[Scenario]) -> None:
    for kind in ("PROPFIND", "GET"):
        for concurrency in CONCURRENCIES:
            budget = max(2, round(BUDGETS[(target.name, kind, concurrency)] * scale))
            started = time.monotonic()
            scenario = await measure(target, kind, concurrency, budget)
            scenarios.append(scenario)
            s = scenario
            print(
                f"  {s.label:<26} conc {concurrency:>2}: direct {s.direct.req_per_s:8.1f} req/s,"
                f" davproxy {s.proxy.req_per_s:8.1f} req/s, added p50 {s.added_ms:+.2f} ms"
                f"  ({time.monotonic() - started:.0f} s)",
                flush=True,
            )


def run(args: argparse.Namespace, stack: ExitStack, workdir: Path) -> int:
    scale = args.scale if args.scale is not None else (0.2 if args.quick else 1.0)
    scenarios: list[Scenario] = []
    begun = time.monotonic()
    htpasswd = write_htpasswd(workdir / "users.htpasswd")

    print(f"davproxy passthrough benchmark (scale {scale:g}; work folder {workdir})", flush=True)
    load = os.getloadavg()
    print(f"  host: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if load[0] > 0.5 * (os.cpu_count() or 1):  # the per-round check below is the precise one
        print("  WARNING: the host is busy before the benchmark starts; expect noisy numbers")
    radicale = stack.enter_context(
        start_radicale(workdir / "radicale", auth="x-remote-user", log_level="warning")
    )
    propfind, event, etag = asyncio.run(populate(radicale.url))
    print(
        f"  Radicale at {radicale.url}: {EVENTS} events in {CALENDAR},"
        f" PROPFIND answer {len(propfind)} B, GET answer {len(event)} B",
        flush=True,
    )
    rad_proxy = stack.enter_context(
        start_proxy_for(
            workdir / "davproxy-radicale", radicale, "radicale", htpasswd, args.max_connections
        )
    )
    target = Target(
        "radicale", radicale, rad_proxy,
        requests_for(radicale.url, rad_proxy.url, len(propfind), len(event)),
    )  # fmt: skip
    asyncio.run(bench_target(target, scale, scenarios))
    rad_proxy.stop()
    radicale.stop()

    fast = stack.enter_context(start_fast_upstream(workdir / "fast", propfind, event, etag))
    fast_proxy = stack.enter_context(
        start_proxy_for(workdir / "davproxy-fast", fast, "generic", htpasswd)
    )
    print(f"  fast upstream at {fast.url} (canned copies of Radicale's answers)", flush=True)
    target = Target(
        "fast", fast, fast_proxy, requests_for(fast.url, fast_proxy.url, len(propfind), len(event))
    )
    asyncio.run(bench_target(target, scale, scenarios))

    results = verdicts(scenarios)
    print()
    print_table(scenarios)
    print_verdicts(results, scenarios)
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(time.monotonic() - begun, 1),
        "scale": scale,
        "git": git_describe(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_start": list(load),
        "load_average_at_end": list(os.getloadavg()),
        "events": EVENTS,
        "propfind_answer_bytes": len(propfind),
        "get_answer_bytes": len(event),
        "warmup_requests": WARMUP,
        "order": "A-B-B-A (direct, proxy, proxy, direct), half the budget each",
        "davproxy_config": "proxy-auth, htpasswd sha512_crypt, logging info with access log",
    }
    path = write_json(scenarios, results, meta)
    print(
        f"\nResults written to {path.relative_to(REPO)} ({time.monotonic() - begun:.0f} s in all)"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="davproxy passthrough overhead benchmark")
    parser.add_argument("--quick", action="store_true", help="budgets / 5 (smoke test)")
    parser.add_argument("--scale", type=float, help="multiply every budget by this factor")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, data)")
    parser.add_argument(
        "--max-connections",
        type=int,
        help="davproxy's max_connections for Radicale (default: the shipped default)",
    )
    args = parser.parse_args()

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C must stop the benchmark even when started from a shell that ignores SIGINT
    # for background jobs (asyncio.run only hooks SIGINT when it has the default handler).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="davproxy-bench-"))
    try:
        with ExitStack() as stack:  # stops every server, in reverse order, on any exit
            return run(args, stack, workdir)
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    except EmbeddedError as exc:
        print(f"\nbenchmark aborted: {exc}", file=sys.stderr)
        args.keep = True
        return 1
    finally:
        if args.keep:
            print(f"work folder kept: {workdir}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
