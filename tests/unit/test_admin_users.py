"""``davproxy admin user``: the proxy-auth htpasswd file managed without Apache's tool.

No server is needed: these verbs only touch the file (a running davproxy picking the
change up is tested in tests/integration/test_admin.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from davproxy.ops import users
from davproxy.upstream.identity import Htpasswd, hash_password
from tests.helpers import write_config


def admin(main: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "davproxy", "admin", "--config", str(main), *args],
        input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def proxy_auth_config(tmp_path: Path, htpasswd: Path) -> Path:
    main, _ = write_config(
        tmp_path / "conf", upstream_url="http://127.0.0.1:9/", kind="radicale",
        mode="proxy-auth", htpasswd=htpasswd,
    )  # fmt: skip
    return main


def test_add_passwd_remove_list_keep_the_rest_of_the_file(tmp_path: Path) -> None:
    htpasswd = tmp_path / "users.htpasswd"
    apr1_line = "old:$apr1$abcdefgh$0123456789abcdefghijkl"
    htpasswd.write_text(f"# team logins\nalice:{hash_password('alice-pw')}\n{apr1_line}\n")
    os.chmod(htpasswd, 0o640)
    main = proxy_auth_config(tmp_path, htpasswd)

    added = admin(main, "user", "add", "dave", stdin="dave-pw\n")
    assert added.returncode == 0, added.stderr
    assert "dave-pw" not in added.stdout + added.stderr
    text = htpasswd.read_text()
    assert text.startswith("# team logins\nalice:") and apr1_line in text
    assert stat.S_IMODE(htpasswd.stat().st_mode) == 0o640  # the operator's mode is kept
    dave = dict(users.entries(htpasswd))["dave"]
    assert dave.startswith("$2b$")  # bcrypt, as htpasswd -B
    assert Htpasswd(htpasswd).verify("dave", "dave-pw")

    listed = admin(main, "user", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {r["user"]: r["scheme"] for r in json.loads(listed.stdout)} == {
        "alice": "sha512-crypt", "old": "apr1", "dave": "bcrypt",
    }  # fmt: skip

    again = admin(main, "user", "add", "dave", stdin="x\n")
    assert again.returncode == 1 and "already" in again.stderr

    changed = admin(main, "--json", "user", "passwd", "dave", stdin="new-pw\n")
    assert changed.returncode == 0 and json.loads(changed.stdout)["result"] == "password changed"
    check = Htpasswd(htpasswd)
    assert check.verify("dave", "new-pw") and not check.verify("dave", "dave-pw")

    removed = admin(main, "user", "remove", "dave")
    assert removed.returncode == 0, removed.stderr
    assert "dave" not in {u for u, _ in users.entries(htpasswd)}
    assert apr1_line in htpasswd.read_text()
    gone = admin(main, "user", "passwd", "dave", stdin="x\n")
    assert gone.returncode == 1 and "no user dave" in gone.stderr
    assert not [p for p in htpasswd.parent.iterdir() if p.name.startswith(".users.htpasswd")]


def test_refusals(tmp_path: Path) -> None:
    htpasswd = tmp_path / "users.htpasswd"
    htpasswd.write_text("")
    main = proxy_auth_config(tmp_path, htpasswd)
    for name in ("a:b", ".hidden", "with space", "a/b"):
        bad = admin(main, "user", "add", name, stdin="pw\n")
        assert bad.returncode == 1 and "cannot be a user id" in bad.stderr, name
    empty = admin(main, "user", "add", "erin", stdin="\n")
    assert empty.returncode == 1 and "empty password" in empty.stderr
    # no option carries a password on the command line
    argv = admin(main, "user", "add", "erin", "--password", "pw")
    assert argv.returncode == 2
    assert htpasswd.read_text() == ""

    basic, _ = write_config(
        tmp_path / "basic", upstream_url="http://127.0.0.1:9/", kind="radicale",
        mode="upstream-basic",
    )  # fmt: skip
    refused = admin(basic, "user", "list")
    assert refused.returncode == 1 and "no upstream is in proxy-auth mode" in refused.stderr


def test_the_first_user_creates_the_file(tmp_path: Path) -> None:
    htpasswd = tmp_path / "new" / "users.htpasswd"
    htpasswd.parent.mkdir()
    main = proxy_auth_config(tmp_path, htpasswd)
    assert admin(main, "user", "list").returncode == 2  # the configuration needs the file
    first = admin(main, "user", "add", "alice", stdin="alice-pw\n")
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(htpasswd.stat().st_mode) == 0o600
    assert Htpasswd(htpasswd).verify("alice", "alice-pw")
    check = subprocess.run(
        [sys.executable, "-m", "davproxy", "check-config", "--config", str(main)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
