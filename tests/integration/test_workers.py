"""Several davproxy processes on one store, as one server (issue 18).

One Radicale; davproxy with ``[server] workers = 2`` on one port (the fleet) and a second,
separate davproxy on another port with the same configuration and store (the single):
three processes.  Requests alternate between the two ports, and go through the fleet on
a new connection each (so both workers answer); every check is made through HTTP or the
admin CLI, never the store's file, so the same tests hold for any store backend.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from davproxy.ops.embedded import (
    ServerProcess,
    free_port,
    free_ports,
    start_davproxy,
    start_radicale,
)
from tests.feed_origin import Origin, calendar, event
from tests.helpers import USERS, Endpoint, basic, fetch, write_config, write_htpasswd

from .conftest import TRUSTED, Pair
from .test_peruser import alarms, race_owner_and_sharee, share_three
from .test_sharing import (
    NS,
    SHARING,
    XML,
    Client,
    notifications_of,
    reply_body,
    share_body,
    xml,
)

FETCH_TIMEOUT = 3  # a feed's lease lasts twice that: 6 s
SETTINGS = f"""workers = 2

[monitoring]
worker_port = {{worker_port}}

[feeds]
allow_networks = ["127.0.0.0/8"]
refresh_floor = 1
jitter = 0
fetch_timeout = {FETCH_TIMEOUT}
retry_base = 1
"""


@dataclass
class Fleet:
    fleet: Pair  # workers = 2
    single: Pair  # another davproxy on the same store
    supervisor: ServerProcess
    other: ServerProcess
    config: Path
    worker_port: int
    origin: Origin
    radicale: ServerProcess

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "davproxy", "admin", "-c", str(self.config), *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def admin_json(self, *args: str) -> object:
        done = self.admin(*args, "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    async def worker_pid(self, index: int) -> int:
        """The pid of worker ``index``, asked on its own monitoring port."""
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{self.worker_port + index - 1}/.davproxy/healthz"
            async with session.get(url) as answer:
                text = await answer.text()
        assert f"worker {index} of 2" in text, text
        return int(text.rsplit("pid ", 1)[1].rstrip(")\n"))


def _pair(url: str, upstream: ServerProcess, proxy: ServerProcess) -> Pair:
    return Pair(
        "radicale", Endpoint(upstream.url, TRUSTED),
        Endpoint(url, {u: basic(u) for u in USERS}), "/alice/", "/alice/", upstream, proxy,
    )  # fmt: skip


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("workers")
    worker_port = free_ports(2)
    origin = Origin()
    with (
        origin.running(),
        start_radicale(folder / "radicale", auth="x-remote-user") as radicale,
    ):
        main, port = write_config(
            folder / "davproxy", upstream_url=radicale.url, kind="radicale", mode="proxy-auth",
            htpasswd=write_htpasswd(folder / "users.htpasswd"),
            server_extra=SETTINGS.format(worker_port=worker_port),
        )  # fmt: skip
        with start_davproxy(main, port=port) as supervisor:
            for index in (1, 2):  # the port is the parent's at once; the workers follow
                ServerProcess(
                    "worker", supervisor.process, "127.0.0.1", worker_port + index - 1,
                    supervisor.folder, supervisor.log_path,
                ).wait_ready()  # fmt: skip
            # the second instance: same folder (store, mapping), its own port, one process
            other_port = free_port()
            text = main.read_text().replace(f"port = {port}\nworkers = 2", f"port = {other_port}")
            second = main.with_name("single.toml")
            second.write_text(text)
            with start_davproxy(second, port=other_port) as other:
                yield Fleet(
                    _pair(supervisor.url, radicale, supervisor),
                    _pair(other.url, radicale, other),
                    supervisor, other, main, worker_port, origin, radicale,
                )  # fmt: skip


SYNC = (
    '<D:sync-collection xmlns:D="DAV:"><D:sync-token>{}</D:sync-token><D:sync-level>1'
    "</D:sync-level><D:prop><D:getetag/></D:prop></D:sync-collection>"
)


def spreading() -> aiohttp.ClientSession:
    """A client that opens a new connection for every request (to reach every worker)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=60),
    )


def token_revision(token: str) -> int:
    return int(token.rsplit("-", 1)[1])


