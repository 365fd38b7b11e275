"""A feed origin that turns hostile and good again, for a while, under the scheduler.

davproxy's own scheduler refreshes the feed every second (``refresh_floor = 1``,
``retry_base = 1``) while the origin switches every 0.7 s between good versions and
hostile answers: garbage, a truncated or empty body, gigantic (with and without
Content-Length), an endless slow drip, a redirect loop, a 301 chain longer than
``max_redirects``, 503 with Retry-After, and a redirect to an address outside
``allow_networks``.  Meanwhile readers GET the whole feed and sync its collection:
every answer is below 500 and shows exactly the UIDs of one good version.  Afterwards
the store keeps F1-F7 of the kill loop, and the log holds no traceback.

``SOAK_FEED_SECONDS`` sets the duration (default 30 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from davproxy.ops.embedded import start_radicale
from tests.feed_origin import Origin, calendar, event
from tests.helpers import start_proxy, write_htpasswd

from .conftest import HOST, session
from .test_kill_loop import inspect_feeds

pytestmark = pytest.mark.soak

SECONDS = float(os.environ.get("SOAK_FEED_SECONDS", "30"))
READERS = 6
MAX_BYTES = 64 * 1024
FEEDS = "/.davproxy/feeds/"
SETTINGS = (
    '[feeds]\nallow_networks = ["127.0.0.1/32"]\nrefresh_floor = 1\nrefresh_default = 1\n'
    f"refresh_ceiling = 2\njitter = 0\nretry_base = 1\nmax_bytes = {MAX_BYTES}\n"
    "fetch_timeout = 1\nmax_redirects = 5\n"
)
SYNC = (
    '<?xml version="1.0"?><D:sync-collection xmlns:D="DAV:"><D:sync-token/>'
    "<D:sync-level>1</D:sync-level><D:prop><D:getetag/></D:prop></D:sync-collection>"
)
HOSTILE = {
    "garbage": {"body": "<html>oops</html>"},
    "empty": {"body": ""},
    "huge": {"body": b"BEGIN:VCALENDAR\r\n" + b"X" * (MAX_BYTES * 3)},
    "endless": {"body": b"BEGIN:VCALENDAR\r\n" + b"X" * (MAX_BYTES * 3), "drip_seconds": 0.0001},
    "drip": {"body": b"BEGIN:VCALENDAR\r\n" + b"X" * 20_000, "drip_seconds": 0.3},
    "loop": {"body": "", "status": 302, "headers": {"Location": "/loop-b.ics"}},
    "chain": {"body": "", "status": 301, "headers": {"Location": "/chain/1"}},
    "busy": {"body": "later", "status": 503, "headers": {"Retry-After": "1"}},
    "ssrf": {"body": "", "status": 302, "headers": {"Location": "http://127.0.0.2:9/x.ics"}},
}


def version(rng: random.Random, uids: set[str], number: int) -> str:
    """A good body: a few UIDs replaced (never most: no confirmation needed)."""
    for uid in rng.sample(sorted(uids), 2):
        uids.discard(uid)
    uids.update(f"r{number}-{n}@soak" for n in range(2))
    return calendar(*(event(uid, f"{uid} v{number}") for uid in sorted(uids)))


async def test_hostile_origin_under_the_scheduler(tmp_path: Path) -> None:
    seed = int(os.environ.get("SOAK_SEED", str(random.randrange(2**32))))
    rng = random.Random(seed)
    origin = Origin()
    uids = {f"base-{n}@soak" for n in range(16)}
    good: set[frozenset[str]] = set()
    origin.serve("/rot.ics", version(rng, uids, 0))
    good.add(frozenset(uids))
    origin.serve("/loop-b.ics", b"", status=302, headers={"Location": "/rot.ics"})
    for hop in range(1, 10):
        origin.serve(f"/chain/{hop}", b"", status=301, headers={"Location": f"/chain/{hop + 1}"})
    origin.serve("/chain/10", "unreachable")
    tables = f'[[feeds]]\nname = "rot"\nurl = "{origin.url("/rot.ics")}"\npublic = true\n'
    answers: Counter[int] = Counter()
    wrong: list[str] = []
    installed: Counter[str] = Counter()
    with (
        origin.running(),
        start_radicale(tmp_path / "radicale", host=HOST, auth="x-remote-user") as radicale,
        start_proxy(
            tmp_path / "davproxy", upstream_url=radicale.url, kind="radicale",
            mode="proxy-auth", htpasswd=write_htpasswd(tmp_path / "users.htpasswd"),
            server_extra=SETTINGS, mapping_extra=tables,
        ) as proxy,
    ):  # fmt: skip
        base = proxy.url.rstrip("/")
        deadline = time.monotonic() + SECONDS
        # the first refresh (due at start) brings version 0
        async with session(timeout=30) as http:
            for _ in range(100):
                async with http.get(f"{base}{FEEDS}rot.ics") as r:
                    if "BEGIN:VEVENT" in await r.text():
                        break
                await asyncio.sleep(0.1)

            async def reader() -> None:
                while time.monotonic() < deadline:
                    async with http.get(f"{base}{FEEDS}rot.ics") as r:
                        text = await r.text()
                        answers[r.status] += 1
                    shown = frozenset(re.findall(r"^UID:(.+?)\r?$", text, re.MULTILINE))
                    if r.status != 200 or shown not in good:
                        wrong.append(f"GET {r.status}: {sorted(shown)[:4]}… not a good version")
                    async with http.request(
                        "REPORT", f"{base}{FEEDS}rot/", data=SYNC, headers={"Depth": "1"}
                    ) as r:
                        await r.read()
                        answers[r.status] += 1
                        if r.status != 207:
                            wrong.append(f"sync-collection answered {r.status}")

            async def turner() -> None:
                number = 0
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.7)
                    if rng.random() < 0.35:
                        number += 1
                        body = version(rng, uids, number)
                        good.add(frozenset(uids))  # before it can be fetched
                        origin.serve("/rot.ics", body)
                        installed["good"] += 1
                    else:
                        name = rng.choice(sorted(HOSTILE))
                        options = dict(HOSTILE[name])
                        origin.serve("/rot.ics", options.pop("body"), **options)  # type: ignore[arg-type]
                        installed[name] += 1

            await asyncio.gather(turner(), *(reader() for _ in range(READERS)))
        listed = subprocess.run(
            [sys.executable, "-m", "davproxy", "admin", "-c", str(tmp_path / "davproxy" /
             "davproxy.toml"), "--json", "feeds"], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        log = proxy.log_path.read_text(errors="replace")
    (row,) = json.loads(listed.stdout)
    store = tmp_path / "davproxy" / "store.sqlite3"
    served = {origin.url("/rot.ics"): good | {frozenset()}}
    problems = inspect_feeds(store, served, configured=("rot",))
    outcomes = Counter(re.findall(r"feed \S+rot\.ics: ([a-z-]+)", log))
    errors = Counter(
        re.sub(r"\d+", "N", m) for m in re.findall(r"feed \S+rot\.ics: failed: ([^(\n]+)", log)
    )
    print(
        f"\nhostile origin: {SECONDS:.0f} s, seed {seed}, origin states {dict(installed)};"
        f"\n  refreshes {dict(outcomes)}; failures {dict(errors)}"
        f"\n  reader answers {dict(answers)}; admin status {row['status']} {row['error']!r}"
    )
    assert wrong == [], wrong[:10]
    assert all(status < 500 for status in answers), answers
    assert problems == [], problems
    assert "Traceback" not in log and "unhandled error" not in log
    assert row["status"] in ("ok", "error") and (row["status"] == "ok") == (row["error"] == "")
    assert outcomes["failed"] > 0 and outcomes["changed"] > 0, outcomes
