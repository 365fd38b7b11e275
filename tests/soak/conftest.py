"""The long-running suite (``make soak``): a real Radicale and davproxy processes on
loopback, driven for minutes.  Every test here is marked ``soak``; ``make test``
leaves them out."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from davproxy.ops.embedded import ServerProcess, start_davproxy, start_radicale
from tests.helpers import USERS, write_config, write_htpasswd

HOST = "127.0.0.1"  # everything here listens on and talks to loopback only


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: long-running reliability checks (make soak)")


def auth(user: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@dataclass
class Site:
    """One Radicale (trusting X-Remote-User) and the davproxy configuration in front."""

    folder: Path
    radicale: ServerProcess
    config: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def store(self) -> Path:
        return self.config.parent / "store.sqlite3"

    def start(self) -> ServerProcess:
        return start_davproxy(self.config, port=self.port, host=HOST)

    async def start_async(self) -> ServerProcess:
        return await asyncio.to_thread(self.start)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with start_radicale(tmp_path / "radicale", host=HOST, auth="x-remote-user") as radicale:
        config, port = write_config(
            tmp_path / "davproxy",
            upstream_url=radicale.url,
            kind="radicale",
            mode="proxy-auth",
            htpasswd=write_htpasswd(tmp_path / "users.htpasswd"),
        )
        yield Site(tmp_path, radicale, config, port)


def session(
    limit: int = 100, timeout: float = 30.0, trace: aiohttp.TraceConfig | None = None
) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=timeout),
        trace_configs=[trace] if trace is not None else None,
    )


MKCOL_BOOK = (
    '<D:mkcol xmlns:D="DAV:" xmlns:CR="urn:ietf:params:xml:ns:carddav"><D:set><D:prop>'
    "<D:resourcetype><D:collection/><CR:addressbook/></D:resourcetype>"
    "<D:displayname>{name}</D:displayname></D:prop></D:set></D:mkcol>"
)


def event(uid: str, summary: str = "Soak") -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//soak//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:{uid}\r\nDTSTAMP:20261101T090000Z\r\nDTSTART:20261124T100000Z\r\n"
        f"DURATION:PT1H\r\nSUMMARY:{summary}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
