"""Real upstreams (Radicale 3.9, Xandikos) and real davproxy processes, per test session."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from davproxy.ops import davical
from davproxy.ops.embedded import ServerProcess, start_radicale, start_xandikos
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


# How the tests reach an upstream directly: as the trusted proxy would.
TRUSTED = {user: {"X-Remote-User": user} for user in USERS}


def _pair(
    flavour: str,
    folder: Path,
    upstream: ServerProcess,
    direct_auth: dict[str, dict[str, str]],
    homes: tuple[str, str],
    upstream_url: str | None = None,
    **proxy_options: object,
) -> Iterator[Pair]:
    url = upstream_url or upstream.url  # DAViCal: below /caldav.php/
    with start_proxy(folder / "davproxy", upstream_url=url, **proxy_options) as proxy:
        yield Pair(
            flavour,
            Endpoint(url, direct_auth),
            Endpoint(proxy.url, {user: basic(user) for user in USERS}),
            *homes,
            upstream,
            proxy,
        )


@pytest.fixture(scope="session")
def radicale_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Radicale trusting X-Remote-User, davproxy in proxy-auth mode in front."""
    folder = tmp_path_factory.mktemp("radicale-trusted")
    with start_radicale(folder / "radicale", auth="x-remote-user") as upstream:
        yield from _pair(
            "radicale", folder, upstream, TRUSTED, ("/alice/", "/alice/"),
            kind="radicale", mode="proxy-auth", htpasswd=write_htpasswd(folder / "users.htpasswd"),
        )  # fmt: skip


@pytest.fixture(scope="session")
def radicale_basic_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Radicale checking its own htpasswd, davproxy in upstream-basic mode in front."""
    folder = tmp_path_factory.mktemp("radicale-basic")
    htpasswd = write_htpasswd(folder / "radicale-users", plain=True)
    with start_radicale(folder / "radicale", auth="htpasswd", htpasswd=htpasswd) as upstream:
        yield from _pair(
            "radicale-basic", folder, upstream, {u: basic(u) for u in USERS},
            ("/alice/", "/alice/"), kind="radicale", mode="upstream-basic",
        )  # fmt: skip


@pytest.fixture(scope="session")
def xandikos_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Xandikos multi-user trusting X-Remote-User from loopback, davproxy proxy-auth."""
    folder = tmp_path_factory.mktemp("xandikos")
    with start_xandikos(folder / "xandikos") as upstream:
        yield from _pair(
            "xandikos", folder, upstream, TRUSTED, ("/alice/calendars/", "/alice/contacts/"),
            kind="xandikos", mode="proxy-auth",
            htpasswd=write_htpasswd(folder / "users.htpasswd", scheme="bcrypt"),
        )  # fmt: skip


@pytest.fixture(scope="session")
def radicale_native_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Radicale with its own sharing API, davproxy's radicale-native access backend."""
    folder = tmp_path_factory.mktemp("radicale-native")
    with start_radicale(folder / "radicale", auth="x-remote-user", sharing=True) as upstream:
        yield from _pair(
            "radicale-native", folder, upstream, TRUSTED, ("/alice/", "/alice/"),
            kind="radicale", mode="proxy-auth", htpasswd=write_htpasswd(folder / "users.htpasswd"),
            mapping_extra='[access]\nbackend = "radicale-native"\n',
        )  # fmt: skip


# Radicale rights for upstream-basic with a service account: everyone owns their own
# tree, and the account davproxy uses for shared copies may act on every collection.
SERVICE_RIGHTS = """
[service]
user: davproxy-service
collection: .*
permissions: RWrw
[root]
user: .+
collection:
permissions: R
[principal]
user: .+
collection: {user}
permissions: RW
[collections]
user: .+
collection: {user}/[^/]+
permissions: rw
"""


@pytest.fixture(scope="session")
def radicale_service_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Radicale checking passwords itself; davproxy upstream-basic with a service account."""
    folder = tmp_path_factory.mktemp("radicale-service")
    htpasswd = write_htpasswd(folder / "radicale-users", plain=True)
    with htpasswd.open("a") as users:
        users.write("davproxy-service:service-secret\n")
    (folder / "service.pw").write_text("service-secret\n")
    (folder / "rights").write_text(SERVICE_RIGHTS)
    with start_radicale(
        folder / "radicale", auth="htpasswd", htpasswd=htpasswd, rights_file=folder / "rights"
    ) as upstream:
        yield from _pair(
            "radicale-service", folder, upstream, {u: basic(u) for u in USERS},
            ("/alice/", "/alice/"), kind="radicale", mode="upstream-basic",
            mapping_extra=(
                '[access]\nservice_user = "davproxy-service"\n'
                f'service_password_file = "{folder / "service.pw"}"\n'
            ),
        )  # fmt: skip


@pytest.fixture(scope="session")
def davical_server() -> Iterator[davical.DavicalServer]:
    """One DAViCal (Debian's package: PostgreSQL + Apache/mod_php, started here on
    loopback) with the test users; skipped, saying why, where it cannot run."""
    reason = davical.unavailable()
    if reason is not None:
        pytest.skip(reason)
    with davical.start_davical(USERS, admin_password=DAVICAL_ADMIN_PASSWORD) as server:
        yield server


DAVICAL_ADMIN_PASSWORD = "admin-pw"


@pytest.fixture(scope="session")
def davical_pair(
    tmp_path_factory: pytest.TempPathFactory, davical_server: davical.DavicalServer
) -> Iterator[Pair]:
    """DAViCal trusting X-Remote-User; davproxy proxy-auth, proxy-enforced shares."""
    folder = tmp_path_factory.mktemp("davical")
    server = davical_server
    yield from _pair(
        "davical", folder, server.apache, TRUSTED, ("/alice/", "/alice/"),
        kind="davical", mode="proxy-auth", upstream_url=server.trusted_url,
        htpasswd=write_htpasswd(folder / "users.htpasswd"),
    )  # fmt: skip


@pytest.fixture(scope="session")
def davical_acl_pair(
    tmp_path_factory: pytest.TempPathFactory, davical_server: davical.DavicalServer
) -> Iterator[Pair]:
    """DAViCal checking its own passwords; davproxy upstream-basic with DAViCal's admin
    as service account, shares enforced by DAViCal's ACL (the acl backend)."""
    folder = tmp_path_factory.mktemp("davical-acl")
    (folder / "service.pw").write_text(DAVICAL_ADMIN_PASSWORD + "\n")
    server = davical_server
    yield from _pair(
        "davical-acl", folder, server.apache, {u: basic(u) for u in USERS},
        ("/alice/", "/alice/"), kind="davical", mode="upstream-basic",
        upstream_url=server.url,
        mapping_extra=(
            '[access]\nbackend = "acl"\nservice_user = "admin"\n'
            f'service_password_file = "{folder / "service.pw"}"\n'
        ),
    )  # fmt: skip


@pytest.fixture(params=["radicale", "xandikos"])
def pair(request: pytest.FixtureRequest) -> Pair:
    return request.getfixturevalue(f"{request.param}_pair")


@pytest.fixture(
    params=[
        "radicale", "xandikos", "radicale_native", "radicale_service", "davical", "davical_acl"
    ]
)  # fmt: skip
def sharing_pair(request: pytest.FixtureRequest) -> Pair:
    """Every access backend and identity mode: proxy-enforced (proxy-auth) on both
    upstreams, Radicale-native, upstream-basic with a service account, and DAViCal
    proxy-enforced (proxy-auth) and acl (upstream-basic, DAViCal's own passwords)."""
    return request.getfixturevalue(f"{request.param}_pair")
