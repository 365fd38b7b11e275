"""Throughput with 1, 2 and 4 worker processes (``[server] workers``), in one run.

* **passthrough**: wrk (16 connections, 2 threads) GETs a 400-byte file through davproxy
  (proxy-auth, access log on) in front of nginx, with 1, 2 and 4 workers on a shared
  listening socket, and 2 and 4 workers whose children each bind with SO_REUSEPORT:
  requests per second, the ratio to one worker, and how the requests were spread over
  the workers (each worker's own ``davproxy_requests_total``, from its monitoring port);
* **sharee listing**: wrk (4 connections) PROPFINDs bob's home (Depth 1; 20 copies of
  alice's calendars shared with him) through davproxy in front of Radicale, with 1, 2
  and 4 workers, and davproxy's CPU per request (all its processes, from /proc);
* **one feed, 100 subscribers, 4 workers**: 100 users subscribe to one URL at once
  through the 4 workers, then the feed falls due every 2 s: origin fetches are counted.

Printed, never asserted.  nginx and wrk come from Debian's packages (installed when
missing, as root).  The machine's cores are shared by wrk, the upstream and davproxy:
the README says what the figures imply for a bigger host.

    python bench/workers.py [--seconds 5] [--store sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO, REPO / "bench"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

import aiohttp  # noqa: E402
from speed import AUTH, ensure_tools, nginx, wait_port  # noqa: E402

from davproxy.ops.embedded import (  # noqa: E402
    ServerProcess,
    _spawn,
    free_port,
    free_ports,
    start_radicale,
)
from davproxy.upstream.identity import hash_password  # noqa: E402
from tests.feed_origin import Origin, calendar, event  # noqa: E402
from tests.helpers import basic, write_config, write_htpasswd  # noqa: E402

LISTING = (
    '<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:" '
    'xmlns:CS="http://calendarserver.org/ns/"><D:prop><D:resourcetype/><D:displayname/>'
    "<CS:getctag/><D:sync-token/></D:prop></D:propfind>"
)
COPIES = 20
SUBSCRIBERS = 100
BOB = "Basic " + base64.b64encode(b"bob:bob-pw").decode()


def subscribe_body(url: str) -> str:
    return (
        "<D:mkcol xmlns:D='DAV:' xmlns:CS='http://calendarserver.org/ns/'><D:set><D:prop>"
        "<D:resourcetype><D:collection/><CS:subscribed/></D:resourcetype>"
        f"<CS:source><D:href>{url}</D:href></CS:source></D:prop></D:set></D:mkcol>"
    )


def start_fleet(
    main: Path, port: int, workers: int, monitor: int, reuse_port: bool = False
) -> ServerProcess:
    """davproxy with ``workers`` processes; returns once every worker answers."""
    text = re.sub(r"workers = \d+", f"workers = {workers}", main.read_text())
    # ports chosen now: a range picked minutes earlier may have gone to outgoing
    # connections (they take ports from the same ephemeral range) in the meantime
    text = re.sub(r"worker_port = \d+", f"worker_port = {monitor}", text)
    main.write_text(text)
    code = (
        "import sys; from davproxy import config; from davproxy.edge import logs, workers;"
        f"c = config.load({str(main)!r}); logs.setup(c.logging);"
        f"sys.exit(workers.serve(c, reuse_port={reuse_port}))"
    )
    argv = [sys.executable, "-c", code]
    if workers == 1:
        argv = [sys.executable, "-m", "davproxy", "serve", "--config", str(main)]
    server = _spawn("davproxy", argv, main.parent, "127.0.0.1", port)
    server.wait_ready()
    for index in range(1, workers + 1 if workers > 1 else 1):
        ServerProcess(
            "worker", server.process, "127.0.0.1", monitor + index - 1, server.folder,
            server.log_path,
        ).wait_ready()  # fmt: skip
    return server


def spread(monitor: int, workers: int) -> list[int]:
    """Requests each worker has answered (its own metrics)."""
    counts = []
    for index in range(1, workers + 1):
        url = f"http://127.0.0.1:{monitor + index - 1}/.davproxy/metrics"
        text = subprocess.run(["curl", "-s", url], capture_output=True, text=True).stdout
        total = sum(
            float(m.group(1))
            for m in re.finditer(r"^davproxy_requests_total\{[^}]*\} ([\d.e+]+)", text, re.M)
        )
        counts.append(int(total))
    return counts


def wrk(
    url: str, seconds: float, script: Path | None = None, auth: str = AUTH, connections: int = 16
) -> tuple[float, int]:
    """(requests per second, requests) of wrk with ``connections`` connections."""
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    argv += ["-H", f"Authorization: {auth}"]
    if script is not None:
        argv += ["-s", str(script)]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        print(f"    ({errors.group(1)} error answers)")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), requests  # type: ignore[union-attr]


def passthrough(folder: Path, stack: ExitStack, seconds: float) -> None:
    root = folder / "www"
    (root / "alice").mkdir(parents=True)
    (root / "alice" / "file.txt").write_bytes(b"x" * 399 + b"\n")
    upstream = free_port()
    server = nginx(folder, "direct", f" server {{ listen 127.0.0.1:{upstream}; root {root}; }}")
    stack.callback(server.kill)
    wait_port(upstream)
    monitor = free_ports(4)
    main, port = write_config(
        folder / "davproxy", upstream_url=f"http://127.0.0.1:{upstream}", kind="generic",
        mode="proxy-auth", htpasswd=write_htpasswd(folder / "users.htpasswd"),
        server_extra=f"workers = 1\n[monitoring]\nworker_port = {monitor}\n",
        mapping_extra='[layout]\nprincipal = "{user}/"\ncalendar_home = "{user}/"\n'
        'addressbook_home = "{user}/"\n',
    )  # fmt: skip
    print(f"\npassthrough: GET of a 400-byte file, wrk -c16 for {seconds:.0f} s each")
    print(f"{'workers':<28} {'req/s':>8} {'vs 1':>6}  requests per worker")
    base = 0.0
    for workers, reuse in ((1, False), (2, False), (4, False), (2, True), (4, True)):
        monitor = free_ports(4)
        with start_fleet(main, port, workers, monitor, reuse) as fleet:
            url = f"http://127.0.0.1:{port}/alice/file.txt"
            wrk(url, 1)  # warm-up: connections, the verdict cache
            before = spread(monitor, workers) if workers > 1 else []
            rps, _ = wrk(url, seconds)
            after = spread(monitor, workers) if workers > 1 else []
            fleet.stop()
        base = base or rps
        name = f"{workers} ({'SO_REUSEPORT' if reuse else 'shared socket'})"
        shares = [b - a for a, b in zip(before, after, strict=True)]
        total = sum(shares) or 1
        split = " / ".join(f"{100 * s / total:.0f}%" for s in shares) if shares else "-"
        print(f"{name:<28} {rps:>8,.0f} {rps / base:>5.2f}x  {split}")


async def seed_listing(url: str, main: Path) -> None:
    """alice's calendars, each shared with bob, who accepts (through the admin CLI)."""
    async with aiohttp.ClientSession() as session:

        async def call(user: str, method: str, path: str, body: str = "", **headers: str) -> int:
            async with session.request(
                method, url + path, data=body, headers={**basic(user), **headers}
            ) as answer:
                await answer.read()
                return answer.status

        sharing = {"Content-Type": "application/davsharing+xml; charset=utf-8"}
        await call("bob", "PROPFIND", "/bob/", LISTING, Depth="0")
        for n in range(COPIES):
            assert await call("alice", "MKCALENDAR", f"/alice/cal{n}/") == 201
            body = (
                '<D:share-resource xmlns:D="DAV:"><D:sharee><D:href>mailto:bob@example.org'
                "</D:href><D:share-access><D:read/></D:share-access></D:sharee>"
                "</D:share-resource>"
            )
            assert await call("alice", "POST", f"/alice/cal{n}/", body, **sharing) == 204
    for n in range(COPIES):
        done = subprocess.run(
            [sys.executable, "-m", "davproxy", "admin", "-c", str(main), "accept",
             "--collection", f"/alice/cal{n}/", "--sharee", "bob"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr


def listing(folder: Path, stack: ExitStack, seconds: float) -> None:
    radicale = stack.enter_context(start_radicale(folder / "radicale", log_level="warning"))
    monitor = free_ports(4)
    main, port = write_config(
        folder / "davproxy", upstream_url=radicale.url, kind="radicale", mode="proxy-auth",
        htpasswd=write_htpasswd(folder / "users.htpasswd"),
        server_extra=f"workers = 1\n[monitoring]\nworker_port = {monitor}\n",
        upstream_extra="max_connections = 16\n",
    )  # fmt: skip
    script = folder / "listing.lua"
    body = LISTING.replace('"', '\\"')
    script.write_text(
        f'wrk.method = "PROPFIND"\nwrk.body = "{body}"\n'
        'wrk.headers["Depth"] = "1"\nwrk.headers["Content-Type"] = "application/xml"\n'
    )
    with start_fleet(main, port, 1, monitor) as fleet:
        asyncio.run(seed_listing(fleet.url.rstrip("/"), main))
        fleet.stop()
    # max_connections 16, not Radicale's default 2 per process: with 2, two listings at
    # once in one process wait for each other for ever (each holds a slot for its forward
    # and needs another for its copies' properties; found here, in main since issue 17)
    print(f"\nsharee listing: bob's home PROPFIND Depth 1 ({COPIES} copies), wrk -c4")
    print(f"{'workers':<28} {'req/s':>8} {'vs 1':>6}  davproxy CPU/request")
    base = 0.0
    for workers in (1, 2, 4):
        monitor = free_ports(4)
        with start_fleet(main, port, workers, monitor) as fleet:
            url = f"http://127.0.0.1:{port}/bob/"
            wrk(url, 2, script, BOB, 4)
            pids = _family(fleet.process.pid)
            cpu = sum(_cpu(p) for p in pids)
            rps, count = wrk(url, seconds, script, BOB, 4)
            used = sum(_cpu(p) for p in pids) - cpu
            fleet.stop()
        base = base or rps
        print(f"{workers:<28} {rps:>8,.0f} {rps / base:>5.2f}x  {used * 1e6 / count:,.0f} µs")


def _family(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(c) for c in children)]


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_feed(folder: Path, stack: ExitStack) -> None:
    origin = stack.enter_context(Origin().running())
    radicale = stack.enter_context(start_radicale(folder / "radicale", log_level="warning"))
    names = [f"user{n:03d}" for n in range(SUBSCRIBERS)]
    users = folder / "users.htpasswd"
    users.write_text("".join(f"{u}:{hash_password(u + '-pw', 'sha512_crypt')}\n" for u in names))
    monitor = free_ports(4)
    main, port = write_config(
        folder / "davproxy", upstream_url=radicale.url, kind="radicale", mode="proxy-auth",
        htpasswd=users,
        server_extra=(
            f"workers = 4\n[monitoring]\nworker_port = {monitor}\n"
            '[feeds]\nallow_networks = ["127.0.0.0/8"]\nrefresh_floor = 1\njitter = 0\n'
        ),
    )  # fmt: skip
    body = calendar(
        event("one@x", "one"), event("two@x", "two"),
        extra="REFRESH-INTERVAL;VALUE=DURATION:PT2S\n",
    )  # fmt: skip
    origin.serve("/team.ics", body)
    with start_fleet(main, port, 4, monitor) as fleet:

        async def subscribe() -> list[int]:
            connector = aiohttp.TCPConnector(force_close=True, limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                source = subscribe_body(origin.url("/team.ics"))

                async def one(user: str) -> int:
                    async with session.request(
                        "MKCOL", f"{fleet.url}{user}/team/", data=source,
                        headers={**basic(user, user + "-pw"), "Content-Type": "application/xml"},
                    ) as answer:  # fmt: skip
                        return answer.status

                return await asyncio.gather(*map(one, names))

        started = time.monotonic()
        statuses = asyncio.run(subscribe())
        took = time.monotonic() - started
        ok = sum(s == 201 for s in statuses)
        first = origin.hits("/team.ics")
        time.sleep(7.0)
        fetches = [s.at for s in origin.seen if s.path == "/team.ics"]
        gaps = [b - a for a, b in zip(fetches, fetches[1:], strict=False)]
        fleet.stop()
    print(f"\none feed, {SUBSCRIBERS} subscribers, 4 workers")
    print(f"  {ok} subscriptions made at once in {took:.2f} s: {first} origin fetch(es)")
    print(
        f"  then due every 2 s for 7 s: {len(fetches) - first} refreshes, one fetch each"
        f" (shortest gap between two fetches {min(gaps) if gaps else 0:.2f} s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--store", choices=("sqlite", "postgresql"), default="sqlite",
        help="where every davproxy keeps its store (postgresql: a throwaway cluster)",
    )  # fmt: skip
    args = parser.parse_args()
    os.environ["DAVPROXY_TEST_STORE"] = args.store  # read by tests.helpers.write_config
    missing = ensure_tools()
    if missing:
        print(f"skipped: {' and '.join(missing)} not installed (Debian: apt-get install nginx wrk)")
        return 0
    print(f"workers benchmark on {os.cpu_count()} cores, {args.store} store")
    with tempfile.TemporaryDirectory() as tmp:
        for part, work in (
            ("pass", lambda f, s: passthrough(f, s, args.seconds)),
            ("list", lambda f, s: listing(f, s, args.seconds)),
            ("feed", one_feed),
        ):
            with ExitStack() as stack:
                work(Path(tmp) / part, stack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
