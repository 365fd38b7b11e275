"""How the sharing and feed figures of issue 17 grow with the work: 1x, 10x, 100x.

* **notification collection**: a real davproxy with 1,000 / 10,000 / 100,000 notifications
  (seeded through its store API, as the sharing code writes them): CPU of a
  ``PROPFIND Depth: 1`` and of an incremental ``sync-collection`` with one change.
* **feed refresh**: ``Refresher.apply`` on a real store with a feed of 1,000 / 10,000 /
  100,000 events: the first import, then a body with one changed event (the memo of
  the previous split in hand), CPU of the whole process (the split runs in a thread).

Printed, never asserted:

    python bench/scaling.py [--quick]     # --quick: 1x and 10x only
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO, REPO / "bench"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

import feeds as feed_bench  # noqa: E402
from lxml import etree  # noqa: E402
from sharing_paths import (  # noqa: E402
    NOTE_PROPS,
    XML,
    cpu_seconds,
    radicale_behind_davproxy,
    sync_body,
)

from davproxy.store import Store  # noqa: E402
from tests.helpers import basic, raw_session  # noqa: E402

INVITE = (
    '{"access": "read", "collection": "alice/cal/", "comment": "", "components": ["VEVENT"],'
    ' "displayname": "Cal", "dtstamp": 0, "kind": "calendar", "sharee": "bob",'
    ' "sharee_href": "mailto:bob@example.org", "sharer": "alice", "status": "noresponse",'
    ' "uid": "u"}'
)


async def notification_row(folder: Path, count: int) -> tuple[float, float]:
    """(listing CPU ms, incremental sync CPU ms) with ``count`` notifications."""
    store = Store.open(folder / "davproxy" / "store.sqlite3")
    with store.transaction():
        for n in range(count):
            store.notification_put("up", "bob", f"n{n:06d}.xml", "share-invite", INVITE)
    store.close()
    with ExitStack() as stack:
        proxy = radicale_behind_davproxy(folder, stack)
        url = proxy.url + "/.davproxy/notifications/bob/"
        async with raw_session() as session:

            async def call(method: str, body: bytes, **headers: str) -> bytes:
                async with session.request(
                    method, url, data=body, headers={**basic("bob"), **XML, **headers}
                ) as answer:
                    assert answer.status == 207, answer.status
                    return await answer.read()

            await call("PROPFIND", NOTE_PROPS, Depth="0")  # warm-up
            pid = proxy.process.pid
            before = cpu_seconds(pid)
            listing = await call("PROPFIND", NOTE_PROPS, Depth="1")
            listing_ms = (cpu_seconds(pid) - before) * 1000
            token = etree.fromstring(listing).findtext(".//{DAV:}sync-token") or ""
            store = Store.open(folder / "davproxy" / "store.sqlite3")
            store.notification_put("up", "bob", "new.xml", "share-invite", INVITE)
            store.close()
            rounds = 20
            before = cpu_seconds(pid)
            for _ in range(rounds):
                await call("REPORT", sync_body(token))
            sync_ms = (cpu_seconds(pid) - before) * 1000 / rounds
    return listing_ms, sync_ms


async def feed_row(folder: Path, events: int) -> tuple[float, float, float]:
    """(first import CPU ms, one-change apply CPU ms, feed MB) for ``events``."""
    store, feeds, fetcher, refresher = feed_bench.new_refresher(folder / "feeds.sqlite3")
    try:
        with feeds.transaction():
            source_id = feeds.source_ensure("http://127.0.0.1:1/scaling.ics").id
        plain = feed_bench.make_feed(events)
        changed = feed_bench.make_feed(events, changed=events // 2)

        async def apply(body: bytes) -> float:
            source = feeds.source(source_id)
            assert source is not None
            started = time.process_time()
            await refresher.apply(source, body)
            return (time.process_time() - started) * 1000

        first = await apply(plain)
        one = sorted([await apply(changed), await apply(plain), await apply(changed)])[1]
    finally:
        await fetcher.close()
        store.close()
    return first, one, len(plain) / 1e6


async def run(quick: bool) -> None:
    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    print(f"{'notifications':>14} {'PROPFIND Depth 1 CPU ms':>24} {'incremental sync CPU ms':>24}")
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="davproxy-scaling-") as tmp:
            listing, sync = await notification_row(Path(tmp), size)
        print(f"{size:>14,} {listing:>24.1f} {sync:>24.2f}")
    print(f"\n{'feed events':>14} {'MB':>6} {'first import CPU ms':>20} {'one change CPU ms':>18}")
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="davproxy-scaling-") as tmp:
            first, one, megabytes = await feed_row(Path(tmp), size)
        print(f"{size:>14,} {megabytes:>6.1f} {first:>20.0f} {one:>18.1f}")
    print("\nCPU from /proc (davproxy process) or time.process_time() (in-process refresher);")
    print("one run each, on whatever else the machine is doing: look at the growth, not digits.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1x and 10x only")
    args = parser.parse_args()
    asyncio.run(run(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
