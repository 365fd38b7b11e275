"""What the store costs per request on each engine: SQLite (a file) and PostgreSQL
(a throwaway cluster on loopback, started here; ``ops/postgres.py``).

Every request asks the store whether another connection committed (``notice_changes``);
the lookups a request makes are remembered between changes, so that check is the
store's whole share of a plain request.  Also timed: an uncached share lookup (what a
request pays once after a change), a small write transaction (a reply, a notification:
on PostgreSQL it takes the fleet-wide writer lock and advances the clock), and the
request path's lookup once remembered.  Wall and CPU time per call, median of 5 rounds,
both engines in one run.

    .venv/bin/python bench/store.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from davproxy.ops import postgres  # noqa: E402
from davproxy.store import Store  # noqa: E402
from davproxy.store.records import NewShare  # noqa: E402


def timed(call: Callable[[], object], count: int) -> tuple[float, float]:
    """(wall µs, CPU µs) per call, median of 5 rounds."""
    walls, cpus = [], []
    for _ in range(5):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            call()
        walls.append((time.perf_counter() - wall) / count * 1e6)
        cpus.append((time.process_time() - cpu) / count * 1e6)
    return statistics.median(walls), statistics.median(cpus)


def measure(store: Store, count: int) -> dict[str, tuple[float, float]]:
    for i in range(50):
        with store.transaction():
            share, _ = store.share_upsert(
                NewShare(
                    upstream="u",
                    owner="alice",
                    collection=f"alice/c{i}/",
                    kind="calendar",
                    sharee="bob",
                    sharee_href="/bob/",
                    access="read",
                    status="noresponse",
                )  # fmt: skip
            )
            store.share_set_status(share, "accepted", f"bob/c{i}/", expect="noresponse")
    counter = iter(range(10**9))

    def write() -> None:
        with store.transaction():
            store.notification_put("u", "bob", f"n{next(counter)}", "invite", "{}")

    store.notice_changes()
    store.mounts_of("u", "bob")
    return {
        "notice_changes (every request)": timed(store.notice_changes, count),
        "mounts_of, remembered": timed(lambda: store.mounts_of("u", "bob"), count),
        "share_for, uncached": timed(lambda: store.share_for("u", "alice/c7/", "bob"), count),
        "write transaction (one notification)": timed(write, max(count // 10, 50)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls")
    args = parser.parse_args()
    count = 300 if args.quick else 3000
    results: dict[str, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        sqlite = Store.open(Path(folder) / "bench.sqlite3")
        results["sqlite"] = measure(sqlite, count)
        sqlite.close()
    reason = postgres.unavailable()
    if reason is None:
        with postgres.start_postgres() as cluster:
            cluster.create_database("bench")
            store = Store.open(f"postgresql://postgres@127.0.0.1:{cluster.port}/bench")
            results["postgresql"] = measure(store, count)
            store.close()
    else:
        print(f"PostgreSQL not measured: {reason}")
    print(f"{'per call (µs, wall / CPU)':40}" + "".join(f"{k:>22}" for k in results))
    for name in results["sqlite"]:
        cells = "".join(f"{r[name][0]:>13.1f} / {r[name][1]:>5.1f}" for r in results.values())
        print(f"{name:40}{cells}")


if __name__ == "__main__":
    main()
