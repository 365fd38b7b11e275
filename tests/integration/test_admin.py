"""``davproxy admin`` against the store of a running davproxy."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid
from pathlib import Path

from tests import pg
from tests.helpers import fetch, raw_session, start_proxy, write_htpasswd

from .conftest import Pair
from .test_cs_sharing import TEXT_XML, apple_notifications, cs_reply, cs_share
from .test_sharing import (
    NS,
    SHARING,
    XML,
    Client,
    absent,
    accept_latest,
    event,
    notifications_of,
    propfind,
    share_body,
    xml,
)


def admin(pair: Pair, *args: str) -> subprocess.CompletedProcess[str]:
    config = pair.davproxy.folder / "davproxy.toml"
    return subprocess.run(
        [sys.executable, "-m", "davproxy", "admin", "--config", str(config), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_admin_lists_checks_and_revokes(radicale_pair: Pair) -> None:
    pair = radicale_pair
    name = f"adm-{uuid.uuid4().hex[:6]}"
    owner_cal = f"/alice/{name}/"
    async with raw_session() as session:
        alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
        await bob.hello()
        assert (await alice("MKCALENDAR", owner_cal)).status == 201
        assert (
            await alice("POST", owner_cal, share_body(("bob", "read")), **SHARING)
        ).status == 204
        copy = await accept_latest(bob)
        assert (await bob("PROPFIND", copy, propfind("D:displayname"), Depth="0")).status == 207

        listed = admin(
            pair, "--json", "shares", "--owner", "alice", "--collection", f"alice/{name}/"
        )
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [(r["sharee"], r["access"], r["status"]) for r in rows] == [
            ("bob", "read", "accepted")
        ]
        assert rows[0]["copy"] == copy.lstrip("/")
        table = admin(pair, "shares", "--sharee", "bob")
        assert table.returncode == 0 and "SHAREE" in table.stdout and name in table.stdout

        checked = admin(pair, "--json", "check")
        report = json.loads(checked.stdout)
        assert checked.returncode == 0 and report["integrity"] == "ok"
        if pg.use_postgres():
            assert report["backend"] == "postgresql" and "***" not in report["store"]
        else:
            assert report["backend"] == "sqlite" and report["journal_mode"] == "wal"

        notes = admin(pair, "--json", "notifications", "--user", "alice")
        assert any(n["type"] == "share-reply" for n in json.loads(notes.stdout))

        revoked = admin(pair, "revoke", "--collection", owner_cal, "--sharee", "bob")
        assert revoked.returncode == 0, revoked.stderr
        assert absent(await bob("PROPFIND", copy, propfind("D:displayname"), Depth="0"))
        again = admin(pair, "revoke", "--collection", owner_cal, "--sharee", "bob")
        assert again.returncode == 1 and "no share" in again.stderr

    bad = subprocess.run(
        [sys.executable, "-m", "davproxy", "admin", "--config", "/nonexistent.toml", "check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


MKCALENDAR_TEAM = (
    '<?xml version="1.0" encoding="utf-8"?><C:mkcalendar xmlns:D="DAV:" '
    'xmlns:C="urn:ietf:params:xml:ns:caldav"><D:set><D:prop><D:displayname>Team</D:displayname>'
    "</D:prop></D:set></C:mkcalendar>"
)


async def copy_names(bob: Client, home: str) -> dict[str, str]:
    """href -> displayname of the members of bob's calendar home."""
    listing = await bob("PROPFIND", home, propfind("D:displayname"), Depth="1")
    assert listing.status == 207
    return {
        r.findtext("D:href", namespaces=NS): r.findtext(".//D:displayname", namespaces=NS) or ""
        for r in xml(listing).findall("D:response", NS)
    }


