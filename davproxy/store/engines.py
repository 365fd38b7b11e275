"""The two databases a store can live in, behind one small seam.

``Store`` (store/store.py) speaks one SQL: SQLite's, restricted to what PostgreSQL also
understands once ``postgres_sql`` has rewritten it (``?`` placeholders, the ``user``
column, ``json_extract``; DDL types in ``postgres_ddl``).  An engine runs that SQL,
turns the driver's errors into ``StoreError``/``StoreConflict`` and gives the store what
it needs to be correct with other connections writing:

- ``begin()``: a write transaction that excludes every other writer until it ends —
  SQLite's ``BEGIN IMMEDIATE``; on PostgreSQL an advisory transaction lock that every
  davproxy process takes, so writers are serialised fleet-wide exactly as with SQLite.
  That is what keeps revision counters (sync tokens) in commit order: a reader can never
  see revision 11 before a slower writer commits revision 10.  Writes are small (a
  share, a notification); a whole-feed import is the one long writer.
- ``local_writes``: a counter of this connection's own commits, and ``others_wrote()``:
  True when another connection has committed since it was last asked (SQLite's
  ``PRAGMA data_version``; PostgreSQL: a one-row clock every write transaction bumps),
  so what the store remembers between requests is forgotten in time.
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("davproxy.store")

Params = Sequence[object]


class StoreError(Exception):
    """The store cannot be opened, is not one this davproxy can use, or failed a call.

    No driver exception (sqlite3, psycopg) leaves this package: callers see
    ``StoreError`` and ``StoreConflict``."""


class StoreConflict(StoreError):
    """A write broke a uniqueness rule: a racing request took the same name first."""


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Engine(Protocol):
    dialect: str  # "sqlite" | "postgresql"
    location: str  # for operators: a path, or a URL without its password
    in_transaction: bool
    local_writes: int

    def execute(self, sql: str, params: Params = ()) -> Cursor: ...

    def script(self, sql: str) -> None: ...

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def others_wrote(self) -> bool: ...

    def migration_lock(self) -> None: ...

    def migration_unlock(self) -> None: ...

    def describe(self) -> dict[str, str]: ...

    def integrity_ok(self) -> bool: ...

    def reopen(self) -> Engine: ...

    def close(self) -> None: ...


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def redacted(url: str) -> str:
    """The URL without its password: what logs and ``admin status`` may show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=netloc[0].split(":", 1)[0] + ":***@" + netloc[1]))


def open_engine(location: str | Path, password: str | None = None) -> Engine:
    if is_url(location):
        return PostgresEngine(str(location), password)
    return SqliteEngine(Path(location))


# -- SQLite --------------------------------------------------------------------------------


