"""A throwaway PostgreSQL cluster: initdb into a folder, started on a free loopback port.

For embedded upstreams that keep their data in PostgreSQL (DAViCal, ``ops/davical.py``)
and for tests that need a database server of their own.  The cluster lives entirely in
its folder (data directory, unix socket directory, log), listens on 127.0.0.1 only,
trusts local connections and runs without fsync: it is for tests and demos, never for
data anyone keeps.  PostgreSQL refuses to run as root, so as root the server and its
tools run as the ``postgres`` system user (``runuser``), which owns the folder.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from davproxy.ops.embedded import EmbeddedError, free_port

# Debian's PostgreSQL 15 (bookworm); PATH is tried when it is not there.
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def pg_tool(name: str) -> str | None:
    """The full path of a PostgreSQL server tool (initdb, pg_ctl), or None."""
    candidate = PG_BIN / name
    if candidate.is_file():
        return str(candidate)
    return shutil.which(name)


def unavailable() -> str | None:
    """Why a cluster cannot be started here, or None when it can."""
    if pg_tool("initdb") is None or pg_tool("pg_ctl") is None:
        return "PostgreSQL server tools (initdb, pg_ctl) are not installed"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no 'postgres' system user to run PostgreSQL"
        if shutil.which("runuser") is None:
            return "running as root but runuser is missing"
    return None


@dataclass
class PostgresCluster:
    folder: Path  # data/, sock/ and the server log live here
    port: int
    host: str = "127.0.0.1"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def socket_dir(self) -> Path:
        return self.folder / "sock"

    @property
    def log_path(self) -> Path:
        return self.folder / "postgres.log"

    def env(self) -> dict[str, str]:
        """Environment for libpq clients (psql, scripts): the unix socket, superuser."""
        return {
            **os.environ,
            "PGHOST": str(self.socket_dir),
            "PGPORT": str(self.port),
            "PGUSER": "postgres",
            "PGOPTIONS": "--client-min-messages=warning",
        }

    def dsn(self, database: str, user: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} dbname={database} user={user}"

    def run(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL client or tool as the cluster's system user; output captured,
        EmbeddedError with it when the command fails."""
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(  # noqa: PLW1510 - checked below, with the output in the error
            argv, env=self.env(), capture_output=True, text=True, **kwargs
        )  # type: ignore[call-overload]
        if done.returncode != 0:
            raise EmbeddedError(
                f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )
        return done  # type: ignore[no-any-return]

    def psql(self, database: str, sql: str, user: str = "postgres") -> str:
        """Run ``sql`` (stop at the first error); the unaligned, tuples-only output."""
        return self.run(
            ["psql", "-qXAt", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", database],
            input=sql,
        ).stdout

    def create_database(self, name: str, owner: str = "postgres") -> None:
        self.psql("postgres", f'CREATE DATABASE "{name}" OWNER "{owner}"')

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove the folder."""
        pg_ctl = pg_tool("pg_ctl")
        if pg_ctl is not None and (self.data / "postmaster.pid").exists():
            with contextlib.suppress(EmbeddedError):  # already gone: the folder goes anyway
                self.run([pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_postgres(folder: Path | None = None, *, port: int | None = None) -> PostgresCluster:
    """initdb into ``folder`` (created; it must not hold a cluster yet; default: a new
    folder in the system temp dir) and start the server on 127.0.0.1:``port`` (default:
    a free one) with its socket in the folder.  As root, the ``postgres`` user must be
    able to reach the folder: pytest's ``tmp_path`` (mode 700) is not such a place."""
    reason = unavailable()
    if reason is not None:
        raise EmbeddedError(reason)
    initdb, pg_ctl = pg_tool("initdb"), pg_tool("pg_ctl")
    assert initdb is not None and pg_ctl is not None
    folder = Path(tempfile.mkdtemp(prefix="davproxy-pg-")) if folder is None else folder.resolve()
    cluster = PostgresCluster(folder, port or free_port())
    folder.mkdir(parents=True, exist_ok=True)
    cluster.socket_dir.mkdir(exist_ok=True)
    # others may need the socket (a web server's PHP runs as its own user)
    folder.chmod(0o755)
    cluster.socket_dir.chmod(0o755)
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        for path in (folder, cluster.socket_dir):
            os.chown(path, account.pw_uid, account.pw_gid)
    try:
        cluster.run(
            [initdb, "-D", str(cluster.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
             "--locale=C.UTF-8", "--no-sync"]
        )  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={cluster.port} "
            f"-c unix_socket_directories='{cluster.socket_dir}' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        cluster.run(
            [pg_ctl, "-D", str(cluster.data), "-l", str(cluster.log_path), "-w", "-o", options,
             "start"]
        )  # fmt: skip
    except EmbeddedError:
        cluster.stop()
        raise
    return cluster