async def test_every_process_names_itself_and_has_its_own_metrics(fleet: Fleet) -> None:
    async with spreading() as session:
        answers = await asyncio.gather(
            *(fetch(session, "GET", fleet.fleet.proxy.url("/.davproxy/healthz")) for _ in range(24))
        )
        single = await fetch(session, "GET", fleet.single.proxy.url("/.davproxy/healthz"))
        workers = {re.search(rb"worker (\d) of 2", a.body).group(1) for a in answers}  # type: ignore[union-attr]
        assert workers <= {b"1", b"2"} and all(a.status == 200 for a in answers)
        assert single.body.startswith(b"ok (single process, pid ")
        for index in (1, 2):
            base = f"http://127.0.0.1:{fleet.worker_port + index - 1}"
            health = await fetch(session, "GET", base + "/.davproxy/healthz")
            assert f"worker {index} of 2".encode() in health.body
            metrics = await fetch(session, "GET", base + "/.davproxy/metrics")
            samples = [
                line for line in metrics.body.decode().splitlines() if not line.startswith("#")
            ]
            assert samples and all(f'worker="{index}"' in line for line in samples), samples[:3]
            # the worker's own port answers monitoring only
            elsewhere = await fetch(session, "GET", base + "/alice/", basic("alice"))
            assert elsewhere.status == 404


async def test_one_server_across_processes(fleet: Fleet) -> None:
    """Alternating the fleet and the single instance: a share made through one is used
    through the other, notification sync tokens are valid and monotonic on both, and a
    revocation through one denies at once through every other process."""
    name = f"team-{uuid.uuid4().hex[:6]}"
    cal = f"/alice/{name}/"
    async with spreading() as session:
        a = {u: Client(session, fleet.fleet, u) for u in ("alice", "bob")}
        b = {u: Client(session, fleet.single, u) for u in ("alice", "bob")}
        await a["bob"].hello()
        assert (await a["alice"]("MKCALENDAR", cal)).status == 201
        url, _ = await notifications_of(b["bob"])
        sync = SYNC
        first = await a["bob"]("REPORT", url, sync.format(""), **XML)
        t1 = xml(first).findtext("D:sync-token", namespaces=NS)
        assert first.status == 207 and t1

        shared = await b["alice"](
            "POST", cal, share_body(("mailto:bob@example.org", "read-write")), **SHARING
        )
        assert shared.status == 204, shared.body
        # the token from the fleet is valid on the single, and shows the invitation
        changes = await b["bob"]("REPORT", url, sync.format(t1), **XML)
        assert changes.status == 207, changes.body
        t2 = xml(changes).findtext("D:sync-token", namespaces=NS)
        assert t2 and token_revision(t2) > token_revision(t1)
        invite = [h.text for h in xml(changes).findall("D:response/D:href", NS)]
        assert len(invite) == 1
        for client in (a["bob"], b["bob"], a["bob"]):  # the same answer everywhere
            again = await client("REPORT", url, sync.format(t2), **XML)
            assert again.status == 207
            assert xml(again).findtext("D:sync-token", namespaces=NS) == t2
            assert xml(again).findall("D:response", NS) == []

        accepted = await a["bob"]("POST", invite[0], reply_body(True), **SHARING)
        assert accepted.status == 201, accepted.body
        copy = "/" + accepted.header("Location").split("://", 1)[1].split("/", 1)[1]
        put = await b["bob"](
            "PUT", copy + "e.ics", _event("via-single"), Content_Type="text/calendar"
        )
        assert put.status == 201, put.body
        assert b"via-single" in (await a["alice"]("GET", cal + "e.ics")).body
        for client in (a["bob"], b["bob"], a["bob"], a["bob"]):
            assert (await client("GET", copy + "e.ics")).status == 200

        revoked = await a["alice"](
            "POST", cal, share_body(("mailto:bob@example.org", "no-access")), **SHARING
        )
        assert revoked.status == 204
        for client in (b["bob"], *[a["bob"]] * 6):  # every process, at once
            denied = await client("GET", copy + "e.ics")
            assert denied.status in (403, 404), (denied.status, denied.body)
        last = await a["bob"]("REPORT", url, sync.format(t2), **XML)
        t3 = xml(last).findtext("D:sync-token", namespaces=NS)
        assert t3 and token_revision(t3) > token_revision(t2)


