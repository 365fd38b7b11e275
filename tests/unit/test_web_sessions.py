"""The web page's sessions (a real store, a fake clock) and who the share form finds."""

from __future__ import annotations

import shutil
from pathlib import Path

import aiohttp
import pytest

from davproxy import config
from davproxy.store import Store
from davproxy.upstream.client import Upstream
from davproxy.upstream.directory import Directory
from davproxy.web import people
from davproxy.web.sessions import IDLE_SECONDS, MAX_SECONDS, PER_USER, WebSessions

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Store:
    opened = Store.open(tmp_path / "s.sqlite3")
    yield opened
    opened.close()


def test_the_store_keeps_a_hash_never_the_id_or_a_password(store: Store) -> None:
    sessions = WebSessions(store, "up")
    cookie, session = sessions.open("alice", "binding", "Basic secret")
    rows = store.execute("SELECT * FROM web_sessions").fetchall()
    assert len(rows) == 1
    flat = " ".join(str(value) for value in rows[0])
    assert cookie not in flat and "secret" not in flat and session.key in flat
    assert sessions.find(cookie) == session
    assert sessions.credentials(session) == "Basic secret"  # in memory only
    assert WebSessions(store, "up").credentials(session) is None  # another process
    assert sessions.find(cookie + "x") is None and sessions.find(None) is None
    assert WebSessions(store, "other-upstream").find(cookie) is None


def test_idle_and_absolute_expiry_logout_and_the_per_user_cap(store: Store) -> None:
    clock = Clock()
    sessions = WebSessions(store, "up", clock)
    cookie, _ = sessions.open("alice", "", None)
    clock.now += IDLE_SECONDS - 10
    assert sessions.find(cookie) is not None  # seen: the idle time starts again
    clock.now += IDLE_SECONDS - 10
    assert sessions.find(cookie) is not None
    clock.now += MAX_SECONDS  # past the absolute limit, however active
    assert sessions.find(cookie) is None
    cookie, session = sessions.open("alice", "", None)
    clock.now += IDLE_SECONDS + 1
    assert sessions.find(cookie) is None
    cookie, session = sessions.open("alice", "", None)
    sessions.end(session)
    assert sessions.find(cookie) is None
    cookies = []
    for _ in range(PER_USER + 2):  # a second apart: the oldest by time are the ones ended
        cookies.append(sessions.open("bob", "", None)[0])
        clock.now += 1
    assert sessions.find(cookies[0]) is None and sessions.find(cookies[-1]) is not None
    assert sessions.end_user("bob") == PER_USER


def test_flash_is_shown_once_and_csrf_compares_exactly(store: Store) -> None:
    sessions = WebSessions(store, "up")
    cookie, session = sessions.open("alice", "", None)
    sessions.flash(session, "ok", "Shared with Bob")
    session = sessions.find(cookie)
    assert session is not None and sessions.take_flash(session) == ("ok", "Shared with Bob")
    session = sessions.find(cookie)
    assert session is not None and sessions.take_flash(session) is None
    assert session.csrf_ok(session.csrf)
    assert not session.csrf_ok("") and not session.csrf_ok(session.csrf[:-1] + "x")


@pytest.fixture
async def upstream(tmp_path: Path) -> Upstream:
    for name in ("davproxy.example.toml", "radicale.mapping.example.toml"):
        shutil.copy(CONFIG_DIR / name, tmp_path / name)
    cfg = config.load(tmp_path / "davproxy.example.toml")
    async with aiohttp.ClientSession() as session:
        yield Upstream(cfg.upstreams[0], cfg.server, session)


async def test_people_are_found_by_id_address_label_or_unique_name(upstream: Upstream) -> None:
    directory = Directory(upstream.config, lambda: {"zed"})
    users = directory.users()
    assert "zed" in users and users == sorted(users)
    someone = next(u for u in upstream.config.users if u.emails and u.display_name)
    email, name = someone.emails[0], someone.display_name
    for typed in (someone.id, email, f"mailto:{email}", f"{name} <{email}>", name.upper()):
        found = people.resolve(directory, upstream, typed)
        assert found is not None and found.id == someone.id, typed
    assert people.sharee_href(upstream, found) == f"mailto:{email}"
    zed = people.resolve(directory, upstream, "zed")
    assert (
        zed is not None
        and people.sharee_href(upstream, zed) == upstream.user_paths("zed").principal
    )
    assert people.resolve(directory, upstream, "nobody@nowhere") is None
    assert people.resolve(directory, upstream, "  ") is None
    assert [p.id for p in people.suggest(directory, name[:3].lower(), "zed")] == [someone.id]
    assert people.suggest(directory, "zed", "zed") == []  # not oneself
    assert all(p.kind == "user" for p in people.candidates(directory))
