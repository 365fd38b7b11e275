"""examples/postgresql-fleet works as its README says: two davproxy instances of two
workers each on its davproxy.toml (addresses and ports swapped), one PostgreSQL with
the `davproxy` user and database, the Radicale of examples/radicale-proxy-auth."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from contextlib import ExitStack
from pathlib import Path

import psycopg
import pytest

from davproxy.ops.embedded import free_port, free_ports, start_davproxy
from tests import pg
from tests.helpers import Endpoint, raw_session

from .conftest import Pair
from .test_examples import EXAMPLES, DemoClient, copy_example, start_upstream
from .test_sharing import SHARING, absent, accept_latest, event, propfind, share_body

PASSWORD = "change-me-store-password"


def _database() -> str:
    """The README's set-up: a `davproxy` user owning a `davproxy_...` database."""
    server = pg.cluster()
    name = f"davproxy_fleet_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.dsn("postgres"), autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = 'davproxy'").fetchone()
        if exists is None:  # roles are the cluster's; this test may run twice in one
            admin.execute(f"CREATE ROLE davproxy LOGIN PASSWORD '{PASSWORD}'")
        admin.execute(f'CREATE DATABASE "{name}" OWNER davproxy')
    return f"postgresql://davproxy@127.0.0.1:{server.port}/{name}"


async def test_two_hosts_one_postgresql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    radicale_port = free_port()
    radicale = copy_example(
        "radicale-proxy-auth", tmp_path, {"127.0.0.1:5232": f"127.0.0.1:{radicale_port}"}, None
    )
    url = _database()
    hosts = []
    for letter in "ab":
        port, monitoring = free_port(), free_ports(2)
        folder = copy_example(
            "postgresql-fleet", tmp_path / letter,
            {
                "port = 8080": f"port = {port}",
                '"0.0.0.0"': '"127.0.0.1"',
                "postgresql://davproxy@db.internal:5432/davproxy": url,
                "http://radicale.internal:5232/": f"http://127.0.0.1:{radicale_port}/",
                "worker_port = 9100": f"worker_port = {monitoring}",
                "../radicale-proxy-auth/": f"{radicale}/",
            },
            None,
        )  # fmt: skip
        assert (folder / "store.password").read_text().strip() == PASSWORD
        hosts.append((folder, port))
    with ExitStack() as stack:
        upstream = stack.enter_context(
            start_upstream("radicale-proxy-auth", radicale, radicale_port, monkeypatch)
        )
        proxies = [
            stack.enter_context(start_davproxy(folder / "davproxy.toml", port=port))
            for folder, port in hosts
        ]
        a, b = (
            Pair(
                "fleet",
                Endpoint(upstream.url),
                Endpoint(proxy.url),
                "/alice/",
                "/alice/",
                upstream,
                proxy,
            )  # fmt: skip
            for proxy in proxies
        )
        cal = f"/alice/team-{uuid.uuid4().hex[:6]}/"
        async with raw_session() as session:
            alice_a, alice_b = DemoClient(session, a, "alice"), DemoClient(session, b, "alice")
            bob_a, bob_b = DemoClient(session, a, "bob"), DemoClient(session, b, "bob")
            assert (
                await bob_b("PROPFIND", "/bob/", propfind("D:displayname"), Depth="0")
            ).status == 207
            assert (await alice_a("MKCALENDAR", cal)).status == 201
            shared = await alice_a(
                "POST", cal, share_body(("mailto:bob@example.org", "read-write")), **SHARING
            )
            assert shared.status == 204, shared.body
            copy = await accept_latest(bob_b)  # the invitation, seen and answered on host b
            put = await bob_a(
                "PUT", copy + "x.ics", event("x", "Bob's"), Content_Type="text/calendar"
            )
            assert put.status == 201, put.body
            seen = await alice_b("GET", cal + "x.ics")
            assert seen.status == 200 and b"SUMMARY:Bob's" in seen.body
            revoked = await alice_a(
                "POST", cal, share_body(("mailto:bob@example.org", "no-access")), **SHARING
            )
            assert revoked.status == 204, revoked.body
            for _ in range(4):  # whichever worker of host b answers
                assert absent(await bob_b("GET", copy + "x.ics"))
        for proxy in proxies:
            log = proxy.log_tail(400)
            assert "Traceback" not in log, log


@pytest.mark.skipif(not shutil.which("nginx"), reason="no nginx")
def test_nginx_accepts_the_load_balancer(tmp_path: Path) -> None:
    site = (EXAMPLES / "postgresql-fleet" / "nginx-lb.conf").read_text(encoding="utf-8")
    (tmp_path / "site.conf").write_text(site.replace("listen 80;", "listen 127.0.0.1:8;"))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{ access_log off; include {tmp_path}/site.conf; }}\n",
        encoding="utf-8",
    )
    checked = subprocess.run(
        ["nginx", "-t", "-c", str(tmp_path / "nginx.conf")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr


def test_the_example_reads_as_a_valid_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    from davproxy.__main__ import main as davproxy_cli

    main = EXAMPLES / "postgresql-fleet" / "davproxy.toml"
    assert davproxy_cli(["check-config", "--config", str(main)]) == 0  # connects to nothing
    assert "configuration OK" in capsys.readouterr().err
    readme = (EXAMPLES / "postgresql-fleet" / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# ") and "production" in readme