async def test_admin_share_and_accept_use_the_protocol_model(pair: Pair) -> None:
    """An operator shares and accepts on users' behalf: the sharee is invited and the
    owner told, exactly as over HTTP, and the copy gets the distinguishable name."""
    name = f"ops-{uuid.uuid4().hex[:6]}"
    owner_cal = f"{pair.calendar_home}{name}/"
    bob_home = pair.calendar_home.replace("alice", "bob")
    async with raw_session() as session:
        alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
        await bob.hello()
        made = await alice("MKCALENDAR", owner_cal, MKCALENDAR_TEAM, **XML)
        assert made.status == 201, made.body

        shared = admin(pair, "share", "--collection", owner_cal, "--sharee", "bob",
                       "--access", "read-write", "--comment", "set up by IT")  # fmt: skip
        assert shared.returncode == 0, shared.stderr
        assert f"alice shares {owner_cal} with bob (read-write)" in shared.stdout
        _, notes = await notifications_of(bob)
        assert [kind for _, kind in notes].count("share-invite-notification") >= 1
        rows = json.loads(admin(pair, "shares", "--collection", owner_cal, "--json").stdout)
        assert [(r["sharee"], r["status"], r["access"]) for r in rows] == [
            ("bob", "noresponse", "read-write")
        ]

        accepted = admin(pair, "--json", "accept", "--collection", owner_cal, "--sharee", "bob")
        assert accepted.returncode == 0, accepted.stderr
        copy = json.loads(accepted.stdout)["copy"]
        assert copy == f"{bob_home}{name}-alice/"
        assert (
            await bob("PUT", copy + "e.ics", event("ops-e"), Content_Type="text/calendar")
        ).status == 201
        assert (await alice("GET", owner_cal + "e.ics")).status == 200
        assert (await copy_names(bob, bob_home))[copy] == "Team (Alice)"
        owner_notes = json.loads(admin(pair, "--json", "notifications", "--user", "alice").stdout)
        assert any(n["type"] == "share-reply" for n in owner_notes)

        twice = admin(pair, "accept", "--collection", owner_cal, "--sharee", "bob")
        assert twice.returncode == 1 and "not an invitation" in twice.stderr
        ghost = admin(pair, "share", "--collection", owner_cal, "--sharee", "mailto:ghost@x.org")
        assert ghost.returncode == 1 and "no known user" in ghost.stderr
        not_hers = admin(pair, "share", "--collection", owner_cal, "--sharee", "carol",
                         "--owner", "bob")  # fmt: skip
        assert not_hers.returncode == 1 and "not a collection of 'bob'" in not_hers.stderr
        assert admin(pair, "revoke", "--collection", owner_cal, "--sharee", "bob").returncode == 0


async def test_accepted_copies_are_told_apart_in_both_flavours(radicale_pair: Pair) -> None:
    """Bob's own "Team" and his copy of Alice's "Team" do not share one name, whichever
    flavour accepted it; a name the sharee chose stands."""
    pair = radicale_pair
    async with raw_session() as session:
        alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
        await bob.hello()
        cals = [f"/alice/names-{uuid.uuid4().hex[:6]}/" for _ in range(3)]
        for cal in cals:
            assert (await alice("MKCALENDAR", cal, MKCALENDAR_TEAM, **XML)).status == 201
        # IETF: D:invite-reply carries no name
        assert (await alice("POST", cals[0], share_body(("bob", "read")), **SHARING)).status == 204
        ietf_copy = await accept_latest(bob)
        # Apple: the client echoes the offered name, or sends one the user typed
        copies = []
        for cal, summary in ((cals[1], "Team"), (cals[2], "Alice's team")):
            shared = await alice(
                "POST", cal, cs_share(("mailto:bob@example.org", "read")), **TEXT_XML
            )
            assert shared.status == 200
            uid = [e for _, e in await apple_notifications(bob)][-1].findtext(
                "CS:uid", namespaces=NS
            )
            answer = await bob("POST", "/bob/", cs_reply(uid, cal, summary=summary), **TEXT_XML)
            assert answer.status == 200, answer.body
            copies.append(xml(answer).findtext("D:href", namespaces=NS) + "/")  # CS: no slash
        names = await copy_names(bob, "/bob/")
        assert names[ietf_copy] == "Team (Alice)"
        assert names[copies[0]] == "Team (Alice)"
        assert names[copies[1]] == "Alice's team"


