"""``davproxy admin user add|passwd|remove|list``: the proxy-auth htpasswd file.

So operators need no Apache ``htpasswd`` tool: new passwords are hashed with bcrypt
(as ``htpasswd -B``), the file is rewritten atomically (a temporary file beside it,
fsynced, renamed over it) under a lock on its folder, keeping its owner and mode
(0600 for a new file), and every other line (other users, comments, other hash
schemes) is kept as it was.  A running davproxy notices the new file within a second
(``davproxy.upstream.identity.Htpasswd``): added users can log in, a changed or removed
password stops working.  Passwords are read from a prompt (twice) or, when standard
input is not a terminal, from its first line; never from the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from passlib.hash import bcrypt

from davproxy import config as config_mod
from davproxy.upstream.identity import valid_user_id

BCRYPT_BYTES = 72  # bcrypt reads this many bytes of a password; verification truncates alike


class UserError(Exception):
    """Something the operator can fix; one line, exit code 1."""


def add_parser(verbs: Any, json_flag: Callable[[argparse.ArgumentParser], None]) -> None:
    user = verbs.add_parser(
        "user", help="manage the users of a proxy-auth upstream (its htpasswd file)"
    )
    user.add_argument("--upstream", help="upstream name (default: the first in proxy-auth mode)")
    actions = user.add_subparsers(dest="action", required=True)
    for name, text in (
        ("add", "add a user (password from a prompt or stdin)"),
        ("passwd", "change a user's password (from a prompt or stdin)"),
        ("remove", "remove a user (their data upstream is not touched)"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("name", help="user id")
        json_flag(action)
    json_flag(actions.add_parser("list", help="list the users and their hash schemes"))


def htpasswd_of(config: config_mod.Config, upstream: str | None) -> Path:
    """The htpasswd file of the named upstream, or of the first one in proxy-auth mode."""
    for up in config.upstreams:
        if upstream not in (None, up.name):
            continue
        if up.identity.mode == "proxy-auth" and up.identity.htpasswd is not None:
            return up.identity.htpasswd
        if upstream is not None:
            raise UserError(
                f"upstream {up.name!r} is in {up.identity.mode} mode: its users are the "
                "upstream's own (davproxy keeps no passwords for it)"
            )
    if upstream is not None:
        names = ", ".join(up.name for up in config.upstreams)
        raise UserError(f"no upstream named {upstream!r} (have: {names})")
    raise UserError("no upstream is in proxy-auth mode: davproxy keeps no passwords")


def run(args: argparse.Namespace, config: config_mod.Config) -> int:
    try:
        path = htpasswd_of(config, args.upstream)
        return _run(args, path)
    except UserError as exc:
        print(f"davproxy: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, path: Path) -> int:
    if args.action == "list":
        rows = [{"user": user, "scheme": _scheme(hashed)} for user, hashed in entries(path)]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                print(f"{row['user']}  ({row['scheme']})")
            if not rows:
                print("(none)")
        return 0
    name = args.name
    if not valid_user_id(name) or ":" in name or any(c.isspace() for c in name):
        raise UserError(
            f"{name!r} cannot be a user id: it must be one path segment without ':', "
            "spaces or a leading dot"
        )
    known = {user for user, _ in entries(path)}
    if args.action == "add" and name in known:
        raise UserError(f"{name} is already in {path} (use passwd to change the password)")
    if args.action in ("passwd", "remove") and name not in known:
        raise UserError(f"no user {name} in {path}")
    if args.action == "remove":
        update(path, lambda lines: [line for line in lines if _user_of(line) != name])
        _say(args, "removed", name, path)
        return 0
    entry = f"{name}:{hash_new_password(read_password(name))}"
    if args.action == "add":
        update(path, lambda lines: [*lines, entry])
    else:
        update(path, lambda lines: [entry if _user_of(line) == name else line for line in lines])
    _say(args, "added" if args.action == "add" else "password changed", name, path)
    return 0


def _say(args: argparse.Namespace, what: str, name: str, path: Path) -> None:
    if args.json:
        print(json.dumps({"user": name, "result": what, "file": str(path)}))
    else:
        print(f"{name}: {what} in {path} (a running davproxy picks it up within a second)")


def read_password(name: str) -> str:
    """From a prompt (asked twice) or, when stdin is not a terminal, its first line."""
    if sys.stdin is not None and sys.stdin.isatty():
        password = getpass.getpass(f"New password for {name}: ")
        if getpass.getpass("Again: ") != password:
            raise UserError("the two passwords differ; nothing changed")
    else:
        password = (sys.stdin.readline() if sys.stdin is not None else "").rstrip("\r\n")
    if not password:
        raise UserError("empty password; nothing changed")
    if len(password.encode("utf-8")) > BCRYPT_BYTES:
        print(
            f"davproxy: note: bcrypt uses only the first {BCRYPT_BYTES} bytes of a password",
            file=sys.stderr,
        )
    return password


def hash_new_password(password: str) -> str:
    secret = password.encode("utf-8")[:BCRYPT_BYTES]
    return str(bcrypt.using(rounds=10).hash(secret))  # the cost of hash_password("bcrypt")


def entries(path: Path) -> list[tuple[str, str]]:
    """(user, hash) for each entry line of the file; an absent file has none."""
    return [
        (_user_of(line), line.strip().partition(":")[2]) for line in _lines(path) if _user_of(line)
    ]


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def _user_of(line: str) -> str:
    text = line.strip()
    if not text or text.startswith("#") or ":" not in text:
        return ""
    return text.partition(":")[0]


def _scheme(hashed: str) -> str:
    if hashed.startswith(("$2a$", "$2b$", "$2y$")):
        return "bcrypt"
    if hashed.startswith("$6$"):
        return "sha512-crypt"
    if hashed.startswith("$5$"):
        return "sha256-crypt"
    if hashed.startswith("$apr1$"):
        return "apr1"
    return "unusable (plain text or DES: ignored by davproxy)"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One writer at a time: an exclusive lock on the folder (the file itself is
    replaced, so a lock on it would not hold across writers)."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def update(path: Path, change: Callable[[list[str]], list[str]]) -> None:
    """Rewrite the file atomically with ``change`` applied to its lines."""
    path = path.absolute()
    try:
        with _locked(path.parent):
            lines = change(_lines(path))
            try:
                old = path.stat()
                mode, owner = old.st_mode & 0o7777, (old.st_uid, old.st_gid)
            except FileNotFoundError:
                mode, owner = 0o600, None
            handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as out:
                    out.write("".join(line + "\n" for line in lines))
                    out.flush()
                    os.fchmod(out.fileno(), mode)
                    if owner is not None:
                        # root editing the file of a davproxy service user keeps it theirs
                        with contextlib.suppress(PermissionError):
                            os.fchown(out.fileno(), *owner)
                    os.fsync(out.fileno())
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
                raise
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
