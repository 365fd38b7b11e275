"""The documented example files in config/ are valid and say what the code defaults to."""

import shutil
from pathlib import Path

from davproxy import config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def test_main_example_loads_with_documented_defaults() -> None:
    cfg = config.load(CONFIG_DIR / "davproxy.example.toml")
    assert cfg.server == config.ServerConfig()
    assert cfg.logging == config.LoggingConfig()
    up = cfg.upstreams[0]
    assert up.identity.cache_seconds == config.IdentityConfig("upstream-basic").cache_seconds
    assert up.identity.trusted_header == config.IdentityConfig("upstream-basic").trusted_header
    assert [u.id for u in up.users] == ["alice", "bob"]


def test_xandikos_example_loads(tmp_path: Path) -> None:
    shutil.copy(CONFIG_DIR / "xandikos.mapping.example.toml", tmp_path / "x.toml")
    (tmp_path / "users.htpasswd").write_text("")
    (tmp_path / "main.toml").write_text(
        '[[upstream]]\nname = "x"\nurl = "http://127.0.0.1:8090/"\nmapping = "x.toml"\n'
    )
    up = config.load(tmp_path / "main.toml").upstreams[0]
    assert up.identity.mode == "proxy-auth"
    assert up.layout.addressbook_home == "{user}/contacts/"


def test_davical_example_loads(tmp_path: Path) -> None:
    shutil.copy(CONFIG_DIR / "davical.mapping.example.toml", tmp_path / "d.toml")
    secret = tmp_path / "admin.pw"
    secret.write_text("pw\n")
    text = (tmp_path / "d.toml").read_text().replace("/run/secrets/davical-admin", str(secret))
    (tmp_path / "d.toml").write_text(text)
    (tmp_path / "main.toml").write_text(
        '[[upstream]]\nname = "d"\nurl = "http://127.0.0.1:8081/caldav.php/"\nmapping = "d.toml"\n'
    )
    up = config.load(tmp_path / "main.toml").upstreams[0]
    assert up.access.backend == "acl" and up.access.acl_request == "own-aces"
    assert up.layout.calendar_home == "{user}/" and up.href_mapping == "rewrite"
