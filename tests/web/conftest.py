"""The sharing web page against real parts: Radicale, davproxy (proxy-auth), a feed origin.

One set per test session, shared by the plain-HTTP tests and the browser tests; each
test uses its own collections (or users) so they do not depend on each other's order.
Hostile values are planted on purpose: a user whose display name is markup, a
calendar whose display name is markup, and the feed origin serves a feed whose title
is markup.  ``WebClient`` is a plain HTTP client that logs in through the form and
sends the page's forms with the session's CSRF token, as a browser would.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from davproxy.ops.embedded import ServerProcess, start_radicale
from tests.feed_origin import Origin, calendar, event
from tests.helpers import USERS, basic, fetch, start_proxy, write_htpasswd

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
HOSTILE_NAME = '<img src=x onerror="window.__xss=1">Mallory'
HOSTILE_CALENDAR = '<svg onload="window.__xss=2">Work</svg>'
HOSTILE_FEED = "<script>window.__xss=3</script>Team feed"
MAPPING_EXTRA = f'[[users]]\nid = "mallory"\nemails = ["mallory@example.org"]\ndisplay_name = \'{HOSTILE_NAME}\'\n'


@dataclass
class WebSite:
    radicale: ServerProcess
    proxy: ServerProcess
    origin: Origin

    def url(self, path: str) -> str:
        return self.proxy.url.rstrip("/") + path

    @property
    def page(self) -> str:
        return self.url("/.davproxy/web/")

    async def dav(self, user: str, method: str, path: str, body: str = "", **headers: str):  # type: ignore[no-untyped-def]
        async with aiohttp.ClientSession() as session:
            extra = {k.replace("_", "-"): v for k, v in headers.items()}
            if body:
                extra.setdefault("Content-Type", "application/xml; charset=utf-8")
            return await fetch(
                session, method, self.url(path), {**basic(user), **extra}, body or None
            )

    async def displaynames(self, user: str, home: str | None = None) -> list[str]:
        """What a DAV client sees in the user's home: the display names listed."""
        answer = await self.dav(
            user, "PROPFIND", home or f"/{user}/",
            '<D:propfind xmlns:D="DAV:"><D:prop><D:displayname/></D:prop></D:propfind>',
            Depth="1",
        )  # fmt: skip
        assert answer.status == 207, answer.body
        return re.findall(r"<[A-Za-z0-9]*:?displayname>([^<]*)<", answer.body.decode())


def _mkcalendar(name: str) -> str:
    return (
        '<C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav"><D:set><D:prop>'
        f"<D:displayname>{name}</D:displayname></D:prop></D:set></C:mkcalendar>"
    )


async def _prepare(site: WebSite) -> None:
    """Every user gets a calendar; alice also a hostile-named one and an address book."""
    from xml.sax.saxutils import escape

    for user in ("alice", "bob", "carol"):
        hello = await site.dav(user, "PROPFIND", f"/{user}/", Depth="0")
        assert hello.status == 207, hello.body
        made = await site.dav(user, "MKCALENDAR", f"/{user}/calendar/", _mkcalendar("Calendar"))
        assert made.status == 201, made.body
    made = await site.dav(
        "alice", "MKCALENDAR", "/alice/work/", _mkcalendar(escape(HOSTILE_CALENDAR))
    )
    assert made.status == 201, made.body
    book = (
        '<D:mkcol xmlns:D="DAV:" xmlns:R="urn:ietf:params:xml:ns:carddav"><D:set><D:prop>'
        "<D:resourcetype><D:collection/><R:addressbook/></D:resourcetype>"
        "<D:displayname>Contacts</D:displayname></D:prop></D:set></D:mkcol>"
    )
    made = await site.dav("alice", "MKCOL", "/alice/contacts/", book)
    assert made.status == 201, made.body


@pytest.fixture(scope="session")
def web_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebSite]:
    folder = tmp_path_factory.mktemp("web")
    origin = Origin()
    origin.serve("/team.ics", calendar(event("a@t", "Planning"), name=HOSTILE_FEED))
    origin.serve("/holidays.ics", calendar(event("h@t", "Holiday"), name="Holidays"))
    with (
        origin.running(),
        start_radicale(folder / "radicale", auth="x-remote-user") as radicale,
        start_proxy(
            folder / "davproxy", upstream_url=radicale.url, kind="radicale", mode="proxy-auth",
            htpasswd=write_htpasswd(folder / "users.htpasswd"), mapping_extra=MAPPING_EXTRA,
            server_extra='[feeds]\nallow_networks = ["127.0.0.1/32"]\n',
        ) as proxy,
    ):  # fmt: skip
        site = WebSite(radicale, proxy, origin)
        asyncio.run(_prepare(site))
        yield site


class WebClient:
    """A browser without the browser: cookies, the form's CSRF token, no redirects."""

    def __init__(self, site: WebSite) -> None:
        self.site = site
        self.session = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=60)
        )
        self.csrf = ""
        self.last = ""

    async def close(self) -> None:
        await self.session.close()

    async def get(self, page: str = "", **headers: str) -> tuple[int, str, dict[str, str]]:
        async with self.session.get(
            self.site.page + page, headers=headers, allow_redirects=False
        ) as r:
            text = await r.text()
            found = re.search(r'name="csrf" value="([^"]+)"', text)
            if found:
                self.csrf = found.group(1)
            self.last = text
            return r.status, text, dict(r.headers)

    async def post(
        self, action: str, fields: dict[str, str], csrf: str | None = None, **headers: str
    ) -> tuple[int, str, dict[str, str]]:
        data = {"csrf": self.csrf if csrf is None else csrf, **fields}
        async with self.session.post(
            self.site.page + action, data=data, headers=headers, allow_redirects=False
        ) as r:
            return r.status, await r.text(), dict(r.headers)

    async def login(self, user: str, password: str | None = None) -> int:
        await self.get("login")
        status, _, _ = await self.post("login", {"user": user, "password": password or USERS[user]})
        if status == 303:
            await self.get("")
        return status

    async def follow(self, answer: tuple[int, str, dict[str, str]]) -> str:
        """The page a 303 leads to (a refused action is shown at once, with its reason)."""
        status, text, headers = answer
        if status != 303:
            return text
        location = headers["Location"]
        async with self.session.get(self.site.url(location), allow_redirects=False) as r:
            body = await r.text()
            self.last = body
            return body


@pytest.fixture
async def client_for(web_site: WebSite):  # type: ignore[no-untyped-def]
    made: list[WebClient] = []

    async def make(user: str | None = None) -> WebClient:
        client = WebClient(web_site)
        made.append(client)
        if user is not None:
            assert await client.login(user) == 303
        return client

    yield make
    for client in made:
        await client.close()