class SqliteEngine:
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)
        self.in_transaction = False
        self.local_writes = 0
        self._data_version = -1
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA foreign_keys = ON")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                log.warning("store %s: journal mode is %s, not WAL", path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")  # safe with WAL: no corruption on crash
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from None
        self.conn = conn

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        try:
            cursor = self.conn.execute(sql, params)
        except sqlite3.IntegrityError as exc:
            raise StoreConflict(str(exc)) from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(str(exc)) from exc
        if not self.in_transaction and cursor.rowcount > 0:
            self.local_writes += 1  # an autocommit write
        return cursor

    def script(self, sql: str) -> None:
        self.execute(sql)

    def begin(self) -> None:
        self.execute("BEGIN IMMEDIATE")  # takes the write lock now, not at the first write
        self.in_transaction = True

    def commit(self) -> None:
        self.in_transaction = False
        self.local_writes += 1
        self.execute("COMMIT")

    def rollback(self) -> None:
        self.in_transaction = False
        if self.conn.in_transaction:
            self.execute("ROLLBACK")

    def others_wrote(self) -> bool:
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return False
        self._data_version = version
        return True

    def migration_lock(self) -> None:
        """Migrations take the write lock per step (``begin``) and look again inside it."""

    def migration_unlock(self) -> None:
        pass

    def describe(self) -> dict[str, str]:
        mode = self.conn.execute("PRAGMA journal_mode").fetchone()[0]
        return {"backend": "sqlite", "journal_mode": str(mode)}

    def integrity_ok(self) -> bool:
        return bool(self.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok")

    def reopen(self) -> Engine:
        return SqliteEngine(self.path)

    def close(self) -> None:
        self.conn.close()


# -- PostgreSQL ------------------------------------------------------------------------

# pg_advisory_xact_lock keys (any two fixed bigints davproxy owns)
_WRITE_LOCK = 0x64617670_0001
_MIGRATION_LOCK = 0x64617670_0002

_STRINGS = re.compile(r"('(?:[^']|'')*')")
_JSON_EXTRACT = re.compile(r"json_extract\(\s*(\w+)\s*,\s*'\$\.(\w+)'\s*\)")
_USER = re.compile(r"(?<![\w.\"])user(?![\w\"(])")
_DDL_TYPES = re.compile(r"\b(id INTEGER PRIMARY KEY|INTEGER|REAL)\b")
_PG_TYPES = {
    # SQLite's rowid ids; the ids of other tables' rows (share_id ...) are plain BIGINT
    "id INTEGER PRIMARY KEY": "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    "INTEGER": "BIGINT",  # SQLite's integers are 64-bit
    "REAL": "DOUBLE PRECISION",  # PostgreSQL's REAL is 4 bytes: a timestamp would lose minutes
}


@functools.lru_cache(maxsize=1024)
def postgres_sql(sql: str) -> str:
    """davproxy's SQL for PostgreSQL: placeholders, the reserved ``user``, JSON access.

    Only text outside string literals is rewritten."""
    pieces = _STRINGS.split(sql.replace("%", "%%"))  # psycopg reads % inside quotes too
    for i in range(0, len(pieces), 2):  # even pieces are outside quotes
        pieces[i] = _USER.sub('"user"', pieces[i].replace("?", "%s"))
    out = "".join(pieces)
    return _JSON_EXTRACT.sub(r"(\1::jsonb ->> '\2')", out)


def postgres_ddl(sql: str) -> str:
    """A migration's CREATE/ALTER statement for PostgreSQL: SQLite's types made explicit."""
    pieces = _STRINGS.split(sql)
    for i in range(0, len(pieces), 2):
        code = _DDL_TYPES.sub(lambda m: _PG_TYPES[m.group(1)], pieces[i])
        pieces[i] = _USER.sub('"user"', code)
    return "".join(pieces)


def _bools_as_ints(params: Params) -> tuple[object, ...]:
    # SQLite keeps booleans as 0/1 in INTEGER columns; PostgreSQL refuses a boolean there
    return tuple(int(p) if isinstance(p, bool) else p for p in params)


class PostgresEngine:
    """One psycopg connection (autocommit; explicit BEGIN/COMMIT), used from one thread.

    Synchronous on purpose: every store verb is a short, indexed statement and no
    transaction may span an ``await`` (within one process that is what makes a share
    change atomic), so the request path calls the store directly, as with SQLite.  A
    round trip on loopback costs tens of microseconds; the lookups made on every request
    are remembered between changes (``Store.remembered``), leaving one small read of
    the clock per request."""

    dialect = "postgresql"

    def __init__(self, url: str, password: str | None = None) -> None:
        import psycopg  # only operators who choose PostgreSQL need it

        self._psycopg = psycopg
        self.url = url
        self.password = password
        self.location = redacted(url)
        self.in_transaction = False
        self.local_writes = 0
        self._clock = -1
        self.conn = self._connect()

    def _connect(self) -> Any:
        psycopg = self._psycopg
        extra: dict[str, Any] = {}
        if self.password is not None:
            extra["password"] = self.password
        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=10,
                application_name="davproxy",
                # a writer waits at most as long as SQLite's busy_timeout, then fails
                options="-c lock_timeout=5000 -c idle_in_transaction_session_timeout=60000",
                **extra,
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot open store {self.location}: {first_line(exc)}") from None
        conn.prepare_threshold = 2  # statements repeated on every request: server-side plans
        return conn

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        if not self.in_transaction and not _reads(sql):
            # an autocommit write is still one writer at a time, fleet-wide
            self.begin()
            try:
                cursor = self._run(postgres_sql(sql), params)
            except BaseException:
                self.rollback()
                raise
            self.commit()
            return cursor
        return self._run(postgres_sql(sql), params)

    def _run(self, sql: str, params: Params | None, retry: bool = True) -> Cursor:
        """``params`` None: the text goes as it is (several statements allowed, no
        placeholders); a sequence, even empty: ``%s`` placeholders and ``%%``."""
        errors = self._psycopg.errors
        try:
            args = None if params is None else _bools_as_ints(params)
            return self.conn.execute(sql, args)  # type: ignore[no-any-return]
        except errors.IntegrityError as exc:
            raise StoreConflict(first_line(exc)) from exc
        except self._psycopg.OperationalError as exc:
            # the server restarted or the connection broke: reconnect, and retry a
            # statement that was not inside a transaction (it cannot have half-applied)
            if self.conn.closed or self.conn.broken:
                was_in_transaction = self.in_transaction
                self.in_transaction = False
                try:
                    self.conn = self._connect()
                except StoreError:
                    pass
                else:
                    log.warning("store %s: reconnected after: %s", self.location, first_line(exc))
                    if retry and not was_in_transaction:
                        return self._run(sql, params, retry=False)
            raise StoreError(first_line(exc)) from exc
        except self._psycopg.Error as exc:
            raise StoreError(first_line(exc)) from exc

    def script(self, sql: str) -> None:
        self._run(sql, None)

    def begin(self) -> None:
        self._run("BEGIN", None)
        self.in_transaction = True
        try:
            self._run(
                f"SELECT pg_advisory_xact_lock({_WRITE_LOCK});"
                " UPDATE store_clock SET version = version + 1",
                None,
            )
        except BaseException:
            self.rollback()
            raise

    def commit(self) -> None:
        self.in_transaction = False
        self.local_writes += 1
        self._run("COMMIT", None)

    def rollback(self) -> None:
        self.in_transaction = False
        if not (self.conn.closed or self.conn.broken):
            self._run("ROLLBACK", None)

    def others_wrote(self) -> bool:
        row = self._run("SELECT version FROM store_clock", None).fetchone()
        version = int(row[0]) if row else 0
        if version == self._clock:
            return False
        self._clock = version
        return True

    def migration_lock(self) -> None:
        """Processes starting at once migrate one after the other (a session lock)."""
        self._run(f"SELECT pg_advisory_lock({_MIGRATION_LOCK})", None)
        self._run(
            "CREATE TABLE IF NOT EXISTS store_clock (version BIGINT NOT NULL);"
            " INSERT INTO store_clock SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM store_clock)",
            None,
        )

    def migration_unlock(self) -> None:
        self._run(f"SELECT pg_advisory_unlock({_MIGRATION_LOCK})", None)

    def describe(self) -> dict[str, str]:
        version = self._run("SHOW server_version", None).fetchone()[0]
        return {"backend": "postgresql", "server_version": str(version)}

    def integrity_ok(self) -> bool:
        # PostgreSQL checks its own pages; what davproxy can check is that it answers
        return self._run("SELECT 1", None).fetchone()[0] == 1

    def reopen(self) -> Engine:
        return PostgresEngine(self.url, self.password)

    def close(self) -> None:
        self.conn.close()


def _reads(sql: str) -> bool:
    head = sql.lstrip()[:6].upper()
    return head == "SELECT" or head.startswith(("PRAGMA", "SHOW"))


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
