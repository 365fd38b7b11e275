"""The store on both engines: SQLite (a file) and PostgreSQL (a throwaway cluster)."""

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from davproxy.store import Store, StoreConflict, StoreError
from davproxy.store.engines import postgres_ddl, postgres_sql, redacted
from davproxy.store.migrations import MIGRATIONS
from davproxy.store.records import NewShare
from tests import pg

NEW = NewShare(upstream="u", owner="alice", collection="alice/cal/", kind="calendar",
               sharee="bob", sharee_href="/bob/", access="read", status="noresponse")  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    if request.param == "postgresql":
        return pg.fresh_url()
    return tmp_path / "sub" / "s.sqlite3"


def test_open_applies_migrations(location: str | Path) -> None:
    store = Store.open(location)
    info = store.info()
    assert info.schema_version == max(v for v, _, _ in MIGRATIONS)
    if store.dialect == "sqlite":
        assert info.details == {"backend": "sqlite", "journal_mode": "wal"}
    else:
        assert info.details["backend"] == "postgresql" and "server_version" in info.details
    assert store.integrity_ok()
    instance = info.instance_id
    store.close()
    # reopening is idempotent and keeps data
    again = Store.open(location)
    assert again.info().instance_id == instance
    again.close()


def test_store_from_newer_davproxy_is_refused(location: str | Path) -> None:
    store = Store.open(location)
    store.execute("INSERT INTO schema_migrations VALUES (999, 'future', 0)")
    store.close()
    with pytest.raises(StoreError, match="newer than this davproxy knows"):
        Store.open(location)


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable sqlite database|cannot open store"):
        Store.open(path)


def test_unreachable_postgresql_is_a_clear_error() -> None:
    server = pg.cluster()
    with pytest.raises(StoreError, match="cannot open store .*no_such_db"):
        Store.open(f"postgresql://postgres@127.0.0.1:{server.port}/no_such_db")
    with pytest.raises(StoreError, match=r"cannot open store postgresql://x:\*\*\*@127.0.0.1:1/"):
        Store.open("postgresql://x:secret@127.0.0.1:1/db")  # nothing listens; password hidden


