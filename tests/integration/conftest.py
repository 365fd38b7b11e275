"""Real upstreams (Radicale 3.9, Xandikos) and real davproxy processes, per test session."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from davproxy.embedded import ServerProcess, start_radicale, start_xandikos
from tests.helpers import USERS, Endpoint, basic, start_proxy, write_htpasswd


@dataclass
class Pair:
    """An upstream reached directly and through davproxy, with alice's homes."""

    flavour: str
    direct: Endpoint
    proxy: Endpoint
    calendar_home: str
    addressbook_home: str
    upstream: ServerProcess
    davproxy: ServerProcess


def _trusted_headers() -> dict[str, dict[str, str]]:
    return {user: {"X-Remote-User": user} for user in USERS}


def _basic_headers() -> dict[str, dict[str, str]]:
    return {user: basic(user) for user in USERS}


@pytest.fixture(scope="session")
def radicale_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Radicale trusting X-Remote-User, davproxy in proxy-auth mode in front."""
    folder = tmp_path_factory.mktemp("radicale-trusted")
    with start_radicale(folder / "radicale", auth="x-remote-user") as upstream:
        htpasswd = write_htpasswd(folder / "users.htpasswd")
        with start_proxy(
            folder / "davproxy",
            upstream_url=upstream.url,
            kind="radicale",
            mode="proxy-auth",
            htpasswd=htpasswd,
        ) as proxy:
            yield Pair(
                "radicale",
                Endpoint(upstream.url, _trusted_headers()),
                Endpoint(proxy.url, _basic_headers()),
                "/alice/",
                "/alice/",
                upstream,
                proxy,
            )


@pytest.fixture(scope="session")
def radicale_basic_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Radicale checking its own htpasswd, davproxy in upstream-basic mode in front."""
    folder = tmp_path_factory.mktemp("radicale-basic")
    htpasswd = write_htpasswd(folder / "radicale-users", plain=True)
    with start_radicale(folder / "radicale", auth="htpasswd", htpasswd=htpasswd) as upstream:
        with start_proxy(
            folder / "davproxy",
            upstream_url=upstream.url,
            kind="radicale",
            mode="upstream-basic",
        ) as proxy:
            yield Pair(
                "radicale-basic",
                Endpoint(upstream.url, _basic_headers()),
                Endpoint(proxy.url, _basic_headers()),
                "/alice/",
                "/alice/",
                upstream,
                proxy,
            )


@pytest.fixture(scope="session")
def xandikos_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Xandikos multi-user trusting X-Remote-User from loopback, davproxy proxy-auth."""
    folder = tmp_path_factory.mktemp("xandikos")
    with start_xandikos(folder / "xandikos") as upstream:
        htpasswd = write_htpasswd(folder / "users.htpasswd", scheme="bcrypt")
        with start_proxy(
            folder / "davproxy",
            upstream_url=upstream.url,
            kind="xandikos",
            mode="proxy-auth",
            htpasswd=htpasswd,
        ) as proxy:
            yield Pair(
                "xandikos",
                Endpoint(upstream.url, _trusted_headers()),
                Endpoint(proxy.url, _basic_headers()),
                "/alice/calendars/",
                "/alice/contacts/",
                upstream,
                proxy,
            )


@pytest.fixture(params=["radicale", "xandikos"])
def pair(request: pytest.FixtureRequest) -> Pair:
    return request.getfixturevalue(f"{request.param}_pair")
