"""Hostile feed origins: davproxy keeps the last good data, says what went wrong, never 5xx.

One davproxy with one operator feed per hostile behaviour, each first refreshed from a
good origin answer.  Then every origin turns hostile (garbage, gigantic with and without
Content-Length, an endless slow drip, a redirect loop, a 301 chain longer than
``max_redirects``, 503 + Retry-After, a redirect to a private address, an origin on a
private address no longer allowed) and ``davproxy admin refresh`` runs: every feed must
still serve its last good objects through ``/.davproxy/feeds/<name>.ics`` and its
collection, no answer is a 5xx, and ``davproxy admin --json feeds`` shows ``error`` with
a message naming the cause.  A short 301 chain to a good body is no error: the new URL
is remembered.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from davproxy.ops.embedded import start_radicale
from tests.feed_origin import FeedSite, Origin, calendar, event
from tests.helpers import fetch, open_store, raw_session, start_proxy, write_htpasswd

FEEDS = "/.davproxy/feeds/"
MAX_BYTES = 64 * 1024
FETCH_TIMEOUT = 1.5
PRIVATE_HOST = "127.0.0.2"  # loopback too, but outside the allow list of phase two

#: feed name -> (hostile reply for the origin path, words the admin error must contain)
HOSTILE: dict[str, tuple[dict[str, object], tuple[str, ...]]] = {
    "garbage": ({"body": "<html><body>Service moved</body></html>"}, ("icalendar",)),
    "binary": ({"body": bytes(range(256)) * 40}, ("icalendar",)),
    "huge": ({"body": b"BEGIN:VCALENDAR\r\n" + b"X" * (MAX_BYTES * 4)}, ("exceeds",)),
    "endless": (  # no Content-Length: the cap must stop the read itself
        {"body": b"BEGIN:VCALENDAR\r\n" + b"X" * (MAX_BYTES * 4), "drip_seconds": 0.0001},
        ("exceeds", "max_bytes"),
    ),
    "drip": (
        {"body": calendar(*(event(f"d{i}@x", "D" * 200) for i in range(40))), "drip_seconds": 0.5},
        ("no complete answer", f"{FETCH_TIMEOUT:g} s"),
    ),  # fmt: skip
    "loop": ({"status": 302, "headers": {"Location": "/loop-b.ics"}}, ("redirect loop",)),
    "chain": ({"status": 301, "headers": {"Location": "/chain/1"}}, ("more than 5 redirects",)),
    "busy": ({"body": "later", "status": 503, "headers": {"Retry-After": "120"}}, ("503",)),
    "ssrf": ({"status": 302, "headers": {"Location": "PRIVATE/x.ics"}}, ("refused",)),
    "private": ({"body": "unused"}, ("refused", PRIVATE_HOST)),
}


@dataclass
class Faults(FeedSite):
    private: Origin  # an origin on an address outside allow_networks

    def feed_path(self, name: str) -> str:
        return "/moved.ics" if name == "moved" else f"/{name}.ics"


def good(name: str, version: int = 1) -> str:
    return calendar(event(f"{name}-1@x", f"{name} one v{version}"), event(f"{name}-2@x", "two"))


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faults]:
    folder = tmp_path_factory.mktemp("feed-faults")
    origin, private = Origin(), Origin(PRIVATE_HOST)
    tables = ""
    for name in (*HOSTILE, "moved"):
        base = private.base if name == "private" else origin.base
        tables += f'[[feeds]]\nname = "{name}"\nurl = "{base}/{name}.ics"\npublic = true\n\n'
    settings = (
        '[feeds]\nallow_networks = ["127.0.0.0/8"]\n'
        f"max_bytes = {MAX_BYTES}\nfetch_timeout = {FETCH_TIMEOUT}\n"
    )
    with (
        origin.running(),
        private.running(),
        start_radicale(folder / "radicale", auth="x-remote-user") as radicale,
    ):
        for name in HOSTILE:
            (private if name == "private" else origin).serve(f"/{name}.ics", good(name))
        origin.serve("/moved.ics", good("moved"))
        with start_proxy(
            folder / "davproxy", upstream_url=radicale.url, kind="radicale", mode="proxy-auth",
            htpasswd=write_htpasswd(folder / "users.htpasswd"), mapping_extra=tables,
            server_extra=settings,
        ) as proxy:  # fmt: skip
            faults = Faults(origin, proxy, folder / "davproxy" / "davproxy.toml", private)
            done = faults.admin("refresh")
            assert done.returncode == 0, done.stdout + done.stderr
            yield faults


async def get_all(faults: Faults, name: str) -> tuple[int, bytes, int]:
    """The whole feed and its collection listing; returns (GET status, body, PROPFIND)."""
    async with raw_session() as s:
        whole = await fetch(s, "GET", faults.url(f"{FEEDS}{name}.ics"))
        listing = await fetch(s, "PROPFIND", faults.url(f"{FEEDS}{name}/"), {"Depth": "1"})
    return whole.status, whole.body, listing.status


async def test_hostile_origins_keep_the_last_good_data(faults: Faults) -> None:
    origin = faults.origin
    for name in HOSTILE:
        status, body, _ = await get_all(faults, name)
        assert status == 200 and f"UID:{name}-1@x".encode() in body, (name, body[:300])

    for name, (reply, _) in HOSTILE.items():
        options = dict(reply)
        location = options.get("headers", {}).get("Location", "")  # type: ignore[attr-defined]
        if location.startswith("PRIVATE"):
            options["headers"] = {"Location": location.replace("PRIVATE", faults.private.base)}
        body = options.pop("body", b"")
        (faults.private if name == "private" else origin).serve(f"/{name}.ics", body, **options)  # type: ignore[arg-type]
    origin.serve("/loop-b.ics", b"", status=302, headers={"Location": "/loop.ics"})
    for hop in range(1, 10):
        origin.serve(f"/chain/{hop}", b"", status=301, headers={"Location": f"/chain/{hop + 1}"})
    origin.serve("/chain/10", good("chain", 2))
    # a short permanent chain to a good body is followed and remembered
    origin.serve("/moved.ics", b"", status=301, headers={"Location": "/moved/1"})
    origin.serve("/moved/1", b"", status=308, headers={"Location": "/moved/new.ics"})
    origin.serve("/moved/new.ics", good("moved", 2))
    # phase two: the private origin's address is no longer allowed (the admin command
    # reads the configuration afresh; the running server keeps its own)
    text = faults.config.read_text()
    faults.config.write_text(text.replace('["127.0.0.0/8"]', '["127.0.0.1/32"]'))
    try:
        private_hits = faults.private.hits("/x.ics"), faults.private.hits("/private.ics")
        started = time.monotonic()
        refreshed = faults.admin("--json", "refresh")
        took = time.monotonic() - started
        listed = faults.admin("--json", "feeds")
    finally:
        faults.config.write_text(text)
    assert took < FETCH_TIMEOUT + 8, f"refreshing hostile origins took {took:.1f} s"
    outcomes = {r["url"].rsplit("/", 1)[1][:-4]: r for r in json.loads(refreshed.stdout)}
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    for name, (_, words) in HOSTILE.items():
        assert outcomes[name]["outcome"] == "failed", (name, outcomes[name])
        row = rows[name]
        assert row["status"] == "error", (name, row)
        assert all(w.lower() in row["error"].lower() for w in words), (name, row["error"])
        assert row["objects"] == 2, (name, row)
        status, body, listing = await get_all(faults, name)
        assert status == 200 and listing == 207, (name, status, listing)
        assert f"UID:{name}-1@x".encode() in body and f"{name} one v1".encode() in body, name
    # never fetched from there: refused before connecting
    assert (faults.private.hits("/x.ics"), faults.private.hits("/private.ics")) == private_hits
    assert outcomes["moved"]["outcome"] == "changed", outcomes["moved"]
    assert rows["moved"]["status"] == "ok"
    status, body, _ = await get_all(faults, "moved")
    assert status == 200 and b"moved one v2" in body

    # the new URL is remembered: the old one turning to garbage does not matter
    origin.serve("/moved.ics", "garbage")
    origin.serve("/moved/new.ics", good("moved", 3))
    assert faults.admin("refresh", "moved").returncode == 0
    status, body, _ = await get_all(faults, "moved")
    assert status == 200 and b"moved one v3" in body

    # 503 + Retry-After: the next scheduled fetch waits at least that long
    store = open_store(faults.config)
    try:
        row = store.execute(
            "SELECT next_fetch, last_attempt FROM feed_sources WHERE url LIKE '%/busy.ics'"
        ).fetchone()
    finally:
        store.close()
    assert row[0] - row[1] >= 119, row


async def test_no_server_error_anywhere_under_feeds(faults: Faults) -> None:
    async with raw_session() as s:
        for path in ("", "garbage/", "garbage.ics", "drip/", "private/x.ics", "nope.ics"):
            for method in ("GET", "HEAD", "PROPFIND", "REPORT", "OPTIONS"):
                answer = await fetch(s, method, faults.url(FEEDS + path), {"Depth": "1"})
                assert answer.status < 500, (method, path, answer.status, answer.body[:200])
    text = faults.proxy.log_path.read_text(errors="replace")
    assert "Traceback" not in text and "unhandled error" not in text