def test_failed_migration_rolls_back(location: str | Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import davproxy.store.core as core

    def broken(db: object) -> None:
        db.execute("CREATE TABLE half (x INTEGER)")  # type: ignore[attr-defined]
        raise RuntimeError("boom")

    latest = max(v for v, _, _ in MIGRATIONS)
    monkeypatch.setattr(core, "MIGRATIONS", (*MIGRATIONS, (latest + 1, "broken", broken)))
    with pytest.raises(RuntimeError):
        Store.open(location)
    monkeypatch.setattr(core, "MIGRATIONS", MIGRATIONS)
    store = Store.open(location)
    versions = sorted(r[0] for r in store.execute("SELECT version FROM schema_migrations"))
    assert versions == [v for v, _, _ in MIGRATIONS]  # numbers may skip
    with pytest.raises(StoreError):  # the half-made table was rolled back with it
        store.execute("SELECT x FROM half")
    store.close()


def test_processes_starting_at_once_migrate_once(location: str | Path) -> None:
    """Several davproxy processes start together on an empty store: each migration is
    applied exactly once and every one of them opens the store."""
    opened: list[Store] = []
    failures: list[BaseException] = []

    def start() -> None:
        try:
            opened.append(Store.open(location))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and len(opened) == 4
    rows = opened[0].execute("SELECT version FROM schema_migrations").fetchall()
    assert sorted(r[0] for r in rows) == [v for v, _, _ in MIGRATIONS]
    assert len({s.info().instance_id for s in opened}) == 1
    for store in opened:
        store.close()


def test_an_ended_copy_remembers_its_invitation(
    location: str | Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 7: where an invitation's copy was, until something new stands there;
    a store written without it (by main: 1-6 and 8; an ended copy without invitation)
    upgrades."""
    import davproxy.store.core as core

    with monkeypatch.context() as patched:
        patched.setattr(core, "MIGRATIONS", tuple(m for m in MIGRATIONS if m[0] != 7))
        before = Store.open(location)
    before.execute(
        "INSERT INTO ended_copies (upstream, sharee, mount, ended) VALUES ('u', 'bob', 'bob/x/', 1)"
    )
    before.close()

    store = Store.open(location)
    applied = {r[0] for r in store.execute("SELECT version FROM schema_migrations")}
    assert applied == {v for v, _, _ in MIGRATIONS}
    with store.transaction():
        share, _ = store.share_upsert(NEW)
        accepted = store.share_set_status(share, "accepted", "bob/team/", expect="noresponse")
        assert accepted is not None and store.ended_copy_of(accepted) is None
        declined = store.share_set_status(accepted, "declined", None, expect="accepted")
    assert declined is not None and store.ended_copy_of(declined) == "bob/team/"
    assert store.ended_copy(declined.upstream, "bob", "bob/x/a.ics") == "bob/x/"  # the old row
    with store.transaction():
        store.ended_copy_clear("u", "bob/team/")  # bob made a calendar of his own there
    assert store.ended_copy_of(declined) is None
    store.close()


def test_remembered_lookups_follow_every_change(location: str | Path) -> None:
    """Per-request lookups are remembered, but a change on this connection, a commit on
    another one (another process, ``davproxy admin``) once noticed, and a rollback
    never leave a stale answer."""
    server, admin = Store.open(location), Store.open(location)
    with server.transaction():
        share, _ = server.share_upsert(NEW)
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
        again, _ = server.share_upsert(NEW)
        server.share_set_status(again, "accepted", "bob/cal2/", expect="noresponse")
    assert [s.mount for s in server.mounts_of("u", "bob")] == ["bob/cal2/"]
    # an autocommit write on another connection is noticed too
    admin.set_setting("k", "v")
    server.notice_changes()
    assert server.setting("k") == "v"
    # what was read inside a transaction that rolled back is not remembered
    with pytest.raises(RuntimeError), server.transaction():
        server.share_delete(server.mounts_of("u", "bob")[0].id)
        assert server.mounts_of("u", "bob") == ()
        raise RuntimeError("rolled back")
    assert [s.mount for s in server.mounts_of("u", "bob")] == ["bob/cal2/"]
    server.close()
    admin.close()


def test_writers_on_two_connections_keep_revisions_in_commit_order(location: str | Path) -> None:
    """Two connections (two processes) add notifications as fast as they can: every
    revision is used once, and a reader that saw revision N never later finds a
    smaller one it did not see (what keeps a sync token valid)."""
    stores = [Store.open(location) for _ in range(3)]
    errors: list[BaseException] = []

    def write(store: Store, who: str) -> None:
        try:
            for i in range(40):
                with store.transaction():
                    store.notification_put("u", "bob", f"{who}-{i}", "invite", "{}")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=(s, w)) for s, w in zip(stores[:2], "ab", strict=True)
    ]
    seen: set[int] = set()
    reader = stores[2]
    for thread in threads:
        thread.start()
    high = 0
    while any(t.is_alive() for t in threads):
        changes = reader.notification_changes("u", "bob", high)
        for change in changes:
            assert change.revision not in seen
            seen.add(change.revision)
        if changes:
            high = changes[-1].revision
    for thread in threads:
        thread.join()
    assert errors == []
    seen.update(c.revision for c in reader.notification_changes("u", "bob", high))
    revisions = [n.revision for n in reader.notifications("u", "bob")]
    assert len(revisions) == 80 == len(set(revisions)) == len(seen)
    for store in stores:
        store.close()


def test_a_racing_insert_is_a_conflict(location: str | Path) -> None:
    store = Store.open(location)
    with store.transaction():
        store.share_upsert(NEW)
    with pytest.raises(StoreConflict), store.transaction():
        store.execute(
            "INSERT INTO shares (upstream, owner, collection, kind, sharee, sharee_href,"
            " access, status, invite_uid, created, updated)"
            " VALUES ('u', 'alice', 'alice/cal/', 'calendar', 'bob', '/bob/', 'read',"
            " 'noresponse', 'x', 0, 0)"
        )
    assert len(store.all_shares()) == 1  # rolled back, the store still usable
    store.close()


def test_a_postgresql_restart_costs_one_request_at_most() -> None:
    """The connection breaks (the server restarted, a network blip): the next statement
    outside a transaction reconnects and runs; nothing is half-applied."""
    import psycopg

    store = Store.open(pg.fresh_url())
    with store.transaction():
        store.share_upsert(NEW)
    pid = store.execute("SELECT pg_backend_pid()").fetchone()[0]
    with psycopg.connect(pg.cluster().dsn("postgres"), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert len(store.all_shares()) == 1
    assert store.execute("SELECT pg_backend_pid()").fetchone()[0] != pid
    store.close()


def test_sql_for_postgresql() -> None:
    assert postgres_sql("SELECT a FROM t WHERE user = ? AND x LIKE 'user:%'") == (
        "SELECT a FROM t WHERE \"user\" = %s AND x LIKE 'user:%%'"
    )
    assert postgres_sql("SELECT json_extract(body, '$.kind') FROM n WHERE b = '?'") == (
        "SELECT (body::jsonb ->> 'kind') FROM n WHERE b = '?'"
    )
    assert postgres_sql("UPDATE t SET v = excluded.user") == "UPDATE t SET v = excluded.user"
    assert postgres_ddl("CREATE TABLE t (id INTEGER PRIMARY KEY, share_id INTEGER, at REAL)") == (
        "CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
        " share_id BIGINT, at DOUBLE PRECISION)"
    )
    assert redacted("postgresql://u:pw@h:5/db") == "postgresql://u:***@h:5/db"
    assert redacted("postgresql://u@h/db") == "postgresql://u@h/db"


def test_sqlite_store_readable_by_sqlite3(tmp_path: Path) -> None:
    """The SQLite store stays a plain SQLite file an operator can inspect."""
    store = Store.open(tmp_path / "s.sqlite3")
    store.close()
    with sqlite3.connect(tmp_path / "s.sqlite3") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_database_user_without_rights_is_told_which_store() -> None:
    """An operator's database user who may not create tables: one line naming the store
    and PostgreSQL's reason, not a bare driver message."""
    import psycopg

    url = pg.fresh_url()
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(pg.cluster().dsn(name), autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "visitor_{name}" LOGIN')  # roles are cluster-wide
        admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    with pytest.raises(StoreError, match=f"store postgresql://visitor_{name}@.* is not a usable"):
        Store.open(url.replace("postgres@", f"visitor_{name}@"))


async def test_the_change_clock_is_read_after_each_request_arrives() -> None:
    """PostgreSQL's clock is read off the event loop, one read shared by the requests
    waiting for it; a request never settles for a read sent before it arrived (a
    commit made meanwhile, a revocation elsewhere, would be missed)."""
    url = pg.fresh_url()
    server, other = Store.open(url), Store.open(url)
    assert server._clock is not None
    server._clock.QUERY = "SELECT version, pg_sleep(0.3) FROM store_clock"  # a slow read
    with other.transaction():
        share, _ = other.share_upsert(NEW)
        other.share_set_status(share, "accepted", "bob/cal/", expect="noresponse")
    await server.changes_noticed()
    assert [s.mount for s in server.mounts_of("u", "bob")] == ["bob/cal/"]

    early = asyncio.ensure_future(server.changes_noticed())  # its read is on its way ...
    await asyncio.sleep(0.1)
    with other.transaction():  # ... when another process revokes
        other.share_delete(share.id)
    late = await asyncio.gather(*(server.changes_noticed() for _ in range(20)))
    assert late.count(True) == 1  # one of them dropped what was remembered, for all
    assert server.mounts_of("u", "bob") == ()  # nobody after the revocation is served
    assert await early is False
    assert server._clock.reads == 3  # 1 + the early one + one shared by the 20
    await server.aclose()
    other.close()