async def test_unknown_sharee_is_visible_to_the_operator(radicale_pair: Pair) -> None:
    pair = radicale_pair
    cal = f"/alice/ghost-{uuid.uuid4().hex[:6]}/"
    async with raw_session() as session:
        alice = Client(session, pair, "alice")
        assert (await alice("MKCALENDAR", cal)).status == 201
        shared = await alice(
            "POST", cal, share_body(("mailto:nobody@example.org", "read")), **SHARING
        )
        assert shared.status == 204  # the protocol answer stays as drafted
    assert "mailto:nobody@example.org" in pair.davproxy.log_path.read_text()
    assert "invite-invalid" in pair.davproxy.log_tail(200)
    listed = admin(pair, "shares", "--collection", cal, "--status", "invite-invalid")
    assert listed.returncode == 0, listed.stderr
    assert "mailto:nobody@example.org" in listed.stdout and "invalid" in listed.stdout
    assert "nobody was invited" in listed.stderr
    as_json = admin(pair, "shares", "--collection", cal, "--status", "invalid", "--json")
    assert [r["status"] for r in json.loads(as_json.stdout)] == ["invalid"]


def test_admin_refuses_unknown_filters(radicale_pair: Pair) -> None:
    bogus = admin(radicale_pair, "shares", "--status", "bogus")
    assert bogus.returncode == 2 and "unknown status 'bogus'" in bogus.stderr
    assert not bogus.stdout
    upstream = admin(radicale_pair, "shares", "--upstream", "nope")
    assert upstream.returncode != 0 and "no upstream named 'nope'" in upstream.stderr
    owner = admin(radicale_pair, "shares", "--owner", "alcie")
    assert owner.returncode == 2 and "no user 'alcie'" in owner.stderr
    after = admin(radicale_pair, "check", "--json")  # --json after the verb
    assert after.returncode == 0 and json.loads(after.stdout)["integrity"] == "ok"


async def test_users_added_changed_and_removed_live(radicale_pair: Pair, tmp_path: Path) -> None:
    """admin user edits the htpasswd file of a running davproxy, which picks it up within
    about a second: a new user logs in (even after a refused try, whose verdict is
    remembered), a changed or removed password stops working (not after cache_seconds)."""
    htpasswd = write_htpasswd(tmp_path / "users.htpasswd")
    with start_proxy(tmp_path / "live", upstream_url=radicale_pair.upstream.url,
                     kind="radicale", mode="proxy-auth", htpasswd=htpasswd) as proxy:  # fmt: skip
        config = proxy.folder / "davproxy.toml"

        def user(*args: str, password: str = "") -> None:
            done = subprocess.run(
                [sys.executable, "-m", "davproxy", "admin", "-c", str(config), "user", *args],
                input=password + "\n", capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr

        async def status(password: str) -> int:
            url = f"{proxy.url}erin/"
            answer = await fetch(
                session, "PROPFIND", url, {**_basic("erin", password), "Depth": "0"}
            )
            return answer.status

        async def settles(password: str, expected: int) -> bool:
            for _ in range(40):
                if await status(password) == expected:
                    return True
                await asyncio.sleep(0.1)
            return False

        async with raw_session() as session:
            assert await status("erin-pw") == 401
            user("add", "erin", password="erin-pw")
            assert await settles("erin-pw", 207)
            user("passwd", "erin", password="erin-new")
            assert await settles("erin-pw", 401) and await status("erin-new") == 207
            user("remove", "erin")
            assert await settles("erin-new", 401)
    assert "Traceback" not in proxy.log_path.read_text()


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}
