"""How long a whole-feed import holds davproxy's event loop, in one run.

A feed import writes one row per object.  The refresher splits the feed and records the
changes in a worker thread, on a connection of its own (``FeedStore.in_worker``); the
event loop's connection only reads, and in WAL mode never waits for that writer.  This
bench imports feeds of 1,000 to 50,000 events into a real store while a 1 ms ticker runs
on the loop, and prints the longest gap the ticker saw next to the time the import took,
once with the import on a worker (as davproxy does it) and once on the loop's own
connection (as it did before), so the ratio is measured in the same run.

    .venv/bin/python bench/loop_stall.py [--events 1000,10000,50000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from davproxy.config import FeedsConfig  # noqa: E402
from davproxy.feeds.fetch import Fetcher  # noqa: E402
from davproxy.feeds.refresh import Refresher  # noqa: E402
from davproxy.feeds.store import FeedStore  # noqa: E402
from davproxy.store import Store  # noqa: E402
from tests.feed_origin import calendar, event  # noqa: E402

T = TypeVar("T")


class OnLoop(FeedStore):
    """The old way, for comparison: the import runs on the loop's own connection."""

    async def in_worker(self, work: Callable[[FeedStore], T]) -> T:
        return work(self)


async def stall_during(run: Callable[[], Awaitable[object]]) -> tuple[float, float, float]:
    """(seconds the work took, longest gap between 1 ms ticks on the loop meanwhile,
    the 99th percentile gap: what a request arriving during the import waits)."""
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    await run()
    took = time.perf_counter() - started
    task.cancel()
    gaps.sort()
    return took, gaps[-1], gaps[int(len(gaps) * 0.99)]


async def one(n: int, store_class: type[FeedStore]) -> tuple[float, float, float]:
    folder = Path(tempfile.mkdtemp(prefix="davproxy-stall-"))
    store = Store.open(folder / "s.sqlite3")
    feeds = store_class(store)
    settings = FeedsConfig()
    refresher = Refresher(feeds, Fetcher(settings), settings)
    body = calendar(*(event(f"e{i}@x", f"Event number {i}") for i in range(n))).encode()
    with feeds.transaction():
        source = feeds.source_ensure("https://origin.example/f.ics")
    try:
        report = None

        async def run() -> None:
            nonlocal report
            report = await refresher.apply(source, body, confirm_losses=False)

        result = await stall_during(run)
        assert report is not None and report.outcome == "changed", report
        return result
    finally:
        await refresher.fetcher.close()
        feeds.close()
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", default="1000,10000,50000")
    args = parser.parse_args()
    print("events   import took (worker / loop)   longest stall (worker / loop)   p99 gap")
    for n in (int(v) for v in args.events.split(",")):
        took_w, stall_w, p99_w = asyncio.run(one(n, FeedStore))
        took_l, stall_l, p99_l = asyncio.run(one(n, OnLoop))
        print(
            f"{n:>6}   {took_w * 1000:>8.0f} / {took_l * 1000:>6.0f} ms"
            f"          {stall_w * 1000:>6.0f} / {stall_l * 1000:>4.0f} ms"
            f" ({stall_l / stall_w:.1f}x)"
            f"      {p99_w * 1000:.1f} / {p99_l * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()
