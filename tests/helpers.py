"""Shared test helpers: real servers, davproxy configurations and HTTP comparison."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from yarl import URL

from davproxy import config as config_mod
from davproxy.ops.embedded import ServerProcess, free_port, start_davproxy
from davproxy.store import Store
from davproxy.upstream.identity import hash_password
from tests import pg

USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave@corp": "dave-pw"}

# Headers that legitimately differ between two answers to the same request.
VOLATILE_HEADERS = frozenset(
    {"date", "content-length", "transfer-encoding", "connection", "keep-alive"}
)


def basic(user: str, password: str | None = None) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password or USERS[user]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def write_htpasswd(path: Path, plain: bool = False, scheme: str = "sha512_crypt") -> Path:
    lines = [
        f"{user}:{password if plain else hash_password(password, scheme)}\n"
        for user, password in USERS.items()
    ]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def write_config(
    folder: Path,
    *,
    upstream_url: str,
    kind: str,
    mode: str,
    prefix: str = "/",
    port: int | None = None,
    htpasswd: Path | None = None,
    server_extra: str = "",
    mapping_extra: str = "",
    upstream_extra: str = "",
    name: str = "up",
    store: str | None = None,
) -> tuple[Path, int]:
    """A main file and one mapping file; returns (main file, port).  The store is a
    SQLite file, or a fresh PostgreSQL database in the PostgreSQL pass
    (``DAVPROXY_TEST_STORE``); ``store="sqlite"`` keeps it a file whatever the pass."""
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    identity = f'[identity]\nmode = "{mode}"\n'
    if htpasswd is not None:
        identity += f'htpasswd = "{htpasswd}"\n'
    users = "".join(
        f'\n[[users]]\nid = "{u}"\nemails = ["{u}@example.org"]\ndisplay_name = "{u.title()}"\n'
        for u in USERS
    )
    (folder / "mapping.toml").write_text(
        f'kind = "{kind}"\n{mapping_extra}\n{identity}{users}', encoding="utf-8"
    )
    main = folder / "davproxy.toml"
    postgres = pg.use_postgres() if store is None else store == "postgresql"
    where = f'url = "{pg.fresh_url()}"' if postgres else 'path = "store.sqlite3"'
    main.write_text(
        f"[server]\nport = {port}\n{server_extra}\n[store]\n{where}\n"
        '[logging]\nlevel = "info"\n\n'
        f'[[upstream]]\nname = "{name}"\nprefix = "{prefix}"\nurl = "{upstream_url}"\n'
        f'mapping = "mapping.toml"\n{upstream_extra}\n',
        encoding="utf-8",
    )
    return main, port


def open_store(main: Path) -> Store:
    """The store a davproxy configuration names (SQLite file or PostgreSQL database)."""
    store = config_mod.load(main).store
    return Store.open(store.location, store.reveal_password())


def start_proxy(folder: Path, **kwargs: object) -> ServerProcess:
    main, port = write_config(folder, **kwargs)  # type: ignore[arg-type]
    return start_davproxy(main, port=port)


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def comparable_headers(self) -> dict[str, list[str]]:
        return {k: v for k, v in self.headers.items() if k not in VOLATILE_HEADERS}


async def fetch(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    body: bytes | str | None = None,
) -> Answer:
    if isinstance(body, str):
        body = body.encode()
    # encoded=True: the path and query go out byte for byte as written in the test.
    async with session.request(
        method, URL(url, encoded=True), headers=headers or {}, data=body, allow_redirects=False
    ) as response:
        raw = await response.read()
        collected: dict[str, list[str]] = {}
        for key, value in response.headers.items():
            collected.setdefault(key.lower(), []).append(value)
        return Answer(response.status, response.reason or "", collected, raw)


@dataclass
class Endpoint:
    """One way to reach an upstream: its base URL and how alice authenticates."""

    base: str
    auth: dict[str, dict[str, str]] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return self.base.rstrip("/") + path

    def headers(self, user: str = "alice", extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**self.auth.get(user, {}), **(extra or {})}


def raw_session() -> aiohttp.ClientSession:
    """A client that shows bytes exactly as sent: no decompression, no cookies."""
    return aiohttp.ClientSession(
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=60),
    )
