"""The command line as an operator meets it: one-line errors, clean start and stop."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from davproxy.ops.embedded import free_port, port_open
from tests.helpers import write_config

LAYOUT = (
    '[layout]\nprincipal = "{user}/"\ncalendar_home = "{user}/"\naddressbook_home = "{user}/"\n'
)


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "davproxy", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def config(tmp_path: Path, **kwargs: object) -> Path:
    kwargs.setdefault("upstream_url", f"http://127.0.0.1:{free_port()}/")
    kwargs.setdefault("kind", "radicale")
    kwargs.setdefault("mode", "upstream-basic")
    main, _ = write_config(tmp_path, **kwargs)  # type: ignore[arg-type]
    return main


def wait_listening(process: subprocess.Popen[str], port: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not port_open("127.0.0.1", port):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"nothing listens on {port}"
        time.sleep(0.05)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda t: t.replace("port = ", "port = 99999 #"), "[server] port: must be between 0 and 65535"),
        (lambda t: t.replace('url = "http://', 'url = "ftp://'), "[upstream[0]] url: must be an http:// or https:// URL"),
        (lambda t: t.replace('url = "http://127.0.0.1:', 'url = "http://127.0.0.1:notaport'), "[upstream[0]] url:"),
        (lambda t: t.replace("[store]", "[store]\npaht = 1"), "[store] paht: unknown key"),
        (lambda t: t.replace('mapping = "mapping.toml"', 'mapping = "missing.toml"'), "[upstream[0]] mapping: file not found"),
        (lambda t: t + "\n[[upstream", "invalid TOML"),
    ],
)  # fmt: skip
def test_bad_main_config_is_one_clear_line(tmp_path: Path, mutate, expected: str) -> None:
    main = config(tmp_path)
    main.write_text(mutate(main.read_text()))
    for command in ("serve", "check-config"):
        result = run_cli(command, "--config", str(main))
        assert result.returncode == 2
        line = one_line_error(result)
        assert line.startswith("davproxy: configuration error: ") and str(main.name) in line
        assert expected in line


@pytest.mark.parametrize(
    ("mapping_extra", "expected"),
    [
        ('kind = "generic"\n', "[layout] principal: is required"),
        ('[access]\nservice_password = "hunter2"\n', "[access] service_password: inline secrets are refused"),
        ('[access]\nservice_password_env = "DAVPROXY_NO_SUCH_VAR"\n', "environment variable DAVPROXY_NO_SUCH_VAR is not set"),
        ('href_mapping = "sideways"\n', "href_mapping: must be one of auto, none, script-name, rewrite"),
    ],
)  # fmt: skip
def test_bad_mapping_file_names_file_table_and_key(
    tmp_path: Path, mapping_extra: str, expected: str
) -> None:
    main = config(tmp_path)
    mapping = tmp_path / "mapping.toml"
    text = mapping.read_text()
    if mapping_extra.startswith("kind"):
        text = text.replace('kind = "radicale"', "")
    # Top-level keys go first; a [table] goes last so it does not swallow them.
    mapping.write_text(
        text + "\n" + mapping_extra if mapping_extra.startswith("[") else mapping_extra + text
    )
    result = run_cli("check-config", "--config", str(main))
    assert result.returncode == 2
    line = one_line_error(result)
    assert "mapping.toml" in line and expected in line


def test_proxy_auth_without_htpasswd_is_refused(tmp_path: Path) -> None:
    main = config(tmp_path, mode="proxy-auth")
    result = run_cli("check-config", "--config", str(main))
    assert result.returncode == 2
    assert "[identity] htpasswd: is required when mode = 'proxy-auth'" in one_line_error(result)


def test_check_config_masks_secrets(tmp_path: Path) -> None:
    secret_file = tmp_path / "service.pw"
    secret_file.write_text("s3cret-value\n")
    main = config(
        tmp_path,
        mapping_extra=f'[access]\nservice_user = "svc"\nservice_password_file = "{secret_file}"\n',
    )
    result = run_cli("check-config", "--config", str(main))
    assert result.returncode == 0, result.stderr
    assert "s3cret-value" not in result.stdout + result.stderr
    effective = json.loads(result.stdout)
    assert effective["upstreams"][0]["access"]["service_password"] == "***"
    assert effective["upstreams"][0]["layout"]["calendar_home"] == "{user}/"
    assert effective["server"]["max_body_bytes"] == 10 * 1024 * 1024


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        main = config(tmp_path, port=port)
        result = run_cli("serve", "--config", str(main))
    assert result.returncode == 1
    line = one_line_error(
        result.__class__(result.args, result.returncode, "", _errors_only(result.stderr))
    )
    assert f"cannot listen on 127.0.0.1:{port}" in line


def _errors_only(stderr: str) -> str:
    """Drop INFO log lines; keep what the operator must read."""
    return "\n".join(line for line in stderr.splitlines() if " INFO " not in line)


def test_sigterm_stops_gracefully(tmp_path: Path) -> None:
    main = config(tmp_path, store="sqlite")
    port = int(main.read_text().split("port = ")[1].split("\n")[0])
    process = subprocess.Popen(
        [sys.executable, "-m", "davproxy", "serve", "--config", str(main)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_listening(process, port)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert "shutting down" in stderr and "stopped" in stderr
    assert (tmp_path / "store.sqlite3").exists()


async def test_upstream_basic_verifies_against_real_radicale(radicale_basic_pair) -> None:
    """upstream-basic: davproxy's own resources open only to credentials Radicale accepts."""
    from tests.helpers import basic, fetch, raw_session

    whoami = radicale_basic_pair.proxy.url("/.davproxy/whoami")
    async with raw_session() as session:
        good = await fetch(session, "GET", whoami, basic("alice"))
        wrong = await fetch(session, "GET", whoami, basic("alice", "nope"))
        unknown = await fetch(session, "GET", whoami, basic("mallory", "x"))
        missing = await fetch(session, "GET", whoami)
        # Passthrough with a wrong password: Radicale's own challenge, unchanged.
        upstream_says = await fetch(
            session, "PROPFIND", radicale_basic_pair.proxy.url("/alice/"), basic("alice", "nope")
        )
    assert good.status == 200 and json.loads(good.body)["principal"] == "/alice/"
    assert wrong.status == unknown.status == missing.status == 401
    assert upstream_says.status == 401
    assert upstream_says.header("WWW-Authenticate") == 'Basic realm="Radicale - Password Required"'


