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


def test_remembered_lookups_follow_every_change(tmp_path: Path) -> None:
    """Per-request lookups are remembered, but a change on this connection, a commit on
    another one (another process, ``davproxy admin``) once noticed, and a rollback
    never leave a stale answer."""
    from davproxy.store.records import NewShare

    path = tmp_path / "s.sqlite3"
    server, admin = Store.open(path), Store.open(path)
    new = NewShare(upstream="u", owner="alice", collection="alice/cal/", kind="calendar",
                   sharee="bob", sharee_href="/bob/", access="read", status="noresponse")  # fmt: skip
    with server.transaction():
        share, _ = server.share_upsert(new)
        accepted = server.share_set_status(share, "accepted", "bob/cal/", expect="noresponse")
    assert accepted is not None
    server.notice_changes()
    assert [s.mount for s in server.mounts_of("u", "bob")] == ["bob/cal/"]
    # another connection revokes: seen once the server notices, as at each request
    with admin.transaction():
        admin.share_delete(accepted.id)
    server.notice_changes()
    assert server.mounts_of("u", "bob") == ()
    # a change on the server's own connection is seen at once
    with server.transaction():
        again, _ = server.share_upsert(new)
        server.share_set_status(again, "accepted", "bob/cal2/", expect="noresponse")
    assert [s.mount for s in server.mounts_of("u", "bob")] == ["bob/cal2/"]
    # what was read inside a transaction that rolled back is not remembered
    with pytest.raises(RuntimeError), server.transaction():
        server.share_delete(server.mounts_of("u", "bob")[0].id)
        assert server.mounts_of("u", "bob") == ()
        raise RuntimeError("rolled back")
    assert [s.mount for s in server.mounts_of("u", "bob")] == ["bob/cal2/"]
    server.close()
    admin.close()
