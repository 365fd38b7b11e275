"""Configuration checks added for issue 13: one user per e-mail address, and the bounds
of [server] login_delay_max."""

from __future__ import annotations

from pathlib import Path

import pytest

from davproxy import config
from davproxy.upstream.directory import Directory

from .test_config import write

MAPPING = 'kind = "radicale"\n[identity]\nmode = "upstream-basic"\n'


def users(*entries: tuple[str, list[str]]) -> str:
    return "".join(
        f'[[users]]\nid = "{user}"\nemails = [{", ".join(repr(e) for e in emails)}]\n'
        for user, emails in entries
    ).replace("'", '"')


def test_two_users_with_one_address_is_an_error(tmp_path: Path) -> None:
    mapping = MAPPING + users(("alice", ["a@example.org"]), ("bob", ["A@Example.org"]))
    with pytest.raises(config.ConfigError) as error:
        config.load(write(tmp_path, 'url = "http://h/"', mapping))
    message = str(error.value)
    assert "[users[1]] emails: 'a@example.org' is already 'alice''s address" in message
    assert str(tmp_path) in message


def test_distinct_addresses_resolve_to_their_user(tmp_path: Path) -> None:
    mapping = MAPPING + users(
        ("alice", ["a@example.org", "alice@example.org", "a@example.org"]),  # own repeat: fine
        ("bob", ["b@example.org"]),
    )
    cfg = config.load(write(tmp_path, 'url = "http://h/"', mapping))
    directory = Directory(cfg.upstreams[0], set)
    assert directory.resolve("mailto:A@example.org") == "alice"
    assert directory.resolve("mailto:b@example.org") == "bob"


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("2.5", 2.5), ("60", 60.0)])
def test_login_delay_max(tmp_path: Path, value: str, expected: float) -> None:
    main = write(tmp_path, 'url = "http://h/"', MAPPING, f"[server]\nlogin_delay_max = {value}\n")
    assert config.load(main).server.login_delay_max == expected


@pytest.mark.parametrize("value", ["61", "-1", '"8"'])
def test_login_delay_max_refused(tmp_path: Path, value: str) -> None:
    main = write(tmp_path, 'url = "http://h/"', MAPPING, f"[server]\nlogin_delay_max = {value}\n")
    with pytest.raises(config.ConfigError, match=r"\[server\] login_delay_max: must"):
        config.load(main)
