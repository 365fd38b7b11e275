"""Real upstream servers as subprocesses: the demo's Radicale and the tests' upstreams.

Each server gets its own folder (configuration, data, log file); output goes to the
log file, never to an unread pipe, and a server that dies or does not open its port
in time is reported with the tail of its log.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


class EmbeddedError(RuntimeError):
    """An embedded server did not start; the message carries its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` ports in a row that are free now (``[monitoring]
    worker_port`` gives worker i the port P + i - 1)."""
    for _ in range(100):
        first = free_port(host)
        try:
            for port in range(first + 1, first + count):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind((host, port))
        except OSError:
            continue
        return first
    raise EmbeddedError(f"no {count} free ports in a row on {host}")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class ServerProcess:
    name: str
    process: subprocess.Popen[bytes]
    host: str
    port: int
    folder: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedError(
                    f"{self.name} exited with code {self.process.returncode} while starting;"
                    f" log {self.log_path}:\n{self.log_tail()}"
                )
            if port_open(self.host, self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedError(
            f"{self.name} did not open {self.host}:{self.port} within {timeout:.0f} s;"
            f" log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _spawn(name: str, argv: list[str], folder: Path, host: str, port: int) -> ServerProcess:
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"{name}.log"
    log_file = log_path.open("ab")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    try:
        process = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    finally:
        log_file.close()  # the child holds its own descriptor
    return ServerProcess(name, process, host, port, folder, log_path)


RadicaleAuth = Literal["x-remote-user", "htpasswd"]


def start_radicale(
    folder: Path,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    auth: RadicaleAuth = "x-remote-user",
    htpasswd: Path | None = None,
    rights: str = "owner_only",
    log_level: str = "warning",
    predefined_collections: str | None = None,
    sharing: bool = False,
    rights_file: Path | None = None,
    wait: bool = True,
) -> ServerProcess:
    """Start Radicale with ``[auth] delay = 0`` (it sleeps on every 401/403 otherwise).

    ``x-remote-user`` trusts the ``X-Remote-User`` header: only for an instance bound to
    loopback behind davproxy in ``proxy-auth`` mode.
    """
    folder = folder.resolve()
    port = port or free_port(host)
    lines = [
        "[server]",
        f"hosts = {host}:{port}",
        "[auth]",
        "delay = 0",
    ]
    if auth == "x-remote-user":
        lines.append("type = http_x_remote_user")
    else:
        if htpasswd is None:
            raise ValueError("htpasswd auth needs an htpasswd file")
        lines += [
            "type = htpasswd",
            f"htpasswd_filename = {htpasswd.resolve()}",
            "htpasswd_encryption = autodetect",
        ]
    lines += [
        "[rights]",
        f"type = {'from_file' if rights_file else rights}",
        *([f"file = {rights_file.resolve()}"] if rights_file else []),
        "[storage]",
        f"filesystem_folder = {folder / 'collections'}",
        *([f"predefined_collections = {predefined_collections}"] if predefined_collections else []),
        "[web]",
        "type = none",
        "[logging]",
        f"level = {log_level}",
        "",
    ]
    if sharing:  # Radicale's own map shares, for davproxy's radicale-native backend
        lines += [
            "[sharing]",
            "type = csv",
            f"database_path = {folder / 'sharing.csv'}",
            "collection_by_map = true",
            "permit_create_map = true",
            "",
        ]
    config_path = folder / "radicale.ini"
    folder.mkdir(parents=True, exist_ok=True)
    config_path.write_text("\n".join(lines), encoding="utf-8")
    argv = [sys.executable, "-m", "radicale", "--config", str(config_path)]
    server = _spawn("radicale", argv, folder, host, port)
    if wait:
        server.wait_ready()
    return server


def start_xandikos(
    folder: Path,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    route_prefix: str = "/",
    defaults: bool = True,
    single_user: str | None = None,
    wait: bool = True,
) -> ServerProcess:
    """Start Xandikos in multi-user mode, trusting ``X-Remote-User`` from loopback only.

    ``single_user`` runs ``xandikos serve`` for that one principal instead: no
    authentication at all (Xandikos checks passwords only over its own TLS).
    """
    folder = folder.resolve()
    port = port or free_port(host)
    mode = (
        ["serve", "--current-user-principal", f"/{single_user}/"]
        if single_user
        else ["multi-user", "--trust-x-remote-user-from", "127.0.0.1/32"]
    )
    argv = [
        sys.executable, "-m", "xandikos", *mode,
        "-d", str(folder / "data"),
        "--state-dir", str(folder / "state"),
        "-l", host, "-p", str(port),
        "--route-prefix", route_prefix,
        "--no-detect-systemd",
    ]  # fmt: skip
    if defaults:
        argv.append("--defaults")
    server = _spawn("xandikos", argv, folder, host, port)
    if wait:
        server.wait_ready()
    return server


def start_davproxy(config_path: Path, *, port: int, host: str = "127.0.0.1") -> ServerProcess:
    """Run ``davproxy serve`` as a real process (tests, benchmarks, examples)."""
    config_path = config_path.resolve()
    argv = [sys.executable, "-m", "davproxy", "serve", "--config", str(config_path)]
    server = _spawn("davproxy", argv, config_path.parent, host, port)
    server.wait_ready()
    return server
