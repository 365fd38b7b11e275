"""A public prefix in front of real upstreams: /dav/ -> Radicale (X-Script-Name) and
/dav/ -> Xandikos at / (hrefs rewritten).  Clients must only ever see /dav/ paths,
and requests that carry paths (Destination, multiget hrefs) must reach the right
resources."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from davproxy.ops.embedded import ServerProcess, start_radicale, start_xandikos
from tests.helpers import basic, fetch, raw_session, start_proxy, write_htpasswd

XML = {"Content-Type": "application/xml; charset=utf-8"}
PROPFIND = (
    '<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
    "<D:prop><D:resourcetype/><D:getetag/><D:current-user-principal/><C:calendar-home-set/>"
    "</D:prop></D:propfind>"
)
EVENT = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:{uid}\r\n"
    "DTSTAMP:20261101T090000Z\r\nDTSTART:20261124T100000Z\r\nSUMMARY:x\r\nEND:VEVENT\r\n"
    "END:VCALENDAR\r\n"
)


@pytest.fixture(scope="module", params=["radicale", "xandikos"])
def prefixed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ServerProcess, ServerProcess, str]]:
    folder = tmp_path_factory.mktemp(f"prefix-{request.param}")
    starter = start_radicale if request.param == "radicale" else start_xandikos
    with starter(folder / "upstream") as upstream:
        htpasswd = write_htpasswd(folder / "users.htpasswd")
        with start_proxy(
            folder / "davproxy", upstream_url=upstream.url, kind=request.param,
            mode="proxy-auth", htpasswd=htpasswd, prefix="/dav/",
        ) as proxy:  # fmt: skip
            home = "/dav/alice/" if request.param == "radicale" else "/dav/alice/calendars/"
            yield request.param, upstream, proxy, home


def hrefs(body: bytes) -> list[str]:
    return re.findall(r"<(?:\w+:)?href>([^<]*)</(?:\w+:)?href>", body.decode())


async def test_prefixed_upstream_shows_only_public_paths(prefixed) -> None:
    _, _, proxy, home = prefixed
    base = proxy.url.rstrip("/")
    name = f"pre-{uuid.uuid4().hex[:6]}"
    calendar = f"{home}{name}/"
    alice = basic("alice")
    async with raw_session() as session:
        well_known = await fetch(session, "GET", base + "/.well-known/caldav")
        assert well_known.status == 301 and well_known.header("Location") == "/dav/"

        root = await fetch(
            session, "PROPFIND", base + "/dav/", {**alice, "Depth": "0", **XML}, PROPFIND
        )
        assert root.status == 207
        assert "/dav/alice/" in hrefs(root.body)

        made = await fetch(session, "MKCALENDAR", base + calendar, alice)
        assert made.status == 201
        for uid in ("a", "b"):
            put = await fetch(
                session,
                "PUT",
                f"{base}{calendar}{uid}.ics",
                {**alice, "Content-Type": "text/calendar"},
                EVENT.format(uid=uid),
            )
            assert put.status == 201

        listing = await fetch(
            session, "PROPFIND", base + calendar, {**alice, "Depth": "1", **XML}, PROPFIND
        )
        assert listing.status == 207
        paths = [re.sub(r"^https?://[^/]+", "", h) for h in hrefs(listing.body)]
        assert f"{calendar}a.ics" in paths and f"{calendar}b.ics" in paths
        assert all(p.startswith("/dav/") for p in paths), paths

        multiget = (
            '<C:calendar-multiget xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
            f"<D:prop><D:getetag/><C:calendar-data/></D:prop><D:href>{calendar}a.ics</D:href>"
            f"<D:href>{calendar}b.ics</D:href></C:calendar-multiget>"
        )
        got = await fetch(
            session, "REPORT", base + calendar, {**alice, "Depth": "1", **XML}, multiget
        )
        assert got.status == 207 and got.body.count(b"BEGIN:VEVENT") == 2

        sync = (
            '<D:sync-collection xmlns:D="DAV:"><D:sync-token/><D:sync-level>1</D:sync-level>'
            "<D:prop><D:getetag/></D:prop></D:sync-collection>"
        )
        synced = await fetch(session, "REPORT", base + calendar, {**alice, **XML}, sync)
        assert synced.status == 207
        assert all(
            re.sub(r"^https?://[^/]+", "", h).startswith("/dav/") for h in hrefs(synced.body)
        )

        other = f"{home}{name}-2/"
        assert (await fetch(session, "MKCALENDAR", base + other, alice)).status == 201
        moved = await fetch(
            session,
            "MOVE",
            f"{base}{calendar}b.ics",
            {**alice, "Destination": f"{base}{other}b.ics"},
        )
        assert moved.status in (201, 204), moved.body
        assert (await fetch(session, "GET", f"{base}{other}b.ics", alice)).status == 200
        assert (await fetch(session, "GET", f"{base}{calendar}b.ics", alice)).status == 404
        # A relative (path-only) Destination is mapped as well.
        moved_back = await fetch(
            session, "MOVE", f"{base}{other}b.ics", {**alice, "Destination": f"{calendar}b.ics"}
        )
        assert moved_back.status in (201, 204), moved_back.body
        assert (await fetch(session, "GET", f"{base}{calendar}b.ics", alice)).status == 200
        assert (await fetch(session, "GET", base + "/alice/", alice)).status == 404


async def test_script_name_bodies_equal_radicale_own_prefix_handling(tmp_path: Path) -> None:
    """With X-Script-Name Radicale writes /dav/ hrefs itself: davproxy leaves bytes alone."""
    with start_radicale(tmp_path / "radicale") as upstream:
        with start_proxy(
            tmp_path / "davproxy", upstream_url=upstream.url, kind="radicale", mode="proxy-auth",
            htpasswd=write_htpasswd(tmp_path / "users.htpasswd"), prefix="/dav/",
        ) as proxy:  # fmt: skip
            async with raw_session() as session:
                direct = await fetch(session, "PROPFIND", upstream.url + "alice/", {
                    "X-Remote-User": "alice", "X-Script-Name": "/dav", "X-Forwarded-For": "127.0.0.1",
                    "Depth": "0", **XML}, PROPFIND)  # fmt: skip
                proxied = await fetch(session, "PROPFIND", proxy.url + "dav/alice/", {
                    **basic("alice"), "Depth": "0", **XML}, PROPFIND)  # fmt: skip
    assert direct.status == proxied.status == 207
    assert proxied.body == direct.body
    assert "/dav/alice/" in hrefs(proxied.body)
