"""davproxy/ops/postgres.py: the throwaway PostgreSQL cluster the DAViCal fixture runs on
(and that a PostgreSQL store's tests can reuse)."""

from __future__ import annotations

import socket

import pytest

from davproxy.ops import postgres


def test_a_cluster_starts_on_loopback_serves_a_database_and_is_gone_after() -> None:
    reason = postgres.unavailable()
    if reason is not None:
        pytest.skip(reason)
    with postgres.start_postgres() as cluster:  # a folder of its own in the temp dir
        folder = cluster.folder
        # TCP on loopback, and the unix socket in the cluster's own folder
        with socket.create_connection(("127.0.0.1", cluster.port), timeout=2):
            pass
        assert (cluster.socket_dir / f".s.PGSQL.{cluster.port}").exists()
        cluster.create_database("scratch")
        rows = cluster.psql(
            "scratch", "CREATE TABLE t (v text); INSERT INTO t VALUES ('a'), ('b');"
            " SELECT string_agg(v, ',' ORDER BY v) FROM t;",
        )  # fmt: skip
        assert rows.strip() == "a,b"
        assert "dbname=scratch" in cluster.dsn("scratch")
        with pytest.raises(postgres.EmbeddedError, match="nope"):
            cluster.psql("scratch", "SELECT * FROM nope;")
    assert not folder.exists()
    with socket.socket() as probe:  # the port is free again: the server stopped
        probe.bind(("127.0.0.1", cluster.port))
