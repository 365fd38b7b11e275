"""``davproxy admin`` against the store of a running davproxy."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

from tests.helpers import raw_session

from .conftest import Pair
from .test_sharing import SHARING, Client, absent, accept_latest, propfind, share_body


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
        assert (
            checked.returncode == 0
            and report["integrity"] == "ok"
            and report["journal_mode"] == "wal"
        )

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