async def test_racing_replies_across_processes(fleet: Fleet) -> None:
    """The same invitation accepted 12 times at once through all three processes: one
    copy; accepts and declines racing: one outcome, and a copy only if accepted."""
    async with spreading() as session:
        for sharee, mixed in (("carol", False), ("bob", True)):
            cal = f"/alice/race-{uuid.uuid4().hex[:6]}/"
            owner = Client(session, fleet.fleet, "alice")
            clients = [Client(session, p, sharee) for p in (fleet.fleet, fleet.single)]
            await clients[0].hello()
            assert (await owner("MKCALENDAR", cal)).status == 201
            href = f"mailto:{sharee}@example.org"
            url, _ = await notifications_of(clients[1])
            before = await clients[1]("REPORT", url, SYNC.format(""), **XML)
            token = xml(before).findtext("D:sync-token", namespaces=NS)
            assert (await owner("POST", cal, share_body((href, "read")), **SHARING)).status == 204
            after = await clients[0]("REPORT", url, SYNC.format(token), **XML)
            (invite,) = [h.text for h in xml(after).findall("D:response/D:href", NS)]
            answers = await asyncio.gather(
                *(
                    clients[i % 2]("POST", invite, reply_body(not mixed or i % 3 != 0), **SHARING)
                    for i in range(12)
                )
            )
            assert all(answer.status < 500 for answer in answers), [a.status for a in answers]
            rows = [
                row
                for row in fleet.admin_json("shares", "--owner", "alice")  # type: ignore[union-attr]
                if row["collection"] == cal.lstrip("/") and row["sharee"] == sharee
            ]
            assert len(rows) == 1, rows
            status = rows[0]["status"]
            copies = await _copies_of(clients[0], sharee, cal)
            if not mixed:
                assert status == "accepted" and len(copies) == 1
                locations = {
                    (a.header("Location") or "").split("/", 3)[3]
                    for a in answers
                    if a.status == 201
                }
                assert len(locations) == 1, locations
            else:
                assert status in ("accepted", "declined")
                assert len(copies) == (1 if status == "accepted" else 0), (status, copies)


async def test_a_sharee_writing_through_two_processes_is_merged_not_refused(
    fleet: Fleet,
) -> None:
    """The per-object write lock of per-user data is per process: bob's writes through
    both ports, racing alice's, are settled by the merge retry (no 412, no 503), and
    each keeps only their own reminder."""
    async with spreading() as session:
        alice, carol = (Client(session, fleet.fleet, u) for u in ("alice", "carol"))
        bobs = [Client(session, pair, "bob") for pair in (fleet.fleet, fleet.single)]
        owner_cal, bob_cal, _ = await share_three(fleet.fleet, alice, bobs[0], carol)
        statuses, owners = await race_owner_and_sharee(alice, bobs, owner_cal, bob_cal)
        assert all(200 <= s < 300 for s in (*statuses, *owners)), (statuses, owners)
        for bob in bobs:
            got = await bob("GET", bob_cal + "r.ics")
            assert got.status == 200 and set(alarms(got.body.decode())) == {"bob"}
        theirs = alarms((await alice("GET", owner_cal + "r.ics")).body.decode())
        assert set(theirs) == {"alice"}, theirs


async def test_sigkill_of_a_worker_during_share_operations_loses_nothing(fleet: Fleet) -> None:
    """Ten shares made at once through the fleet while one worker is killed with
    SIGKILL: every share acknowledged is in the store, once; the store is sound; the
    supervisor starts the worker again."""
    names = [f"kill-{uuid.uuid4().hex[:6]}-{i}" for i in range(10)]
    victim = await fleet.worker_pid(1)
    async with spreading() as session:
        alice = Client(session, fleet.fleet, "alice")
        await Client(session, fleet.fleet, "carol").hello()
        for name in names:
            assert (await alice("MKCALENDAR", f"/alice/{name}/")).status == 201

        async def share(name: str) -> int:
            for _ in range(20):  # a request the killed worker had taken is sent again
                try:
                    answer = await alice(
                        "POST", f"/alice/{name}/",
                        share_body(("mailto:carol@example.org", "read")), **SHARING,
                    )  # fmt: skip
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
                    continue
                if answer.status < 500:
                    return answer.status
            return 0

        async def kill_soon() -> None:
            await asyncio.sleep(0.05)
            os.kill(victim, signal.SIGKILL)

        statuses, _ = await asyncio.gather(asyncio.gather(*map(share, names)), kill_soon())
    assert list(statuses) == [204] * len(names)
    rows = fleet.admin_json("shares", "--owner", "alice")
    mine = [r for r in rows if r["collection"].split("/")[1] in names]  # type: ignore[union-attr]
    assert sorted(r["collection"].split("/")[1] for r in mine) == sorted(names)
    assert {(r["sharee"], r["status"]) for r in mine} == {("carol", "noresponse")}
    check = fleet.admin("check")
    assert check.returncode == 0 and re.search(r"integrity\s+ok", check.stdout), check.stdout
    deadline = time.monotonic() + 10
    while True:  # started again, with a new pid
        try:
            if await fleet.worker_pid(1) != victim:
                break
        except (aiohttp.ClientError, AssertionError):
            pass
        assert time.monotonic() < deadline, fleet.supervisor.log_tail()
        await asyncio.sleep(0.1)
    assert f"(pid {victim}) was killed by SIGKILL" in fleet.supervisor.log_path.read_text()


