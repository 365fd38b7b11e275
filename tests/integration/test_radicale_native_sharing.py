"""Radicale's built-in map sharing, driven by davproxy.access.radicale_api.

A real Radicale 3.9 with ``[sharing] type = csv``; every check goes to Radicale directly,
with ``X-Remote-User`` standing in for davproxy's proxy-auth mode.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from davproxy.access.radicale_api import NativeSharingError, RadicaleSharingApi, Reconciled
from davproxy.ops.embedded import ServerProcess, _spawn, free_port

OWNER, SHAREE, OTHER = "alice", "bob", "carol"
COLLECTION = "/alice/work/"
MOUNT = "/bob/alice-work/"

EVENT = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//davproxy tests//EN
BEGIN:VEVENT
UID:{uid}
DTSTAMP:20260101T000000Z
DTSTART:20260105T100000Z
DTEND:20260105T110000Z
SUMMARY:{summary}
END:VEVENT
END:VCALENDAR
"""


def as_user(user: str) -> dict[str, str]:
    return {"X-Remote-User": user}


def start_sharing_radicale(folder: Path) -> ServerProcess:
    """Radicale trusting X-Remote-User, with map sharing on (embedded.start_radicale
    cannot add the [sharing] section)."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    host, port = "127.0.0.1", free_port()
    config = f"""[server]
hosts = {host}:{port}
[auth]
type = http_x_remote_user
delay = 0
[rights]
type = owner_only
[storage]
filesystem_folder = {folder / "collections"}
[sharing]
type = csv
database_path = {folder / "sharing.csv"}
collection_by_map = true
permit_create_map = true
[web]
type = none
[logging]
level = warning
"""
    config_path = folder / "radicale.ini"
    config_path.write_text(config, encoding="utf-8")
    argv = [sys.executable, "-m", "radicale", "--config", str(config_path)]
    server = _spawn("radicale", argv, folder, host, port)
    server.wait_ready()
    return server


@pytest.fixture
def radicale(tmp_path: Path) -> Iterator[ServerProcess]:
    with start_sharing_radicale(tmp_path / "radicale") as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


class Dav:
    """Plain requests to Radicale as a given user."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base.rstrip("/")

    async def request(
        self, user: str, method: str, path: str, body: str | None = None, **headers: str
    ) -> tuple[int, str]:
        async with self.session.request(
            method, self.base + path, data=body, headers={**as_user(user), **headers}
        ) as response:
            return response.status, await response.text()

    async def status(self, user: str, method: str, path: str, body: str | None = None) -> int:
        extra = {"Content-Type": "text/calendar"} if method == "PUT" else {}
        return (await self.request(user, method, path, body, **extra))[0]

    async def put_event(self, user: str, path: str, uid: str) -> int:
        return await self.status(user, "PUT", path, EVENT.format(uid=uid, summary=uid))

    async def share_api(self, user: str, action: str, body: dict[str, Any]) -> int:
        """A raw sharing API call, as a client other than davproxy would make it."""
        status, _ = await self.request(
            user, "POST", f"/.sharing/v1/map/{action}", json.dumps(body),
            **{"Content-Type": "application/json", "Accept": "application/json"},
        )  # fmt: skip
        return status


@pytest.fixture
async def dav(radicale: ServerProcess, session: aiohttp.ClientSession) -> Dav:
    client = Dav(session, radicale.url)
    assert await client.status(OWNER, "MKCALENDAR", COLLECTION) == 201
    assert await client.put_event(OWNER, COLLECTION + "e1.ics", "e1") == 201
    # principals for the other users (Radicale creates them on first sight)
    for user in (SHAREE, OTHER):
        assert await client.status(user, "PROPFIND", f"/{user}/") == 207
    return client


@pytest.fixture
def api(radicale: ServerProcess, session: aiohttp.ClientSession) -> RadicaleSharingApi:
    return RadicaleSharingApi(session, radicale.url, as_user)


