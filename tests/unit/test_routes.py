"""The route table: which named route each representative request gets.

Real parts throughout: the example configuration, a Site wired as the server wires it,
a real SQLite store holding a share and a subscription; requests are aiohttp requests
without a connection (classification never reaches the upstream for these).  The
upstream is in upstream-basic mode, so the claimed user comes from the Basic header.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request

from davproxy import config
from davproxy.dav.paths import resolve_path
from davproxy.edge.routes import ROUTES, Place, classify, route_for
from davproxy.edge.sites import Site, build_site, feed_parts
from davproxy.store import Store
from davproxy.store.records import NewShare
from davproxy.upstream.client import Upstream
from davproxy.upstream.site import Context, Limits

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
SHARE = '<D:share-resource xmlns:D="DAV:"/>'
CS_SHARE = '<CS:share xmlns:CS="http://calendarserver.org/ns/"/>'
CS_REPLY = '<CS:invite-reply xmlns:CS="http://calendarserver.org/ns/"/>'
SUBSCRIBE = (
    '<D:mkcol xmlns:D="DAV:" xmlns:CS="http://calendarserver.org/ns/"><D:set><D:prop>'
    "<D:resourcetype><D:collection/><CS:subscribed/></D:resourcetype>"
    "<CS:source><D:href>https://feeds.example/f.ics</D:href></CS:source>"
    "</D:prop></D:set></D:mkcol>"
)


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:pw".encode()).decode()}


@pytest.fixture
async def site(tmp_path: Path) -> Site:
    for name in ("davproxy.example.toml", "radicale.mapping.example.toml"):
        shutil.copy(CONFIG_DIR / name, tmp_path / name)
    cfg = config.load(tmp_path / "davproxy.example.toml")
    store = Store.open(tmp_path / "s.sqlite3")
    async with aiohttp.ClientSession() as session:
        built = build_site(
            store, Upstream(cfg.upstreams[0], cfg.server, session), feed_parts(store, cfg)
        )
        with store.transaction():
            share, _ = store.share_upsert(
                NewShare(
                    upstream=built.upstream.name, owner="alice", collection="alice/work/",
                    kind="calendar", sharee="bob", sharee_href="mailto:bob@example.org",
                    access="read", status="noresponse", comment="", sharee_name="",
                )
            )  # fmt: skip
            store.share_set_status(share, "accepted", "bob/work-alice/", expect="noresponse")
        with built.subscriptions.feeds.transaction():
            source = built.subscriptions.feeds.source_ensure("https://feeds.example/f.ics")
            built.subscriptions.feeds.subscription_put(
                built.upstream.name, "bob", "bob/holidays/", "holidays", source.id
            )
        yield built
    store.close()


async def route_of(
    site: Site, method: str, path: str, headers: dict[str, str] | None = None, body: str = ""
) -> tuple[str, Place]:
    path = resolve_path(path)  # as dispatch does before classifying
    rest = site.upstream.paths.rest(path)
    assert rest is not None
    ctx = Context(request_of(method, path, headers or {}, body), site.upstream, site.auth,
                  Limits(1 << 20, ()), path, "", rest)  # fmt: skip
    facts = await classify(ctx, site)
    return route_for(ctx, site, facts).name, facts.place


def request_of(method: str, path: str, headers: dict[str, str], body: str) -> web.Request:
    """An aiohttp request whose body arrives as a connection would deliver it."""
    raw = body.encode()
    loop = asyncio.get_running_loop()
    payload = StreamReader(BaseProtocol(loop), 1 << 16, loop=loop)
    payload.feed_data(raw)
    payload.feed_eof()
    headers = {**headers, "Content-Length": str(len(raw))}
    return make_mocked_request(method, path, headers=headers, payload=payload if raw else None)


XML = {"Content-Type": "application/xml; charset=utf-8"}


@pytest.mark.parametrize(
    "method, path, headers, body, expected",
    [
        ("GET", "/.davproxy/feeds/team.ics", {}, "", ("feeds", Place.FEEDS)),
        ("GET", "/.davproxy/feeds", {}, "", ("feeds", Place.FEEDS)),
        ("PROPFIND", "/.davproxy/notifications/bob/", basic("bob"), "", ("notifications", Place.NOTIFICATIONS)),
        ("GET", "/.davproxy/whoami", basic("bob"), "", ("whoami", Place.WHOAMI)),
        ("PUT", "/.davproxy/whoami", basic("bob"), "", ("whoami", Place.WHOAMI)),
        ("GET", "/.davproxy/web/", {}, "", ("web", Place.WEB)),
        ("POST", "/.davproxy/web/share", basic("bob"), "csrf=x", ("web", Place.WEB)),
        ("GET", "/.davproxy/web", {}, "", ("web", Place.WEB)),
        ("GET", "/.davproxy/webcal", {}, "", ("own-unknown", Place.OWN_OTHER)),
        ("GET", "/.davproxy/other", {}, "", ("own-unknown", Place.OWN_OTHER)),
        ("OPTIONS", "/bob/", {}, "", ("passthrough", Place.ANONYMOUS)),
        ("PROPFIND", "/bob/work-alice/", basic("bob"), "", ("sharee", Place.COPY)),
        ("PUT", "/bob/work-alice/e.ics", basic("bob"), "", ("sharee", Place.COPY)),
        ("PROPFIND", "/alice/work/", basic("alice"), "", ("passthrough", Place.UPSTREAM)),
        ("PROPFIND", "/bob/holidays/", basic("bob"), "", ("subscription", Place.SUBSCRIPTION)),
        ("POST", "/bob/holidays/", {**basic("bob"), **XML}, CS_SHARE, ("subscription", Place.SUBSCRIPTION)),
        ("PUT", "/bob//work-alice//e.ics", basic("bob"), "", ("sharee", Place.COPY)),
        ("PROPFIND", "/bob/work-alice", basic("bob"), "", ("sharee", Place.COPY)),
        ("MKCOL", "/bob/feed/", {**basic("bob"), **XML}, SUBSCRIBE, ("subscribe", Place.UPSTREAM)),
        ("MKCOL", "/bob/plain/", {**basic("bob"), **XML}, '<D:mkcol xmlns:D="DAV:"/>', ("passthrough", Place.UPSTREAM)),
        ("POST", "/alice/work/", {**basic("alice"), **XML}, SHARE, ("share", Place.UPSTREAM)),
        ("POST", "/alice/work/", {**basic("alice"), **XML}, CS_SHARE, ("share", Place.UPSTREAM)),
        ("POST", "/bob/", {**basic("bob"), **XML}, CS_REPLY, ("reply", Place.UPSTREAM)),
        ("POST", "/bob/other/", {**basic("bob"), **XML}, CS_REPLY, ("passthrough", Place.UPSTREAM)),
        ("POST", "/alice/work/", {**basic("alice"), **XML}, "<not xml", ("passthrough", Place.UPSTREAM)),
        ("GET", "/alice/work/", basic("alice"), "", ("passthrough", Place.UPSTREAM)),
    ],
)  # fmt: skip
async def test_representative_requests(
    site: Site, method: str, path: str, headers: dict[str, str], body: str,
    expected: tuple[str, Place],
) -> None:  # fmt: skip
    assert await route_of(site, method, path, headers, body) == expected


async def test_unusable_xml_share_to_own_collection_gets_the_refusing_route(site: Site) -> None:
    """Same name as passthrough in the log, but the handler refuses (403 valid-request)."""
    request_headers = {**basic("alice"), **XML}
    raw = b"<not xml"
    request = make_mocked_request(
        "POST", "/alice/work/", headers={**request_headers, "Content-Length": str(len(raw))}
    )
    ctx = Context(
        request, site.upstream, site.auth, Limits(1 << 20, ()), "/alice/work/", "", "alice/work/"
    )
    ctx._body = raw
    facts = await classify(ctx, site)
    route = route_for(ctx, site, facts)
    assert route.handler.__name__ == "_unusable_share"


def test_every_place_has_a_catch_all_route() -> None:
    """The table cannot fall through: each place ends with a route that always matches."""
    for place in Place:
        last = [r for r in ROUTES if r.place is place][-1]
        assert last.methods is None and last.post_roots is None and last.when is None, place
