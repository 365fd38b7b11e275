"""radicale-native against a real Radicale that goes away and comes back, and that had
map shares of its own before davproxy ran.

* A revocation made while Radicale is down (``davproxy admin revoke``) is refused by
  davproxy at once and reaches Radicale as soon as it is back: through the running
  server's retries, ``davproxy admin reconcile``, or start-up, also for an owner who has
  no share left in davproxy's store.
* Map shares made in Radicale before davproxy first ran are adopted (accepted ones as
  accepted, ones the sharee never enabled as invitations), listed by ``admin shares``,
  and never removed by later share changes; ``admin reconcile --dry-run`` shows what
  would change and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from davproxy.ops.embedded import ServerProcess, start_davproxy, start_radicale
from tests.helpers import raw_session, write_config, write_htpasswd

from .conftest import Endpoint, Pair
from .test_sharing import SHARING, Client, event, notifications_of, reply_body, share_body

NATIVE = '[access]\nbackend = "radicale-native"\n'


def configure(folder: Path, radicale: ServerProcess) -> tuple[Path, int]:
    return write_config(
        folder / "davproxy", upstream_url=radicale.url, kind="radicale", mode="proxy-auth",
        htpasswd=write_htpasswd(folder / "users.htpasswd"), mapping_extra=NATIVE,
        server_extra="upstream_timeout = 3",
    )  # fmt: skip


def admin(main: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "davproxy", "admin", "--config", str(main), *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


class Direct:
    """Requests straight to Radicale, as the trusted proxy would send them."""

    def __init__(self, session: aiohttp.ClientSession, radicale: ServerProcess) -> None:
        self.session, self.base = session, radicale.url.rstrip("/")

    async def __call__(self, user: str, method: str, path: str, body: str | None = None) -> int:
        headers = {"X-Remote-User": user}
        if method == "PUT":
            headers["Content-Type"] = "text/calendar"
        async with self.session.request(
            method, self.base + path, data=body, headers=headers
        ) as answer:
            await answer.read()
            return answer.status

    async def api(self, user: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {
            "X-Remote-User": user, "Content-Type": "application/json",
            "Accept": "application/json",
        }  # fmt: skip
        async with self.session.post(
            f"{self.base}/.sharing/v1/map/{action}", data=json.dumps(body), headers=headers
        ) as answer:
            assert answer.status == 200, (action, body, answer.status, await answer.text())
            return dict(json.loads(await answer.text()))

    async def maps_of(self, owner: str) -> list[tuple[str, str, str]]:
        answer = await self.api(owner, "list", {})
        return sorted(
            (row["PathOrToken"], row["User"], row["Permissions"])
            for row in answer.get("Content") or []
            if row["Owner"] == owner
        )


def client(session: aiohttp.ClientSession, proxy: ServerProcess, user: str) -> Client:
    pair = Pair("native", Endpoint(""), Endpoint(proxy.url, {}), "/alice/", "/alice/", proxy, proxy)
    return Client(session, pair, user)


async def share_and_accept(owner: Client, sharee: Client, collection: str, slug: str) -> str:
    assert (await owner("MKCALENDAR", collection)).status == 201
    put = await owner("PUT", collection + "a.ics", event(slug), Content_Type="text/calendar")
    assert put.status == 201
    body = share_body((sharee.user, "read-write"))
    assert (await owner("POST", collection, body, **SHARING)).status == 204
    _, notes = await notifications_of(sharee)
    accepted = await sharee(
        "POST", notes[-1][0], reply_body(True, f"/{sharee.user}/", slug), **SHARING
    )
    assert accepted.status == 201, accepted.body
    return f"/{sharee.user}/{slug}/"


async def wait_until(check: Any, seconds: float = 45.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.25)
    return False


async def test_revoke_while_radicale_is_down_reaches_it_when_back(tmp_path: Path) -> None:
    """The running server: davproxy refuses the revoked sharee at once, and its retries
    remove Radicale's map as soon as Radicale answers again (alice has no share left
    in the store, which start-up and retries used to skip)."""
    folder = tmp_path / "radicale"
    radicale = start_radicale(folder, sharing=True)
    main, port = configure(tmp_path, radicale)
    try:
        with start_davproxy(main, port=port) as proxy:
            async with raw_session() as session:
                alice, bob = client(session, proxy, "alice"), client(session, proxy, "bob")
                await bob.hello()
                copy = await share_and_accept(alice, bob, "/alice/fence/", "fence")
                direct = Direct(session, radicale)
                assert await direct("bob", "GET", copy + "a.ics") == 200

                radicale.stop()
                revoked = admin(main, "revoke", "--collection", "/alice/fence/", "--sharee", "bob")
                assert revoked.returncode == 1, revoked.stdout + revoked.stderr
                assert "share ended in the store" in revoked.stderr
                assert "Traceback" not in revoked.stderr
                # the server knows at once, from the store, although Radicale is down
                fenced = await bob("GET", copy + "a.ics")
                assert fenced.status == 403 and b"this share has ended" in fenced.body
                written = await bob("PUT", copy + "b.ics", event("b"), Content_Type="text/calendar")
                assert written.status == 403

                radicale = start_radicale(folder, port=radicale.port, sharing=True)
                direct = Direct(session, radicale)

                async def gone() -> bool:
                    return await direct("bob", "GET", copy + "a.ics") != 200

                assert await wait_until(gone), proxy.log_tail()
                assert await direct("bob", "PUT", copy + "c.ics", event("c")) not in (200, 201, 204)
                assert await direct.maps_of("alice") == []
                after = await bob("GET", copy + "a.ics")  # davproxy's own refusal is over
                assert after.status == 404 and b"this share has ended" not in after.body
                assert await direct("alice", "GET", "/alice/fence/a.ics") == 200
        log = proxy.log_path.read_text(encoding="utf-8", errors="replace")
        assert "reconciliation with up done" in log
    finally:
        radicale.stop()


async def test_revoke_while_down_without_a_server_admin_reconcile_and_start_up(
    tmp_path: Path,
) -> None:
    """No server running: `admin reconcile` (after a dry run that changes nothing)
    removes one lost map, the next start-up the other (carol's only share)."""
    folder = tmp_path / "radicale"
    radicale = start_radicale(folder, sharing=True)
    main, port = configure(tmp_path, radicale)
    try:
        async with raw_session() as session:
            with start_davproxy(main, port=port) as proxy:
                alice, bob = client(session, proxy, "alice"), client(session, proxy, "bob")
                carol, dave = client(session, proxy, "carol"), client(session, proxy, "dave@corp")
                await bob.hello()
                await dave.hello()
                first = await share_and_accept(alice, bob, "/alice/one/", "one")
                second = await share_and_accept(carol, dave, "/carol/two/", "two")
            radicale.stop()
            for collection, sharee in (("/alice/one/", "bob"), ("/carol/two/", "dave@corp")):
                done = admin(main, "revoke", "--collection", collection, "--sharee", sharee)
                assert done.returncode == 1 and "share ended in the store" in done.stderr
            radicale = start_radicale(folder, port=radicale.port, sharing=True)
            direct = Direct(session, radicale)
            assert await direct("bob", "GET", first + "a.ics") == 200  # still mapped
            assert await direct("dave@corp", "GET", second + "a.ics") == 200

            dry = admin(main, "reconcile", "--dry-run")
            assert dry.returncode == 0, dry.stderr
            assert f"would remove map {first}" in dry.stdout
            assert f"would remove map {second}" in dry.stdout
            assert await direct("bob", "GET", first + "a.ics") == 200  # nothing changed

            # admin reconcile for alice only: the one upstream, every owner it finds
            done = admin(main, "--json", "reconcile")
            assert done.returncode == 0, done.stderr
            changes = [row["change"] for row in json.loads(done.stdout)]
            assert any(c.startswith(f"remove map {first}") for c in changes), changes
            assert await direct("bob", "GET", first + "a.ics") != 200
            assert await direct("dave@corp", "GET", second + "a.ics") != 200
            assert await direct.maps_of("alice") == [] and await direct.maps_of("carol") == []
            quiet = admin(main, "reconcile", "--dry-run")
            assert "upstream rights match the store" in quiet.stdout, quiet.stdout

            # the same lost revocation, settled by start-up this time
            with start_davproxy(main, port=port) as proxy:
                alice, bob = client(session, proxy, "alice"), client(session, proxy, "bob")
                third = await share_and_accept(alice, bob, "/alice/three/", "three")
            radicale.stop()
            done = admin(main, "revoke", "--collection", "/alice/three/", "--sharee", "bob")
            assert done.returncode == 1
            radicale = start_radicale(folder, port=radicale.port, sharing=True)
            direct = Direct(session, radicale)
            assert await direct("bob", "GET", third + "a.ics") == 200
            with start_davproxy(main, port=port):
                assert await direct("bob", "GET", third + "a.ics") != 200
                assert await direct.maps_of("alice") == []
    finally:
        radicale.stop()


async def test_existing_radicale_shares_are_adopted_not_removed(tmp_path: Path) -> None:
    folder = tmp_path / "radicale"
    radicale = start_radicale(folder, sharing=True)
    main, port = configure(tmp_path, radicale)
    try:
        async with raw_session() as session:
            direct = Direct(session, radicale)
            # Shares made in Radicale itself, before davproxy ever ran.
            for user in ("alice", "bob", "carol", "dave@corp"):
                assert await direct(user, "PROPFIND", f"/{user}/") == 207
            assert await direct("alice", "MKCALENDAR", "/alice/team/") == 201
            assert await direct("alice", "PUT", "/alice/team/t.ics", event("t")) == 201
            assert await direct("alice", "MKCALENDAR", "/alice/other/") == 201
            await direct.api("alice", "create", {
                "PathOrToken": "/bob/team-of-alice/", "PathMapped": "/alice/team/",
                "User": "bob", "Permissions": "rw", "Enabled": True, "Hidden": False,
            })  # fmt: skip
            await direct.api(
                "bob",
                "update",
                {"PathOrToken": "/bob/team-of-alice/", "Enabled": True, "Hidden": False},
            )
            await direct.api("alice", "create", {  # carol never enabled hers
                "PathOrToken": "/carol/team/", "PathMapped": "/alice/team/", "User": "carol",
                "Permissions": "r", "Enabled": True, "Hidden": False,
            })  # fmt: skip
            await direct.api("alice", "create", {  # switched off by alice: grants nothing
                "PathOrToken": "/dave@corp/team/", "PathMapped": "/alice/team/",
                "User": "dave@corp", "Permissions": "r", "Enabled": False, "Hidden": True,
            })  # fmt: skip
            before = await direct.maps_of("alice")
            assert len(before) == 3
            assert await direct("bob", "GET", "/bob/team-of-alice/t.ics") == 200

            dry = admin(main, "reconcile", "--dry-run")
            assert dry.returncode == 0, dry.stderr
            assert (
                "would adopt alice's /alice/team/ for bob (read-write) as an accepted share"
                " at /bob/team-of-alice/" in dry.stdout
            ), dry.stdout
            assert (
                "would adopt alice's /alice/team/ for carol (read) as an invitation" in dry.stdout
            )
            assert "remove" not in dry.stdout and "dave" not in dry.stdout
            assert await direct.maps_of("alice") == before
            assert json.loads(admin(main, "--json", "shares").stdout) == []

            with start_davproxy(main, port=port) as proxy:  # first start: adopted
                listed = json.loads(admin(main, "--json", "shares").stdout)
                rows = {(r["sharee"], r["access"], r["status"], r["copy"]) for r in listed}
                assert rows == {
                    ("bob", "read-write", "accepted", "bob/team-of-alice/"),
                    ("carol", "read", "noresponse", ""),
                }, listed
                alice, bob = client(session, proxy, "alice"), client(session, proxy, "bob")
                carol = client(session, proxy, "carol")
                # bob goes on as before, through davproxy and directly
                assert (await bob("GET", "/bob/team-of-alice/t.ics")).status == 200
                put = await bob(
                    "PUT", "/bob/team-of-alice/b.ics", event("b"), Content_Type="text/calendar"
                )
                assert put.status == 201
                assert await direct("bob", "GET", "/bob/team-of-alice/t.ics") == 200
                # carol has an invitation to answer, and her copy works once she does
                _, notes = await notifications_of(carol)
                assert [kind for _, kind in notes] == ["share-invite-notification"]
                accepted = await carol(
                    "POST", notes[0][0], reply_body(True, "/carol/", "team-alice"), **SHARING
                )
                assert accepted.status == 201, accepted.body
                assert (await carol("GET", "/carol/team-alice/t.ics")).status == 200

                # a share made through davproxy leaves the adopted one alone
                shared = await alice(
                    "POST", "/alice/other/", share_body(("bob", "read")), **SHARING
                )
                assert shared.status == 204
                assert await direct("bob", "GET", "/bob/team-of-alice/t.ics") == 200
                assert (await bob("GET", "/bob/team-of-alice/t.ics")).status == 200
                maps = await direct.maps_of("alice")
                assert ("/bob/team-of-alice/", "bob", "rw") in maps
                assert ("/dave@corp/team/", "dave@corp", "r") in maps  # left alone
                assert ("/carol/team-alice/", "carol", "r") in maps
                assert ("/carol/team/", "carol", "r") not in maps  # now davproxy's invitation

            quiet = admin(main, "reconcile", "--dry-run")
            assert "upstream rights match the store" in quiet.stdout, quiet.stdout
            with start_davproxy(main, port=port):  # not adopted twice
                again = json.loads(admin(main, "--json", "shares").stdout)
                assert len(again) == 3  # bob and carol of team, bob of other

            # after adoption the store is the truth: a map made behind davproxy's back
            # is shown by a dry run, then removed (with a word in the output)
            await direct.api("alice", "create", {
                "PathOrToken": "/carol/sneaky/", "PathMapped": "/alice/other/",
                "User": "carol", "Permissions": "rw", "Enabled": True, "Hidden": False,
            })  # fmt: skip
            dry = admin(main, "reconcile", "--dry-run")
            assert "would remove map /carol/sneaky/" in dry.stdout, dry.stdout
            done = admin(main, "reconcile")
            assert "remove map /carol/sneaky/" in done.stdout, done.stdout
            assert ("/carol/sneaky/", "carol", "rw") not in await direct.maps_of("alice")
            assert ("/bob/team-of-alice/", "bob", "rw") in await direct.maps_of("alice")
    finally:
        radicale.stop()


async def test_decline_after_accepting_while_radicale_is_down_reaches_it_when_back(
    tmp_path: Path,
) -> None:
    """A sharee who declines after accepting (issue 12) ends the copy as a revocation
    does: recorded as an upstream removal in the same transaction, so davproxy refuses
    the old copy at once and after a restart too, and removes Radicale's map once it
    answers again; then the sharee can accept again and the copy comes back."""
    folder = tmp_path / "radicale"
    radicale = start_radicale(folder, sharing=True)
    main, port = configure(tmp_path, radicale)
    try:
        with start_davproxy(main, port=port) as proxy:
            async with raw_session() as session:
                alice, bob = client(session, proxy, "alice"), client(session, proxy, "bob")
                await bob.hello()
                copy = await share_and_accept(alice, bob, "/alice/mind/", "mind")
                assert await Direct(session, radicale)("bob", "GET", copy + "a.ics") == 200
                _, notes = await notifications_of(alice)  # alice's reply notification
                uid = notes[-1][0].rsplit("/", 1)[1].removesuffix("-reply.xml")
                reply_url = f"/.davproxy/notifications/bob/{uid}.xml"
                radicale.stop()
                declined = await bob("POST", reply_url, reply_body(False), **SHARING)
                assert declined.status in (502, 504), declined.body  # recorded, not confirmed
        assert "mind" in admin(main, "shares", "--status", "declined").stdout
        with start_davproxy(main, port=port) as proxy:  # Radicale still away
            async with raw_session() as session:
                bob = client(session, proxy, "bob")
                fenced = await bob("GET", copy + "a.ics")
                assert fenced.status == 403 and b"this share has ended" in fenced.body

                radicale = start_radicale(folder, port=radicale.port, sharing=True)
                direct = Direct(session, radicale)

                async def gone() -> bool:
                    return await direct("bob", "GET", copy + "a.ics") != 200

                assert await wait_until(gone), proxy.log_tail()
                assert await direct.maps_of("alice") == []
                # and he can change his mind again: the copy comes back where it was
                back = await bob("POST", reply_url, reply_body(True), **SHARING)
                assert back.status == 201 and back.header("Location").endswith(copy)
                assert await direct("bob", "GET", copy + "a.ics") == 200
    finally:
        radicale.stop()