async def assert_no_direct_access(dav: Dav) -> None:
    assert await dav.status(SHAREE, "GET", COLLECTION + "e1.ics") == 403
    assert await dav.status(SHAREE, "PROPFIND", COLLECTION) == 403
    assert await dav.put_event(SHAREE, COLLECTION + "direct.ics", "direct") == 403


async def test_grant_read_then_read_write_then_revoke(dav: Dav, api: RadicaleSharingApi) -> None:
    item = MOUNT + "e1.ics"
    assert await dav.status(SHAREE, "GET", item) != 200
    await assert_no_direct_access(dav)

    started = time.perf_counter()
    await api.grant(OWNER, COLLECTION, SHAREE, MOUNT, "read")
    assert await dav.status(SHAREE, "GET", item) == 200
    grant_ms = (time.perf_counter() - started) * 1000
    status, body = await dav.request(SHAREE, "GET", item)
    assert status == 200 and "UID:e1" in body
    assert await dav.put_event(SHAREE, MOUNT + "e2.ics", "e2") == 403
    assert await dav.status(SHAREE, "DELETE", item) == 403
    await assert_no_direct_access(dav)

    # visible at once in the sharee's home listing (both sides un-hid it)
    status, body = await dav.request(SHAREE, "PROPFIND", f"/{SHAREE}/", Depth="1")
    assert status == 207 and MOUNT in body

    await api.grant(OWNER, COLLECTION, SHAREE, MOUNT, "read-write")
    assert await dav.put_event(SHAREE, MOUNT + "e2.ics", "e2") == 201
    status, body = await dav.request(OWNER, "GET", COLLECTION + "e2.ics")
    assert status == 200 and "UID:e2" in body
    await assert_no_direct_access(dav)

    maps = await api.list_maps(OWNER)
    assert [(m["mount"], m["collection"], m["sharee"], m["permissions"]) for m in maps] == [
        (MOUNT, COLLECTION, SHAREE, "rw")
    ]
    assert maps[0]["enabled"] is True and maps[0]["hidden"] is False

    # back to read: the next write is refused
    await api.grant(OWNER, COLLECTION, SHAREE, MOUNT, "read")
    assert await dav.put_event(SHAREE, MOUNT + "e3.ics", "e3") == 403

    started = time.perf_counter()
    await api.revoke(OWNER, COLLECTION, SHAREE, MOUNT)
    assert await dav.status(SHAREE, "GET", item) != 200
    revoke_ms = (time.perf_counter() - started) * 1000
    assert await api.list_maps(OWNER) == []
    await assert_no_direct_access(dav)
    status, body = await dav.request(SHAREE, "PROPFIND", f"/{SHAREE}/", Depth="1")
    assert status == 207 and MOUNT not in body
    print(f"grant->first 200: {grant_ms:.1f} ms, revoke->first non-200: {revoke_ms:.1f} ms")


async def test_grant_is_idempotent(dav: Dav, api: RadicaleSharingApi) -> None:
    await api.grant(OWNER, COLLECTION, SHAREE, MOUNT, "read")
    await api.grant(OWNER, COLLECTION, SHAREE, MOUNT, "read")
    await api.grant(OWNER, "alice/work", SHAREE, "bob/alice-work", "read")  # same, unslashed
    maps = await api.list_maps(OWNER)
    assert len(maps) == 1
    assert maps[0] == {
        "owner": OWNER, "mount": MOUNT, "collection": COLLECTION, "sharee": SHAREE,
        "permissions": "r", "enabled": True, "hidden": False,
    }  # fmt: skip
    await api.grant(OWNER, COLLECTION, SHAREE, MOUNT, "read-write")
    maps = await api.list_maps(OWNER)
    assert [(m["mount"], m["permissions"]) for m in maps] == [(MOUNT, "rw")]
    # the sharee's own listing shows the map too, but it is not theirs to manage
    assert await api.list_maps(SHAREE) == []

    # moving the share to another mount replaces the old map (one per collection+sharee)
    await api.grant(OWNER, COLLECTION, SHAREE, "/bob/work-of-alice/", "read")
    maps = await api.list_maps(OWNER)
    assert [(m["mount"], m["permissions"]) for m in maps] == [("/bob/work-of-alice/", "r")]
    assert await dav.status(SHAREE, "GET", MOUNT + "e1.ics") != 200
    assert await dav.status(SHAREE, "GET", "/bob/work-of-alice/e1.ics") == 200


