"""What sharing costs on the request paths a sharee's client uses every sync.

A real Radicale 3.9 with davproxy (proxy-auth, access log on) in front.  alice owns 50
calendars and shares every one with bob, who accepts: bob's calendar home then holds
50 copies.  In one run, alternating the two sides request by request:

* **home listing**: bob's ``PROPFIND Depth: 1`` on his home (50 copies) against alice's
  on hers (her 50 calendars), both through davproxy.  Target: <= 1.2x.
* **GET / calendar-multiget through a copy**: bob through his copy against alice
  through davproxy on her own calendar (200 events).  Target: <= 1.1x.
* **notification collection with 10,000 notifications** (seeded through davproxy's own
  store API before it starts): ``PROPFIND Depth: 1`` and an incremental
  ``sync-collection`` after one more invitation.  Target: < 50 ms of davproxy CPU each.

Wall-clock medians of N requests per side; davproxy's CPU per request from /proc.
Printed, never asserted:

    python bench/sharing_paths.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
from lxml import etree  # noqa: E402

from davproxy.ops.embedded import ServerProcess, start_radicale  # noqa: E402
from tests.helpers import basic, raw_session, start_proxy, write_htpasswd  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
SHARING = {"Content-Type": "application/davsharing+xml; charset=utf-8"}
XML = {"Content-Type": "application/xml; charset=utf-8"}
LISTING = (
    b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:" '
    b'xmlns:C="urn:ietf:params:xml:ns:caldav" xmlns:CS="http://calendarserver.org/ns/">'
    b"<D:prop><D:resourcetype/><D:displayname/><CS:getctag/><D:sync-token/>"
    b"<D:current-user-privilege-set/><C:supported-calendar-component-set/>"
    b"</D:prop></D:propfind>"
)
COPIES = 50
EVENTS = 200
MULTIGET_HREFS = 50
NOTIFICATIONS = 10_000


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def event(uid: str) -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//bench//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:{uid}\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20260105T090000Z\r\n"
        f"DURATION:PT1H\r\nSUMMARY:Event {uid}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str, user: str) -> None:
        self.session, self.base, self.user = session, base, user

    async def __call__(
        self, method: str, path: str, body: str | bytes = b"", **headers: str
    ) -> tuple[int, bytes, dict[str, str]]:
        all_headers = {**basic(self.user), **{k.replace("_", "-"): v for k, v in headers.items()}}
        async with self.session.request(
            method, self.base + path, data=body, headers=all_headers
        ) as answer:
            return answer.status, await answer.read(), dict(answer.headers)


async def seed(alice: Client, bob: Client) -> list[str]:
    """alice's 50 calendars (the first with 200 events), shared with bob and accepted;
    returns bob's copy paths."""
    await bob("PROPFIND", "/bob/", LISTING, Depth="0", **XML)  # bob's home exists
    for n in range(COPIES):
        status, body, _ = await alice("MKCALENDAR", f"/alice/cal{n}/")
        assert status == 201, body
    for n in range(EVENTS):
        status, _, _ = await alice(
            "PUT", f"/alice/cal0/e{n}.ics", event(f"e{n}"), Content_Type="text/calendar"
        )
        assert status == 201
    copies = []
    for n in range(COPIES):
        status, body, _ = await alice(
            "POST", f"/alice/cal{n}/", share_body("read-write"), **SHARING
        )
        assert status == 204, body
        note = await newest_notification(bob)
        reply = (
            '<?xml version="1.0" encoding="utf-8"?><D:invite-reply xmlns:D="DAV:">'
            "<D:invite-accepted/><D:create-in><D:href>/bob/</D:href></D:create-in>"
            f"<D:slug>copy{n}</D:slug></D:invite-reply>"
        )
        status, body, headers = await bob("POST", note, reply, **SHARING)
        assert status == 201, body
        copies.append("/" + headers["Location"].split("://", 1)[1].split("/", 1)[1])
    # one invitation bob has not answered: the model of the notifications seeded later
    assert (await alice("MKCALENDAR", "/alice/pending/"))[0] == 201
    assert (await alice("POST", "/alice/pending/", share_body("read"), **SHARING))[0] == 204
    return copies


