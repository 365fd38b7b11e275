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
