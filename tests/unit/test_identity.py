import base64
from pathlib import Path

import pytest

from davproxy.upstream.identity import (
    Credentials,
    Htpasswd,
    VerdictCache,
    hash_password,
    parse_basic,
)


def header(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


def test_parse_basic() -> None:
    creds = parse_basic(header(b"alice:pw:with:colons"))
    assert creds == Credentials("alice", "pw:with:colons", header(b"alice:pw:with:colons"))
    assert parse_basic(header("jürgen:pässword".encode())).user == "jürgen"
    assert parse_basic(None) is None
    assert parse_basic("Bearer abc") is None
    assert parse_basic("Basic !!!not-base64") is None
    assert parse_basic(header(b"no-colon")) is None


@pytest.mark.parametrize("user", ["", "..", ".hidden", "a/b", "a\\b", "a\nb", "x" * 300])
def test_user_ids_that_cannot_be_path_segments_are_refused(user: str) -> None:
    assert parse_basic(header(f"{user}:pw".encode())) is None


@pytest.mark.parametrize("scheme", ["bcrypt", "sha512_crypt", "sha256_crypt"])
def test_htpasswd_verifies_each_scheme(tmp_path: Path, scheme: str) -> None:
    path = tmp_path / "users"
    path.write_text(f"alice:{hash_password('right', scheme)}\n")
    store = Htpasswd(path)
    assert store.verify("alice", "right")
    assert not store.verify("alice", "wrong")
    assert not store.verify("nobody", "right")


def test_htpasswd_ignores_plaintext_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("alice:plaintext\n# comment\n\n")
    store = Htpasswd(path)
    assert not store.verify("alice", "plaintext")
    path.write_text(f"alice:plaintext\nbob:{hash_password('bob-pw')}\n")
    assert store.verify("bob", "bob-pw")  # added live, no restart


def test_verdict_cache_expires_and_keeps_no_password() -> None:
    now = [0.0]
    cache = VerdictCache(60, clock=lambda: now[0])
    good = Credentials("alice", "secret-pw", "x")
    bad = Credentials("alice", "wrong", "x")
    cache.put(good, True)
    cache.put(bad, False)
    assert cache.get(good) is True and cache.get(bad) is False
    assert all(b"secret-pw" not in key for key in cache._entries)
    now[0] = 6  # negatives live 5 s, positives the configured 60 s
    assert cache.get(bad) is None and cache.get(good) is True
    now[0] = 61
    assert cache.get(good) is None


def test_long_passphrase_with_bcrypt_entry(tmp_path: Path) -> None:
    """bcrypt reads 72 bytes; a longer passphrase must still work (as with Apache)."""
    phrase = "correct horse battery staple " * 4 + "ü" * 10
    path = tmp_path / "users"
    path.write_text(f"alice:{hash_password(phrase[:50], 'bcrypt')}\n")
    from passlib.hash import bcrypt

    path.write_text(f"alice:{bcrypt.using(rounds=4).hash(phrase.encode()[:72])}\n")
    store = Htpasswd(path)
    assert store.verify("alice", phrase)
    assert not store.verify("alice", "wrong")
    assert not store.verify("alice", "a\0b") and not store.verify("alice", "x" * 5000)


def test_undecodable_htpasswd_keeps_last_good_copy(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"alice:{hash_password('pw')}\n")
    store = Htpasswd(path)
    path.write_bytes(b"# caf\xe9\n" + path.read_bytes() + b"bob:x\n")
    assert store.verify("alice", "pw")  # last good copy, no exception


def test_htpasswd_users_reads_no_disk_and_refresh_sees_a_replaced_file(tmp_path: Path) -> None:
    """users() runs on the event loop: it only reads what was loaded; refresh() (a worker
    thread) notices a file renamed into place, as `davproxy admin user` writes it."""
    path = tmp_path / "users"
    path.write_text(f"alice:{hash_password('pw')}\n")
    store = Htpasswd(path)
    generation = store.generation
    replacement = tmp_path / "users.new"
    replacement.write_text(f"alice:{hash_password('pw')}\nbob:{hash_password('b')}\n")
    replacement.replace(path)
    assert store.users() == {"alice"}  # not looked at yet
    assert store.refresh() and store.generation == generation + 1
    assert store.users() == {"alice", "bob"}
    assert not store.refresh()  # unchanged: nothing re-read
    path.unlink()
    assert not store.refresh() and store.users() == {"alice", "bob"}  # last good copy
