"""PostgreSQL for the tests: one throwaway cluster per test run, a fresh database per use.

Started on first use (``ops/postgres.py``: initdb on loopback, no fsync) and stopped when
the run ends.  ``DAVPROXY_TEST_STORE=postgresql`` makes every davproxy the tests start keep
its store here instead of in a SQLite file (``tests/helpers.write_config``): the PostgreSQL
pass of ``make test``.
"""

from __future__ import annotations

import atexit
import itertools
import os
import tempfile
from pathlib import Path

import pytest

from davproxy.ops import postgres

_cluster: postgres.PostgresCluster | None = None
_names = itertools.count(1)


def use_postgres() -> bool:
    return os.environ.get("DAVPROXY_TEST_STORE", "sqlite") == "postgresql"


def cluster() -> postgres.PostgresCluster:
    global _cluster
    if _cluster is None:
        reason = postgres.unavailable()
        if reason is not None:
            if use_postgres():  # the PostgreSQL pass was asked for: it must not pass silently
                raise RuntimeError(f"DAVPROXY_TEST_STORE=postgresql but {reason}")
            pytest.skip(reason)
        folder = Path(tempfile.mkdtemp(prefix="davproxy-test-pg-"))
        folder.rmdir()  # start_postgres makes it, owned by the postgres user when root
        _cluster = postgres.start_postgres(folder)
        atexit.register(_cluster.stop)
    return _cluster


def fresh_url() -> str:
    """A new empty database; its URL (trust authentication on loopback)."""
    import psycopg

    server = cluster()
    name = f"davproxy_{os.getpid()}_{next(_names)}"
    with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@127.0.0.1:{server.port}/{name}"