GROUP = """
[[groups]]
id = "family"
emails = ["family@example.org"]
members = ["bob"]
"""


async def test_start_up_work_runs_once_for_workers_started_together(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Carol joins a group while davproxy is stopped; three workers start at once: the
    group's share reaches her once (one process applied the directory, the others
    waited and found it done), and SIGTERM stops them all cleanly."""
    main, port = write_config(
        tmp_path / "g", upstream_url=fleet.radicale.url, kind="radicale", mode="proxy-auth",
        htpasswd=write_htpasswd(tmp_path / "users.htpasswd"), mapping_extra=GROUP,
    )  # fmt: skip
    cal = f"/alice/family-{uuid.uuid4().hex[:6]}/"
    with start_davproxy(main, port=port) as single:
        async with spreading() as session:
            pair = _pair(single.url, fleet.radicale, single)
            alice = Client(session, pair, "alice")
            assert (await alice("MKCALENDAR", cal)).status == 201
            shared = await alice(
                "POST", cal, share_body(("mailto:family@example.org", "read")), **SHARING
            )
            assert shared.status == 204, shared.body
    mapping = main.with_name("mapping.toml")
    mapping.write_text(mapping.read_text().replace('["bob"]', '["bob", "carol"]'))
    main.write_text(main.read_text().replace(f"port = {port}\n", f"port = {port}\nworkers = 3\n"))
    with start_davproxy(main, port=port) as three:
        async with spreading() as session:
            for _ in range(50):  # the parent listens at once; the workers after start-up
                health = await fetch(session, "GET", three.url + ".davproxy/healthz")
                if health.status == 200:
                    break
        invites = fleet_admin(main, "notifications", "--user", "carol", "--json")
        assert [n["type"] for n in invites] == ["share-invite"], invites
        three.process.send_signal(signal.SIGTERM)
        assert three.process.wait(20) == 0
    log = three.log_path.read_text()
    assert log.count("start-up work on the store was done by another process") == 2, log
    assert log.count("group family changed") == 1, log  # applied by one process only


def test_a_worker_that_cannot_start_ends_the_server_with_its_reason(
    fleet: Fleet, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        main, _ = write_config(
            tmp_path, upstream_url=fleet.radicale.url, kind="radicale", mode="proxy-auth",
            htpasswd=write_htpasswd(tmp_path / "users.htpasswd"),
            server_extra=f"workers = 2\n[monitoring]\nworker_port = {busy}\n",
        )  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "davproxy", "serve", "-c", str(main)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"davproxy: cannot listen on 127.0.0.1:{busy} ([monitoring]"), last


def fleet_admin(config: Path, *args: str) -> list[dict[str, str]]:
    done = subprocess.run(
        [sys.executable, "-m", "davproxy", "admin", "-c", str(config), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows: list[dict[str, str]] = json.loads(done.stdout)
    return rows


async def test_many_subscribers_through_every_process_cost_one_fetch(fleet: Fleet) -> None:
    path = f"/hourly-{uuid.uuid4().hex[:6]}.ics"
    fleet.origin.serve(path, _feed("hourly", "PT1H"))
    url = fleet.origin.url(path)
    async with spreading() as session:
        clients = [
            Client(session, pair, user)
            for pair in (fleet.fleet, fleet.single)
            for user in ("alice", "bob", "carol")
        ]
        answers = await asyncio.gather(
            *(
                clients[i % len(clients)](
                    "MKCOL", f"/{clients[i % len(clients)].user}/sub-{i}/", _mkcol(url)
                )
                for i in range(30)
            )
        )
        assert [a.status for a in answers] == [201] * 30
        listing = await clients[4]("GET", f"/{clients[4].user}/sub-4/")
        assert b"hourly one" in listing.body
    assert fleet.origin.hits(path) == 1


async def test_a_due_source_is_fetched_once_per_refresh_and_survives_its_holder(
    fleet: Fleet,
) -> None:
    """Refreshed every 2 s by three processes' schedulers: one fetch each time (never two
    at once); the process fetching it is killed mid-fetch (a slow origin): once its
    lease expires another process fetches it."""
    path = f"/often-{uuid.uuid4().hex[:6]}.ics"
    fleet.origin.serve(path, _feed("often", "PT2S"))
    url = fleet.origin.url(path)
    async with spreading() as session:
        alice = Client(session, fleet.fleet, "alice")
        assert (
            await alice("MKCOL", f"/alice/often-{uuid.uuid4().hex[:4]}/", _mkcol(url))
        ).status == 201
    await asyncio.sleep(6.5)
    times = [s.at for s in fleet.origin.seen if s.path == path]
    assert 3 <= len(times) <= 5, times
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert min(gaps) > 1.5, gaps  # one process per due refresh, never two

    # a slow origin: the holder is killed while it fetches
    fleet.origin.serve(path, _feed("often", "PT2S", padding=3000), drip_seconds=0.5)
    seen = len(fleet.origin.seen)
    deadline = time.monotonic() + 10
    while not [s for s in fleet.origin.seen[seen:] if s.path == path]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    lease = await _holder_pid(fleet, path)
    killed_at = time.monotonic()
    os.kill(lease, signal.SIGKILL)
    fleet.origin.serve(path, _feed("often", "PT2S", version=2))
    seen = len(fleet.origin.seen)
    deadline = time.monotonic() + 15
    while not [s for s in fleet.origin.seen[seen:] if s.path == path]:
        assert time.monotonic() < deadline, "nobody took the lease over"
        await asyncio.sleep(0.1)
    waited = time.monotonic() - killed_at
    assert waited > 2 * FETCH_TIMEOUT - 2, waited  # the lease expired first
    await asyncio.sleep(0.5)
    async with spreading() as session:
        bob = Client(session, fleet.fleet, "bob")
        sub = f"/bob/often-{uuid.uuid4().hex[:4]}/"
        assert (await bob("MKCOL", sub, _mkcol(url))).status == 201
        assert b"often one v2" in (await bob("GET", sub)).body


async def _holder_pid(fleet: Fleet, path: str) -> int:
    """The pid of the process holding the lease of the source at ``path``."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        feeds = fleet.admin_json("feeds")
        ids = [f["source_id"] for f in feeds if f["url"].endswith(path)]  # type: ignore[union-attr]
        for lease in fleet.admin_json("leases"):  # type: ignore[union-attr]
            if ids and lease["name"] == f"feed:{ids[0]}" and lease["holder"] != "-":
                return int(lease["holder"].split(":")[1])
        await asyncio.sleep(0.05)
    raise AssertionError("no process holds the feed's lease")