def share_body(access: str) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?><D:share-resource xmlns:D="DAV:">'
        "<D:sharee><D:href>mailto:bob@example.org</D:href><D:share-access>"
        f"<D:{access}/></D:share-access></D:sharee></D:share-resource>"
    )


async def newest_notification(user: Client) -> str:
    status, body, _ = await user("PROPFIND", notification_path(user.user), b"", Depth="1")
    assert status == 207, body
    hrefs = [h.text for h in etree.fromstring(body).iter("{DAV:}href") if h.text]
    members = sorted(h for h in hrefs if h.endswith(".xml"))
    return members[-1]


def notification_path(user: str) -> str:
    return f"/.davproxy/notifications/{user}/"


def multiget(collection: str) -> bytes:
    hrefs = "".join(f"<D:href>{collection}e{n}.ics</D:href>" for n in range(MULTIGET_HREFS))
    return (
        '<?xml version="1.0" encoding="utf-8"?><C:calendar-multiget xmlns:D="DAV:" '
        'xmlns:C="urn:ietf:params:xml:ns:caldav"><D:prop><D:getetag/><C:calendar-data/>'
        f"</D:prop>{hrefs}</C:calendar-multiget>"
    ).encode()


Request = Callable[[], Awaitable[tuple[int, bytes, dict[str, str]]]]


