"""davproxy on a PostgreSQL store: what only a server-grade store can do wrong.

Run in every pass (its davproxy always uses PostgreSQL); the rest of the suite runs on
PostgreSQL in make test's second pass (``DAVPROXY_TEST_STORE=postgresql``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from davproxy.ops.embedded import ServerProcess, start_radicale
from tests import pg
from tests.helpers import basic, fetch, open_store, raw_session, start_proxy, write_htpasswd


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("pg-radicale")
    with start_radicale(folder / "radicale", auth="x-remote-user") as upstream:
        yield upstream


async def test_unreachable_store_fails_closed_and_recovers(
    tmp_path: Path, radicale: ServerProcess
) -> None:
    """PostgreSQL refuses davproxy (down, restarting): every request is a 503 with
    Retry-After and a log line, never the upstream's answer unchecked; once it is back,
    the next request is served and the store is whole."""
    with start_proxy(
        tmp_path / "davproxy", upstream_url=radicale.url, kind="radicale", mode="proxy-auth",
        htpasswd=write_htpasswd(tmp_path / "users"), store="postgresql",
    ) as proxy:  # fmt: skip
        database = open_store(tmp_path / "davproxy" / "davproxy.toml")
        name = database.execute("SELECT current_database()").fetchone()[0]
        database.close()
        base = proxy.url.rstrip("/")
        url = f"{base}/alice/"
        async with raw_session() as session:
            ok = await fetch(session, "PROPFIND", url, {**basic("alice"), "Depth": "0"})
            assert ok.status == 207
            with psycopg.connect(pg.cluster().dsn("postgres"), autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
                try:
                    for _ in range(3):
                        down = await fetch(
                            session, "PROPFIND", url, {**basic("alice"), "Depth": "0"}
                        )
                        assert down.status == 503, down
                        assert down.header("retry-after") == "5"
                        assert b"store is unavailable" in down.body
                    ready = await fetch(session, "GET", f"{base}/.davproxy/readyz")
                    assert ready.status == 503
                finally:
                    admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            back = await fetch(session, "PROPFIND", url, {**basic("alice"), "Depth": "0"})
            assert back.status == 207
            await asyncio.sleep(0)
        log = proxy.log_tail(400)
    assert "store unavailable on PROPFIND /alice/" in log
    assert "reconnected" in log or "cannot open store" in log