def test_logs_never_carry_credentials(radicale_pair) -> None:
    """After the fidelity runs, the davproxy log holds no password or Authorization."""
    import asyncio

    from tests.helpers import USERS, basic, fetch, raw_session

    async def traffic() -> None:
        async with raw_session() as session:
            await fetch(session, "PROPFIND", radicale_pair.proxy.url("/alice/"), basic("alice"))
            await fetch(
                session, "PROPFIND", radicale_pair.proxy.url("/alice/"), basic("bob", "guess-pw")
            )

    asyncio.run(traffic())
    text = radicale_pair.davproxy.log_path.read_text()
    assert "route=passthrough user=alice status=207" in text
    for secret in [*USERS.values(), "guess-pw", basic("alice")["Authorization"].split()[1]]:
        assert secret not in text


def test_demo_serves_radicale_with_demo_users(tmp_path: Path) -> None:
    """`davproxy demo`: Radicale starts behind davproxy, logins printed, Ctrl-C stops both."""
    port = free_port()
    data = tmp_path / "demo"
    process = subprocess.Popen(
        [sys.executable, "-m", "davproxy", "demo", "--data", str(data), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_listening(process, port)
        logins = json.loads((data / "logins.json").read_text())
        assert set(logins) == {"alice", "bob", "carol"}

        async def check() -> tuple[int, bytes, int, bytes]:
            from tests.helpers import basic, fetch, raw_session

            async with raw_session() as session:
                url = f"http://127.0.0.1:{port}/alice/"
                listing = await fetch(
                    session, "PROPFIND", url, {**basic("alice", logins["alice"]), "Depth": "1"}
                )
                wrong = await fetch(session, "GET", url, basic("alice", "wrong"))
                feed = b""
                for _ in range(50):  # the scheduler fetches the sample feed at start-up
                    answer = await fetch(
                        session, "GET", f"http://127.0.0.1:{port}/.davproxy/feeds/team.ics",
                        basic("bob", logins["bob"]),
                    )  # fmt: skip
                    feed = answer.body
                    if b"BEGIN:VEVENT" in feed:
                        break
                    await asyncio.sleep(0.1)
                return listing.status, listing.body, wrong.status, feed

        import asyncio

        status, body, wrong_status, feed = asyncio.run(check())
        assert feed.count(b"BEGIN:VEVENT") == 4 and b"RRULE:FREQ=WEEKLY" in feed
        assert status == 207
        assert b"/alice/calendar/" in body and b"/alice/contacts/" in body
        assert wrong_status == 401
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert f"http://127.0.0.1:{port}/" in stdout
    assert f"alice / {logins['alice']}" in stdout
    assert f"http://127.0.0.1:{port}/.davproxy/feeds/team/" in stdout
    radicale_log = (data / "radicale" / "radicale.log").read_text()
    assert "CRITICAL" not in radicale_log and "Traceback" not in radicale_log


def test_unusable_store_is_one_clear_line(tmp_path: Path) -> None:
    main = config(tmp_path, store="sqlite")
    (tmp_path / "store.sqlite3").write_bytes(b"definitely not a database" * 50)
    result = run_cli("serve", "--config", str(main))
    assert result.returncode == 1
    line = one_line_error(result.__class__(result.args, 1, "", _errors_only(result.stderr)))
    assert line.startswith("davproxy: ") and "store.sqlite3" in line
    assert (tmp_path / "store.sqlite3").read_bytes().startswith(b"definitely")  # left as it was


def test_unreachable_postgresql_is_one_clear_line(tmp_path: Path) -> None:
    """A PostgreSQL store that cannot be reached: one line naming it (never its password)
    and a non-zero exit, from serve and admin alike."""
    (tmp_path / "store.pw").write_text("s3cret-pw\n")
    main = config(tmp_path, store="sqlite")
    main.write_text(
        main.read_text().replace(
            'path = "store.sqlite3"',
            f'url = "postgresql://davproxy@127.0.0.1:{free_port()}/davproxy"\n'
            'password_file = "store.pw"',
        )
    )
    for argv in (("serve", "--config", str(main)), ("admin", "-c", str(main), "check")):
        result = run_cli(*argv)
        assert result.returncode != 0
        line = one_line_error(result.__class__(result.args, 1, "", _errors_only(result.stderr)))
        assert line.startswith("davproxy: cannot open store postgresql://davproxy@127.0.0.1:")
        assert "s3cret" not in result.stderr + result.stdout


def test_version_is_the_package_version() -> None:
    from importlib.metadata import version

    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"davproxy {version('davproxy')}"