async def paired(proxy: ServerProcess, a: Request, b: Request, rounds: int) -> dict[str, float]:
    """Alternating a and b; medians (ms) and davproxy CPU per request (ms) of each."""
    times: dict[str, list[float]] = {"a": [], "b": []}
    cpu = {"a": 0.0, "b": 0.0}
    pid = proxy.process.pid
    for _ in range(3):  # warm-up
        await a()
        await b()
    for n in range(rounds):
        for side, request in (("a", a), ("b", b)) if n % 2 == 0 else (("b", b), ("a", a)):
            before, started = cpu_seconds(pid), time.perf_counter()
            status, body, _ = await request()
            times[side].append((time.perf_counter() - started) * 1000)
            cpu[side] += cpu_seconds(pid) - before
            assert status in (200, 207), (status, body[:300])
    return {
        "a_ms": statistics.median(times["a"]),
        "b_ms": statistics.median(times["b"]),
        "a_cpu": cpu["a"] * 1000 / rounds,
        "b_cpu": cpu["b"] * 1000 / rounds,
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def radicale_behind_davproxy(folder: Path, stack: ExitStack) -> ServerProcess:
    """A real Radicale and davproxy in front of it (proxy-auth, access log on), both
    stopped with ``stack``; davproxy's store is ``folder/davproxy/store.sqlite3``."""
    radicale = stack.enter_context(start_radicale(folder / "radicale", log_level="warning"))
    return stack.enter_context(
        start_proxy(
            folder / "davproxy",
            upstream_url=radicale.url,
            kind="radicale",
            mode="proxy-auth",
            htpasswd=write_htpasswd(folder / "users.htpasswd"),
        )
    )


async def run(folder: Path, stack: ExitStack, rounds: int) -> None:
    proxy = radicale_behind_davproxy(folder, stack)
    async with raw_session() as session:
        alice, bob = Client(session, proxy.url, "alice"), Client(session, proxy.url, "bob")
        copies = await seed(alice, bob)
        print(f"seeded: {COPIES} calendars shared with bob, {EVENTS} events in the first")

        rows = []
        listing = await paired(
            proxy,
            lambda: bob("PROPFIND", "/bob/", LISTING, Depth="1", **XML),
            lambda: alice("PROPFIND", "/alice/", LISTING, Depth="1", **XML),
            rounds,
        )
        rows.append(("home PROPFIND Depth 1, 50 copies vs 50 own", listing, 1.2))
        get = await paired(
            proxy,
            lambda: bob("GET", copies[0] + "e7.ics"),
            lambda: alice("GET", "/alice/cal0/e7.ics"),
            rounds * 4,
        )
        rows.append(("GET of one event, copy vs own", get, 1.1))
        report = await paired(
            proxy,
            lambda: bob("REPORT", copies[0], multiget(copies[0]), Depth="1", **XML),
            lambda: alice("REPORT", "/alice/cal0/", multiget("/alice/cal0/"), Depth="1", **XML),
            rounds,
        )
        rows.append((f"calendar-multiget of {MULTIGET_HREFS}, copy vs own", report, 1.1))

        notes = await notification_figures(folder, proxy, bob, rounds)

    print(f"\n{'path':<46} {'sharee ms':>10} {'owner ms':>9} {'ratio':>6}  target   "
          f"{'dp cpu sharee/owner ms':>24}")  # fmt: skip
    for name, figures, target in rows:
        ratio = figures["a_ms"] / figures["b_ms"]
        print(
            f"{name:<46} {figures['a_ms']:>10.2f} {figures['b_ms']:>9.2f} {ratio:>5.2f}x "
            f" <= {target}x {verdict(ratio <= target)}  "
            f"{figures['a_cpu']:>10.2f} / {figures['b_cpu']:.2f}"
        )
    print(f"\n{'notification collection':<52} {'davproxy CPU ms':>16}  target")
    for name, cpu, limit in notes:
        print(f"{name:<52} {cpu:>16.1f}  < {limit:.0f} ms {verdict(cpu < limit)}")


NOTE_PROPS = (
    b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:" '
    b'xmlns:CS="http://calendarserver.org/ns/"><D:prop><D:getetag/><D:resourcetype/>'
    b"<D:notificationtype/><CS:notificationtype/><D:sync-token/></D:prop></D:propfind>"
)


def sync_body(token: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?><D:sync-collection xmlns:D="DAV:">'
        f"<D:sync-token>{token}</D:sync-token><D:sync-level>1</D:sync-level>"
        "<D:prop><D:getetag/><D:notificationtype/></D:prop></D:sync-collection>"
    ).encode()


async def cpu_of(proxy: ServerProcess, request: Request, times: int) -> tuple[float, bytes]:
    """davproxy's CPU per request (ms) over ``times`` requests, and the last answer."""
    pid = proxy.process.pid
    before = cpu_seconds(pid)
    body = b""
    for _ in range(times):
        status, body, _ = await request()
        assert status == 207, (status, body[:300])
    return (cpu_seconds(pid) - before) * 1000 / times, body


async def notification_figures(
    folder: Path, proxy: ServerProcess, bob: Client, rounds: int
) -> list[tuple[str, float, float]]:
    """bob's notification collection grown to 10,000 invitations (written through
    davproxy's own store API, as the sharing code writes them), then listed and synced."""
    from davproxy.store import Store

    store = Store.open(folder / "davproxy" / "store.sqlite3")
    model = next(n for n in store.notifications("up", "bob") if n.type == "share-invite")
    with store.transaction():
        for n in range(NOTIFICATIONS - len(store.notifications("up", "bob"))):
            store.notification_put("up", "bob", f"bench-{n:05d}.xml", model.type, model.body)
    collection = notification_path("bob")
    figures = []
    listing, body = await cpu_of(
        proxy,
        lambda: bob("PROPFIND", collection, NOTE_PROPS, Depth="1", **XML),
        max(3, rounds // 4),
    )
    members = body.count(b"<D:response>") + body.count(b"<d:response>") - 1
    figures.append((f"notifications PROPFIND Depth 1 ({members} members)", listing, 50.0))
    token = etree.fromstring(body).findtext(".//{DAV:}sync-token") or ""
    store.notification_put("up", "bob", "bench-new.xml", model.type, model.body)
    synced, answer = await cpu_of(
        proxy, lambda: bob("REPORT", collection, sync_body(token), **XML), rounds
    )
    changed = len(etree.fromstring(answer).findall("{DAV:}response"))
    figures.append((f"notifications incremental sync ({changed} changed)", synced, 50.0))
    store.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="davproxy-bench-") as tmp, ExitStack() as stack:
        asyncio.run(run(Path(tmp), stack, 10 if args.quick else 40))
    return 0


if __name__ == "__main__":
    sys.exit(main())
