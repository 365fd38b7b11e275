import sqlite3
from pathlib import Path

import pytest

from davproxy.store.sqlite import MIGRATIONS, Store, StoreError


def test_open_applies_migrations_in_wal_mode(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "sub" / "s.sqlite3")
    info = store.info()
    assert info.schema_version == max(v for v, _, _ in MIGRATIONS)
    assert info.journal_mode == "wal"
    assert store.integrity_ok()
    instance = info.instance_id
    store.close()
    # reopening is idempotent and keeps data
    again = Store.open(tmp_path / "sub" / "s.sqlite3")
    assert again.info().instance_id == instance
    again.close()


def test_store_from_newer_davproxy_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    Store.open(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 0)")
    with pytest.raises(StoreError, match="newer than this davproxy knows"):
        Store.open(path)


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database|cannot open store"):
        Store.open(path)


def test_failed_migration_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import davproxy.store.sqlite as store_mod

    def broken(db: object) -> None:
        db.execute("CREATE TABLE half (x)")  # type: ignore[attr-defined]
        raise RuntimeError("boom")

    latest = max(v for v, _, _ in MIGRATIONS)
    monkeypatch.setattr(store_mod, "MIGRATIONS", (*MIGRATIONS, (latest + 1, "broken", broken)))
    with pytest.raises(RuntimeError):
        Store.open(tmp_path / "s.sqlite3")
    with sqlite3.connect(tmp_path / "s.sqlite3") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert "half" not in tables and versions == [v for v, _, _ in MIGRATIONS]  # numbers may skip


def test_an_ended_copy_remembers_its_invitation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 7: where an invitation's copy was, until something new stands there;
    a store written without it (by main: 1-6 and 8; an ended copy without invitation)
    upgrades."""
    import davproxy.store.sqlite as store_mod
    from davproxy.store.records import NewShare

    path = tmp_path / "s.sqlite3"
    with monkeypatch.context() as patched:
        patched.setattr(store_mod, "MIGRATIONS", tuple(m for m in MIGRATIONS if m[0] != 7))
        before = Store.open(path)
    before.db.conn.execute(
        "INSERT INTO ended_copies (upstream, sharee, mount, ended) VALUES ('u', 'bob', 'bob/x/', 1)"
    )
    before.close()

    store = Store.open(path)
    applied = {r[0] for r in store.db.conn.execute("SELECT version FROM schema_migrations")}
    assert applied == {v for v, _, _ in MIGRATIONS}
    new = NewShare(upstream="u", owner="alice", collection="alice/cal/", kind="calendar",
                   sharee="bob", sharee_href="/bob/", access="read", status="noresponse")  # fmt: skip
    with store.transaction():
        share, _ = store.share_upsert(new)
        accepted = store.share_set_status(share, "accepted", "bob/team/", expect="noresponse")
        assert accepted is not None and store.ended_copy_of(accepted) is None
        declined = store.share_set_status(accepted, "declined", None, expect="accepted")
    assert declined is not None and store.ended_copy_of(declined) == "bob/team/"
    assert store.ended_copy(declined.upstream, "bob", "bob/x/a.ics") == "bob/x/"  # the old row
    with store.transaction():
        store.ended_copy_clear("u", "bob/team/")  # bob made a calendar of his own there
    assert store.ended_copy_of(declined) is None
    store.close()