async def test_grant_reenables_after_sharee_or_owner_disabled(
    dav: Dav, api: RadicaleSharingApi
) -> None:
    await api.grant(OWNER, COLLECTION, SHAREE, MOUNT, "read")
    body = {"PathOrToken": MOUNT}
    assert await dav.share_api(SHAREE, "disable", body) == 200
    assert await dav.status(SHAREE, "GET", MOUNT + "e1.ics") != 200
    assert (await api.list_maps(OWNER))[0]["enabled"] is False
    await api.grant(OWNER, COLLECTION, SHAREE, MOUNT, "read")
    assert await dav.status(SHAREE, "GET", MOUNT + "e1.ics") == 200

    assert await dav.share_api(OWNER, "hide", body) == 200
    await api.grant(OWNER, COLLECTION, SHAREE, MOUNT, "read")
    assert (await api.list_maps(OWNER))[0]["hidden"] is False


async def test_revoke_is_idempotent(dav: Dav, api: RadicaleSharingApi) -> None:
    await api.revoke(OWNER, COLLECTION, SHAREE, MOUNT)  # nothing there
    await api.grant(OWNER, COLLECTION, SHAREE, MOUNT, "read-write")
    await api.revoke(OWNER, COLLECTION, SHAREE, MOUNT)
    await api.revoke(OWNER, COLLECTION, SHAREE, MOUNT)
    assert await api.list_maps(OWNER) == []
    assert await dav.status(SHAREE, "GET", MOUNT + "e1.ics") != 200
    assert await dav.put_event(SHAREE, MOUNT + "e9.ics", "e9") != 201
    assert await dav.status(OWNER, "GET", COLLECTION + "e9.ics") == 404


def counts(report: Reconciled) -> tuple[int, int]:
    return report.changed, report.removed


async def test_reconcile(dav: Dav, api: RadicaleSharingApi) -> None:
    wanted = [(OWNER, COLLECTION, SHAREE, MOUNT, "read")]
    assert counts(await api.reconcile(wanted, {OWNER})) == (1, 0)
    assert counts(await api.reconcile(wanted, {OWNER})) == (0, 0)

    # Drift made behind davproxy's back: an extra map for carol, bob's map deleted.
    extra = {
        "PathOrToken": "/carol/alice-work/", "PathMapped": COLLECTION, "User": OTHER,
        "Permissions": "rw", "Enabled": True, "Hidden": False,
    }  # fmt: skip
    assert await dav.share_api(OWNER, "create", extra) == 200
    assert await dav.share_api(OTHER, "enable", {"PathOrToken": "/carol/alice-work/"}) == 200
    assert await dav.status(OTHER, "GET", "/carol/alice-work/e1.ics") == 200
    assert await dav.share_api(OWNER, "delete", {"PathOrToken": MOUNT}) == 200
    assert await dav.status(SHAREE, "GET", MOUNT + "e1.ics") != 200

    assert counts(await api.reconcile(wanted, {OWNER})) == (1, 1)
    maps = await api.list_maps(OWNER)
    assert [(m["mount"], m["sharee"], m["permissions"], m["enabled"]) for m in maps] == [
        (MOUNT, SHAREE, "r", True)
    ]
    assert await dav.status(SHAREE, "GET", MOUNT + "e1.ics") == 200
    assert await dav.status(OTHER, "GET", "/carol/alice-work/e1.ics") != 200

    # a changed access is an update, not a removal
    assert counts(await api.reconcile([(*wanted[0][:4], "read-write")], {OWNER})) == (1, 0)
    assert await dav.put_event(SHAREE, MOUNT + "e4.ics", "e4") == 201
    # nothing wanted: everything of alice goes
    assert counts(await api.reconcile([], {OWNER})) == (0, 1)
    assert await api.list_maps(OWNER) == []
    assert await dav.status(SHAREE, "GET", MOUNT + "e1.ics") != 200
    await assert_no_direct_access(dav)