async def _copies_of(client: Client, user: str, cal: str) -> list[str]:
    """The copies of ``cal`` in ``user``'s home (their sharer-resource-uri names it)."""
    listing = await client(
        "PROPFIND", f"/{user}/",
        '<D:propfind xmlns:D="DAV:"><D:prop><D:share-access/><D:sharer-resource-uri/>'
        "</D:prop></D:propfind>",
        Depth="1",
    )  # fmt: skip
    assert listing.status == 207
    found = []
    for response in xml(listing).findall("D:response", NS):
        source = response.findtext(".//D:sharer-resource-uri/D:href", namespaces=NS)
        if source == cal:
            found.append(response.findtext("D:href", namespaces=NS) or "")
    return found


def _event(summary: str) -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:{summary}\r\nDTSTAMP:20261101T090000Z\r\nDTSTART:20261124T100000Z\r\n"
        f"SUMMARY:{summary}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def _feed(name: str, interval: str, version: int = 1, padding: int = 0) -> str:
    extra = f"REFRESH-INTERVAL;VALUE=DURATION:{interval}\n"
    pad = f"DESCRIPTION:{'x' * 60}\n" * (padding // 60)
    return calendar(
        event(f"{name}-1@x", f"{name} one v{version}", extra=pad), event(f"{name}-2@x", "two"),
        name=name, extra=extra,
    )  # fmt: skip


def _mkcol(url: str) -> str:
    return (
        "<D:mkcol xmlns:D='DAV:' xmlns:CS='http://calendarserver.org/ns/'><D:set><D:prop>"
        "<D:resourcetype><D:collection/><CS:subscribed/></D:resourcetype>"
        f"<CS:source><D:href>{url}</D:href></CS:source></D:prop></D:set></D:mkcol>"
    )
