"""Which outcome each request gets: serve, passthrough (and later rewrite, augment).

Every request is first placed under one upstream by the longest matching public
prefix.  Below each prefix, the segment ``.davproxy/`` is davproxy's own namespace:
it cannot collide with a user's collections (user ids may not start with a dot) and
the upstream never sees requests for it.  Everything a route does not claim is
passthrough.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from aiohttp import web
from lxml import etree

from davproxy.dav import davxml
from davproxy.dav.errors import DavError, PlainError
from davproxy.dav.paths import PathRejected, canonical, check_path
from davproxy.edge import views
from davproxy.edge.monitoring import PATHS as MONITORING_PATHS
from davproxy.edge.monitoring import Monitor
from davproxy.edge.proxy import Forward, forward, public_origin, read_body
from davproxy.feeds.subscriptions import FEEDS_SEGMENT, Subscriptions
from davproxy.sharing.model import Sharing
from davproxy.sharing.notifications import (
    COLLECTION_SEGMENT,
    NEED_PRIVILEGES,
    NotificationCollection,
)
from davproxy.sharing.requests import CS_INVITE_REPLY, CS_SHARE, SHARE_RESOURCE, VALID_REQUEST
from davproxy.upstream.client import Upstream
from davproxy.upstream.identity import Authenticator, parse_basic

log = logging.getLogger("davproxy.routes")

# Per-request facts for the access log.
ROUTE = web.RequestKey("route", str)
USER = web.RequestKey("user", str)

OWN_SEGMENT = ".davproxy"
NOTIFICATIONS_PREFIX = f"{COLLECTION_SEGMENT}/"
FEEDS_PREFIX = f"{FEEDS_SEGMENT}/"
WELL_KNOWN = ("/.well-known/caldav", "/.well-known/carddav")
# Requests a client may make before it has credentials (service discovery, RFC 6764).
_ANONYMOUS_METHODS = frozenset({"OPTIONS"})


@dataclass(frozen=True, slots=True)
class Site:
    """One upstream with everything needed to route requests to it."""

    upstream: Upstream
    auth: Authenticator
    sharing: Sharing
    notifications: NotificationCollection
    subscriptions: Subscriptions


@dataclass(frozen=True, slots=True)
class Context:
    request: web.Request
    site: Site
    path: str  # public path, percent-encoded, no query
    query: str  # "?..." or ""
    rest: str  # path below the public prefix


Handler = Callable[[Context], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class OwnRoute:
    """A davproxy-served resource under ``<prefix>.davproxy/``."""

    name: str
    methods: frozenset[str]
    subpath: str  # below ".davproxy/"
    handler: Handler


class Router:
    def __init__(
        self, sites: list[Site], max_body: int, forwarded_allow_ips: tuple[str, ...]
    ) -> None:
        # Longest prefix first, so "/dav/team/" wins over "/dav/" and "/".
        self.sites = sorted(sites, key=lambda s: len(s.upstream.paths.public), reverse=True)
        self.default_site = sites[0]
        self.max_body = max_body
        self.allowed = forwarded_allow_ips
        self.monitor: Monitor | None = None  # set by the application once it has a store
        self.own_routes: list[OwnRoute] = [
            OwnRoute("whoami", frozenset({"GET", "HEAD"}), "whoami", self.whoami),
        ]

    def site_for(self, path: str) -> tuple[Site, str] | None:
        for site in self.sites:
            rest = site.upstream.paths.rest(path)
            if rest is not None:
                return site, rest
        return None

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = request.raw_path
        path, sep, query = raw.partition("?")
        query = sep + query
        which = MONITORING_PATHS.get(path)
        if which is not None and self.monitor is not None:
            request[ROUTE] = which
            return await self.monitor.answer(request, which, [s.upstream for s in self.sites])
        try:
            check_path(path)
            if "Destination" in request.headers:
                check_path(davxml.href_path(request.headers["Destination"]).partition("?")[0])
        except PathRejected as exc:
            request[ROUTE] = "rejected"
            raise PlainError(400, f"Path not accepted: {exc}") from None
        found = self.site_for(path)
        if found is None:
            if path in WELL_KNOWN:
                # RFC 6764 §5: point discovery at the context path of the first upstream.
                request[ROUTE] = "well-known"
                location = self.default_site.upstream.paths.public
                raise web.HTTPMovedPermanently(location)
            request[ROUTE] = "outside"
            raise PlainError(404, "No upstream is mapped at this path")
        site, rest = found
        ctx = Context(request, site, path, query, rest)
        own, _, subpath = rest.partition("/")
        if own == OWN_SEGMENT:
            return await self.serve_own(ctx, subpath)
        request[ROUTE] = "passthrough"
        return await self.passthrough(ctx)

    async def serve_own(self, ctx: Context, subpath: str) -> web.StreamResponse:
        if subpath == FEEDS_SEGMENT or subpath.startswith(FEEDS_PREFIX):
            ctx.request[ROUTE] = "feeds"
            if subpath == FEEDS_SEGMENT:
                raise web.HTTPMovedPermanently(ctx.path + "/")
            # public feeds need no credentials; credentials that are sent are checked
            user = await self.user_for(ctx) if "Authorization" in ctx.request.headers else None
            return await ctx.site.subscriptions.serve_configured(
                ctx.request, subpath[len(FEEDS_PREFIX) :], user, lambda: self.user_for(ctx)
            )
        if subpath.startswith(NOTIFICATIONS_PREFIX):
            ctx.request[ROUTE] = "notifications"
            user = await self.user_for(ctx)
            return await ctx.site.notifications.handle(
                ctx.request, user, subpath[len(NOTIFICATIONS_PREFIX) :], self.max_body
            )
        for route in self.own_routes:
            if route.subpath == subpath:
                ctx.request[ROUTE] = route.name
                if ctx.request.method not in route.methods:
                    raise PlainError(
                        405, "Method not allowed here", {"Allow": ", ".join(sorted(route.methods))}
                    )
                return await route.handler(ctx)
        ctx.request[ROUTE] = "own-unknown"
        raise PlainError(404, "No such davproxy resource")

    async def user_for(self, ctx: Context) -> str:
        user = await ctx.site.auth.require_user(ctx.request.headers.get("Authorization"))
        ctx.request[USER] = user
        return user

    async def identify(self, ctx: Context) -> tuple[str | None, bool]:
        """(user, verified).  proxy-auth verifies on every request that needs a user;
        upstream-basic takes the claimed user, for the upstream to judge, until davproxy
        must act on it itself (then ``user_for`` verifies)."""
        request, auth = ctx.request, ctx.site.auth
        if auth.proxy_auth:
            anonymous_ok = request.method in _ANONYMOUS_METHODS or ctx.path in WELL_KNOWN
            if "Authorization" in request.headers or not anonymous_ok:
                return await self.user_for(ctx), True
            return None, False
        credentials = parse_basic(request.headers.get("Authorization"))
        if credentials is None:
            return None, False
        request[USER] = credentials.user  # claimed; the upstream verifies it
        return credentials.user, False

    def spec(self, ctx: Context, rest: str, acting_user: str | None) -> Forward:
        """A forward of this request to ``rest`` at the upstream, acting as the client
        (``acting_user`` None) or as another user (shared copies)."""
        request, upstream = ctx.request, ctx.site.upstream
        config = upstream.config
        drop = {"x-script-name"} | trusted_header_copies(request, config.identity.trusted_header)
        path, set_headers = upstream.target(rest)
        if ctx.site.auth.proxy_auth:
            drop.add("authorization")
            user = acting_user or request.get(USER)
            if user is not None:
                set_headers[config.identity.trusted_header] = user
        elif acting_user is not None:
            drop.add("authorization")
            set_headers.update(ctx.site.sharing.as_user(acting_user))
        spec = Forward(
            upstream=upstream,
            path=path + ctx.query,
            set_headers=set_headers,
            drop_headers=frozenset(drop),
        )
        if config.href_mapping == "rewrite":
            origin = public_origin(request, self.allowed)
            spec = replace(
                spec,
                request_hrefs=upstream.paths.href_to_upstream,
                response_hrefs=lambda h: upstream.paths.href_to_public(h, upstream.origin, origin),
            )
        return spec

    async def passthrough(self, ctx: Context) -> web.StreamResponse:
        request, site = ctx.request, ctx.site
        user, verified = await self.identify(ctx)
        if user is None:
            return await forward(
                request, self.spec(ctx, ctx.rest, None), self.max_body, self.allowed
            )
        if site.sharing.native is not None and ctx.rest.startswith(_UPSTREAM_SHARING):
            # radicale-native: Radicale's map shares are davproxy's to manage; a client
            # writing them directly could plant maps in other users' namespaces.
            raise DavError(403, NEED_PRIVILEGES, "sharing is managed by davproxy here")
        if site.sharing.withdrawn(user, ctx.rest):
            raise DavError(403, NEED_PRIVILEGES, "this share has ended")
        found = site.sharing.mount_for(user, ctx.rest)
        if found is not None:
            if not verified:
                user = await self.user_for(ctx)
            request[ROUTE] = "sharee"
            return await views.sharee(self, ctx, user, *found)
        subscribed = site.subscriptions.mounted(user, ctx.rest)
        if subscribed is not None:
            if not verified:
                user = await self.user_for(ctx)
            request[ROUTE] = "subscription"
            return await site.subscriptions.serve_mounted(request, user, *subscribed)
        body: bytes | None = None
        if request.method in _COLLECTION_CREATORS and request.body_exists:
            body = await read_body(request, self.max_body)
            wanted = site.subscriptions.wants_subscription(body)
            if wanted is not None:
                request[ROUTE] = "subscribe"
                if not verified:
                    user = await self.user_for(ctx)
                return await site.subscriptions.create(
                    user, ctx.rest, *wanted, exists_upstream=lambda: self.exists_upstream(ctx)
                )
        if request.method == "POST" and davxml.is_xml_content_type(
            request.headers.get("Content-Type", "")
        ):
            body = await read_body(request, self.max_body)
            sharing_type = "davsharing+xml" in request.headers.get("Content-Type", "")
            root = davxml.parse(body) if sharing_type else _root_or_none(body)
            if root is None and site.sharing.owns_collection(user, ctx.rest):
                # an XML POST to one's own collection can only be a share request here
                raise DavError(403, VALID_REQUEST, "unusable XML in a share request")
            tag = root.tag if root is not None else None
            if tag in (SHARE_RESOURCE, CS_SHARE) or (
                tag == CS_INVITE_REPLY and canonical(_slash(ctx.rest)) in site.sharing.homes(user)
            ):
                request[ROUTE] = "share" if tag != CS_INVITE_REPLY else "reply"
                if not verified:
                    user = await self.user_for(ctx)
                assert root is not None
                if tag == CS_INVITE_REPLY:
                    return await site.sharing.reply_cs(request, user, root)
                return await site.sharing.share(request, user, ctx.rest, root)
            if sharing_type and root is not None:
                raise DavError(400, None, f"expected DAV:share-resource, got {root.tag}")
        spec = replace(self.spec(ctx, ctx.rest, None), body=body)
        return await views.own(self, ctx, user, spec)

    async def exists_upstream(self, ctx: Context) -> bool:
        """Whether the client already has something at its request path upstream."""
        spec = self.spec(ctx, ctx.rest, None)
        headers = {**spec.set_headers, "Depth": "0"}
        if not ctx.site.auth.proxy_auth and "Authorization" in ctx.request.headers:
            headers["Authorization"] = ctx.request.headers["Authorization"]
        async with ctx.site.upstream.request("PROPFIND", spec.path, headers) as answer:
            body = await answer.read()
            if answer.status != 207:
                return answer.status == 200
        try:  # Xandikos answers a missing path with a 404 inside a 207
            return davxml.response_status(davxml.parse(body)) != 404
        except davxml.XmlError:
            return True  # unsure: refuse rather than shadow something

    async def whoami(self, ctx: Context) -> web.StreamResponse:
        """Who davproxy takes the caller to be, and where their collections live."""
        user = await self.user_for(ctx)
        upstream = ctx.site.upstream
        paths = upstream.user_paths(user)
        body = {
            "user": user,
            "upstream": upstream.name,
            "identity_mode": upstream.config.identity.mode,
            "principal": paths.principal,
            "calendar_home": paths.calendar_home,
            "addressbook_home": paths.addressbook_home,
        }
        return web.json_response(body, dumps=lambda v: json.dumps(v, indent=2) + "\n")


_UPSTREAM_SHARING = (".sharing/", ".token/", ".sharing", ".token")
_COLLECTION_CREATORS = frozenset({"MKCOL", "MKCALENDAR"})


def _slash(rest: str) -> str:
    return rest if rest.endswith("/") else rest + "/"


def _root_or_none(body: bytes) -> etree._Element | None:
    try:
        return davxml.parse(body)
    except davxml.XmlError:
        return None  # not ours to judge: the upstream answers its own POSTs


def trusted_header_copies(request: web.Request, trusted_header: str) -> set[str]:
    """Every client-sent spelling of the trusted identity header (``X_Remote_User`` too)."""

    def norm(name: str) -> str:
        return name.lower().replace("_", "-")

    wanted = norm(trusted_header)
    return {name.lower() for name in request.headers if norm(name) == wanted}