async def test_errors_are_reported(dav: Dav, api: RadicaleSharingApi) -> None:
    with pytest.raises(NativeSharingError) as missing:
        await api.grant(OWNER, "/alice/nope/", SHAREE, "/bob/nope/", "read")
    assert missing.value.status == 404 and "HTTP 404" in str(missing.value)

    # the mount is already a real collection of the sharee
    assert await dav.status(SHAREE, "MKCALENDAR", "/bob/own/") == 201
    with pytest.raises(NativeSharingError) as taken:
        await api.grant(OWNER, COLLECTION, SHAREE, "/bob/own/", "read")
    assert taken.value.status == 409

    # someone else's collection cannot be shared
    with pytest.raises(NativeSharingError) as foreign:
        await api.grant(OTHER, COLLECTION, SHAREE, MOUNT, "read")
    assert foreign.value.status == 403

    with pytest.raises(ValueError):
        await api.grant(OWNER, COLLECTION, SHAREE, MOUNT, "admin")
    assert await api.list_maps(OWNER) == []


async def test_sharing_disabled_upstream_is_a_clear_error(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    from davproxy.ops.embedded import start_radicale

    with start_radicale(tmp_path / "plain") as plain:
        api = RadicaleSharingApi(session, plain.url, as_user)
        with pytest.raises(NativeSharingError) as error:
            await api.list_maps(OWNER)
        assert error.value.status == 404


async def test_overlay_and_delete_behaviour(dav: Dav, api: RadicaleSharingApi) -> None:
    """Documented limits: display-name overlays and deleting a shared collection."""
    rename = (
        '<?xml version="1.0"?><propertyupdate xmlns="DAV:"><set><prop>'
        "<displayname>Bob's view</displayname></prop></set></propertyupdate>"
    )
    ask = '<?xml version="1.0"?><propfind xmlns="DAV:"><prop><displayname/></prop></propfind>'
    xml = {"Content-Type": "text/xml"}
    await api.grant(OWNER, COLLECTION, SHAREE, MOUNT, "read")
    # read-only: no overlay without permit_properties_overlay
    assert (await dav.request(SHAREE, "PROPPATCH", MOUNT, rename, **xml))[0] == 403
    # read-write: the PROPPATCH becomes bob's own overlay; alice's collection keeps its name
    await api.grant(OWNER, COLLECTION, SHAREE, MOUNT, "read-write")
    assert (await dav.request(SHAREE, "PROPPATCH", MOUNT, rename, **xml))[0] == 207
    _, mine = await dav.request(SHAREE, "PROPFIND", MOUNT, ask, Depth="0", **xml)
    _, theirs = await dav.request(OWNER, "PROPFIND", COLLECTION, ask, Depth="0", **xml)
    assert "Bob's view" in mine and "Bob's view" not in theirs
    # an access change keeps the overlay (update, not delete + create)
    await api.grant(OWNER, COLLECTION, SHAREE, MOUNT, "read")
    _, mine = await dav.request(SHAREE, "PROPFIND", MOUNT, ask, Depth="0", **xml)
    assert "Bob's view" in mine
    # the sharee cannot delete the mount; the owner cannot delete a shared collection
    assert await dav.status(SHAREE, "DELETE", MOUNT) == 403
    assert await dav.status(OWNER, "DELETE", COLLECTION) == 409
    await api.revoke(OWNER, COLLECTION, SHAREE, MOUNT)
    assert await dav.status(OWNER, "DELETE", COLLECTION) == 200
