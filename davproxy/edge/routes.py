"""Which handler answers each request: one ordered table of named routes.

Every request is first placed under one upstream by the longest matching public
prefix.  Below each prefix, the segment ``.davproxy/`` is davproxy's own namespace: it
cannot collide with a user's collections (user ids may not start with a dot) and the
upstream never sees requests for it.  Everything else is *classified* once (what the
path is to the caller: a shared copy, a subscription, a path the access backend
reserves, ...), then ``ROUTES`` is read top to bottom and the first route whose place,
method, POST body root element and condition match answers.  The last route of the
upstream space is passthrough: what no route claims goes to the upstream unchanged.

A route names what identity it needs: ``none`` (no one is asked), ``optional`` (checked
when sent), ``claimed`` (who the client says it is; proxy-auth checks it, upstream-basic
leaves it to the upstream) or ``verified`` (davproxy checks the credentials itself).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

from aiohttp import web
from lxml import etree

from davproxy.dav import davxml
from davproxy.dav.errors import NEED_PRIVILEGES, DavError, PlainError
from davproxy.dav.paths import PathRejected, canonical, resolve_href, resolve_path, slash
from davproxy.edge import augment
from davproxy.edge.monitoring import PATHS as MONITORING_PATHS
from davproxy.edge.monitoring import Monitor
from davproxy.edge.sites import Site
from davproxy.feeds.store import Subscription
from davproxy.feeds.subscriptions import FEEDS_SEGMENT
from davproxy.sharing import copies
from davproxy.sharing.groups import GROUPS_SEGMENT
from davproxy.sharing.notifications import COLLECTION_SEGMENT
from davproxy.sharing.principals import SEARCH_REPORTS, Principals
from davproxy.sharing.requests import CS_INVITE_REPLY, CS_SHARE, SHARE_RESOURCE, VALID_REQUEST
from davproxy.store.records import Share
from davproxy.upstream.site import WELL_KNOWN, Context, Limits
from davproxy.web import pages
from davproxy.web.pages import WEB_SEGMENT

log = logging.getLogger("davproxy.routes")

# The route that answered, for the access log and metrics.
ROUTE = web.RequestKey("route", str)
OWN_SEGMENT = ".davproxy"


class Place(Enum):
    """What a path is, to davproxy and to the caller."""

    FEEDS = "<prefix>.davproxy/feeds/…"
    NOTIFICATIONS = "<prefix>.davproxy/notifications/<user>/…"
    WHOAMI = "<prefix>.davproxy/whoami"
    GROUPS = "<prefix>.davproxy/groups/… (group principals)"
    WEB = "<prefix>.davproxy/web/… (the sharing web page)"
    OWN_OTHER = "any other <prefix>.davproxy/ path"
    ANONYMOUS = "upstream path, no user (discovery, or upstream-basic without credentials)"
    RESERVED = "upstream path the access backend reserves (Radicale's .sharing/, .token/)"
    WITHDRAWN = "under the caller's copy of an ended share the upstream may still serve"
    COPY = "the caller's copy of someone else's collection, or inside it"
    ENDED = "where a copy of the caller's was, after its share ended"
    SUBSCRIPTION = "the caller's subscription in their calendar home, or inside it"
    FOREIGN = "another user's principal or homes (or a Destination there), not a share"
    UPSTREAM = "any other upstream path"


# The root element of an XML POST body that does not parse.
UNUSABLE_XML = "unusable XML"


@dataclass(slots=True)
class Facts:
    """What classification found out about one request."""

    place: Place
    user: str | None = None
    share: Share | None = None
    subscription: Subscription | None = None
    below: str = ""  # below the copy, subscription or .davproxy/<segment>; an ended copy
    post_root: str | None = None  # root tag of an XML POST (or search REPORT) body
    sharing_type: bool = False  # Content-Type application/davsharing+xml
    wanted_subscription: tuple[str, dict[str, str]] | None = None  # MKCOL/MKCALENDAR


Handler = Callable[[Context, Site, Facts], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # in the access log and metrics
    place: Place
    handler: Handler
    methods: frozenset[str] | None = None  # None: every method
    post_roots: frozenset[str] | None = None  # None: any body
    when: Callable[[Context, Site, Facts], bool] | None = None
    user: str = "claimed"  # none | optional | claimed | verified

    def matches(self, ctx: Context, site: Site, facts: Facts) -> bool:
        if self.place is not facts.place:
            return False
        if self.methods is not None and ctx.method not in self.methods:
            return False
        if self.post_roots is not None and facts.post_root not in self.post_roots:
            return False
        return self.when is None or self.when(ctx, site, facts)


# -- handlers ---------------------------------------------------------------------------


async def _feeds(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    if facts.below == "":  # <prefix>.davproxy/feeds without its slash
        raise web.HTTPMovedPermanently(ctx.path + "/")
    # public feeds need no credentials; credentials that are sent are checked
    user = await ctx.verified_user() if "Authorization" in ctx.request.headers else None
    return await site.subscriptions.serve_configured(
        ctx.request, facts.below[1:], user, ctx.verified_user
    )


async def _notifications(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    assert facts.user is not None
    return await site.notifications.handle(
        ctx.request, facts.user, facts.below, ctx.limits.max_body
    )


async def _whoami(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    """Who davproxy takes the caller to be, and where their collections live."""
    assert facts.user is not None
    upstream = ctx.upstream
    paths = upstream.user_paths(facts.user)
    body = {
        "user": facts.user,
        "upstream": upstream.name,
        "identity_mode": upstream.config.identity.mode,
        "principal": paths.principal,
        "calendar_home": paths.calendar_home,
        "addressbook_home": paths.addressbook_home,
    }
    return web.json_response(body, dumps=lambda v: json.dumps(v, indent=2) + "\n")


async def _whoami_method(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    raise PlainError(405, "Method not allowed here", {"Allow": "GET, HEAD"})


async def _web(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    """The sharing web page: its own login and sessions (web/pages.py)."""
    return await pages.serve(ctx, site, facts.below)


async def _own_unknown(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    raise PlainError(404, "No such davproxy resource")


async def _passthrough(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    return await ctx.forward()


async def _reserved(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    raise DavError(403, NEED_PRIVILEGES, "sharing is managed by davproxy here")


async def _withdrawn(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    raise DavError(403, NEED_PRIVILEGES, "this share has ended")


async def _foreign(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    raise DavError(403, NEED_PRIVILEGES, "this is another user's space")


async def _ended(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    raise DavError(404, None, "this shared copy has ended")


async def _replace_ended(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    """The sharee makes something of their own where an ended copy was: from now on the
    path is theirs again, and the request is routed as any other."""
    with site.sharing.store.transaction():
        site.sharing.store.ended_copy_clear(site.upstream.name, facts.below)
    return await answer(ctx, site, await classify(ctx, site))


async def _sharee(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    assert facts.share is not None
    return await copies.serve(ctx, site.sharing, facts.share, facts.below)


async def _subscription(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    assert facts.user is not None and facts.subscription is not None
    return await site.subscriptions.serve_mounted(
        ctx.request, facts.user, facts.subscription, facts.below
    )


async def _subscribe(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    assert facts.user is not None and facts.wanted_subscription is not None
    return await site.subscriptions.create(
        facts.user, ctx.rest, *facts.wanted_subscription, exists_upstream=ctx.exists_upstream
    )


async def _share(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    assert facts.user is not None
    root = davxml.parse(await ctx.body())
    return await site.sharing.share(ctx.request, facts.user, ctx.rest, root)


async def _reply(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    assert facts.user is not None
    root = davxml.parse(await ctx.body())
    return await site.sharing.reply_cs(ctx.request, facts.user, root)


async def _unusable_share(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    raise DavError(403, VALID_REQUEST, "unusable XML in a share request")


async def _not_a_share(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    raise DavError(400, None, f"expected DAV:share-resource, got {facts.post_root}")


def _principals(site: Site) -> Principals:
    return Principals(site.sharing.directory, site.upstream, site.sharing.groups)


async def _groups(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    body = await ctx.body()
    return await _principals(site).serve(ctx.request, facts.below, body)


async def _principal_search(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    """A principal search anywhere in the upstream's space: answered from davproxy's
    directory (the upstreams have none, digest groups.md §2.3)."""
    return _principals(site).report(ctx.request, await ctx.body())


async def _own(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    assert facts.user is not None
    return await augment.serve(ctx, site, facts.user)


# -- conditions -------------------------------------------------------------------------


def _at_home(ctx: Context, site: Site, facts: Facts) -> bool:
    """A CS:invite-reply goes to the sharee's home (caldav-sharing §5.3.3)."""
    assert facts.user is not None
    return canonical(slash(ctx.rest)) in site.sharing.homes(facts.user)


def _owns_collection(ctx: Context, site: Site, facts: Facts) -> bool:
    """An XML POST to one's own collection can only be a share request here."""
    assert facts.user is not None
    return site.sharing.owns_collection(facts.user, ctx.rest)


def _at_ended_copy(ctx: Context, site: Site, facts: Facts) -> bool:
    return canonical(slash(ctx.rest)) == facts.below


def _sharing_type(ctx: Context, site: Site, facts: Facts) -> bool:
    return facts.sharing_type


def _subscribing(ctx: Context, site: Site, facts: Facts) -> bool:
    return facts.wanted_subscription is not None


_GET = frozenset({"GET", "HEAD"})
_POST = frozenset({"POST"})
_CREATORS = frozenset({"MKCOL", "MKCALENDAR"})
_SHARES = frozenset({SHARE_RESOURCE, CS_SHARE})
_REPLIES = frozenset({CS_INVITE_REPLY})
_REPORT = frozenset({"REPORT"})
_UNUSABLE = frozenset({UNUSABLE_XML})

# Read top to bottom: the first match answers.  (name, place, handler, methods,
# POST body roots, condition, identity)
ROUTES: tuple[Route, ...] = (
    # davproxy's own namespace
    Route("feeds", Place.FEEDS, _feeds, user="optional"),
    Route("notifications", Place.NOTIFICATIONS, _notifications, user="verified"),
    Route("whoami", Place.WHOAMI, _whoami, _GET, user="verified"),
    Route("whoami", Place.WHOAMI, _whoami_method, user="none"),
    Route("web", Place.WEB, _web, user="none"),  # its own login form and session cookie
    Route("groups", Place.GROUPS, _groups, user="verified"),
    Route("own-unknown", Place.OWN_OTHER, _own_unknown, user="none"),
    # the upstream's space
    Route("passthrough", Place.ANONYMOUS, _passthrough, user="none"),
    Route("passthrough", Place.RESERVED, _reserved),
    Route("passthrough", Place.WITHDRAWN, _withdrawn),
    Route("sharee", Place.COPY, _sharee, user="verified"),
    Route("ended", Place.ENDED, _replace_ended, _CREATORS, None, _at_ended_copy, "verified"),
    Route("ended", Place.ENDED, _ended, user="verified"),
    Route("subscription", Place.SUBSCRIPTION, _subscription, user="verified"),
    Route("foreign", Place.FOREIGN, _foreign, user="verified"),
    Route("subscribe", Place.UPSTREAM, _subscribe, _CREATORS, None, _subscribing, "verified"),
    Route("share", Place.UPSTREAM, _share, _POST, _SHARES, None, "verified"),
    Route("reply", Place.UPSTREAM, _reply, _POST, _REPLIES, _at_home, "verified"),
    Route(
        "principal-search",
        Place.UPSTREAM,
        _principal_search,
        _REPORT,
        SEARCH_REPORTS,
        None,
        "verified",
    ),  # fmt: skip
    Route("passthrough", Place.UPSTREAM, _unusable_share, _POST, _UNUSABLE, _owns_collection),
    Route("passthrough", Place.UPSTREAM, _not_a_share, _POST, None, _sharing_type),
    Route("passthrough", Place.UPSTREAM, _own),
)


# -- classification ----------------------------------------------------------------------


async def classify(ctx: Context, site: Site) -> Facts:
    """What the request's path is to davproxy and to the caller, found out once."""
    own, _, subpath = ctx.rest.partition("/")
    if own == OWN_SEGMENT:
        return _classify_own(subpath)
    user = await ctx.claimed_user()
    if user is None:
        return Facts(Place.ANONYMOUS)
    facts = place_of(site, user, ctx.rest, ctx.destination)
    if facts.place is not Place.UPSTREAM:
        return facts
    request = ctx.request
    if request.method in _CREATORS and request.body_exists:
        facts.wanted_subscription = site.subscriptions.wants_subscription(await ctx.body())
    elif request.method == "POST" and davxml.is_xml_content_type(
        request.headers.get("Content-Type", "")
    ):
        facts.sharing_type = "davsharing+xml" in request.headers.get("Content-Type", "")
        facts.post_root = _root_tag(await ctx.body(), strict=facts.sharing_type)
    elif request.method == "REPORT" and request.body_exists:
        body = await ctx.body()  # read by the XML gate anyway; parsed only if a search
        if b"principal-search" in body or b"principal-property-search" in body:
            facts.post_root = _root_tag(body, strict=False)
    return facts


def place_of(site: Site, user: str, rest: str, destination: str | None) -> Facts:
    """Where a known user's request path lies, as far as the path, the Destination and
    the store tell (no body read): every request of a user is placed here, the edge's
    fast lane (``edge/fastlane.py``) included."""
    access = site.sharing.access
    if access.reserved(rest):
        return Facts(Place.RESERVED, user)
    if access.withdrawn(user, rest):
        return Facts(Place.WITHDRAWN, user)
    found = site.sharing.mount_for(user, rest)
    if found is not None:
        return Facts(Place.COPY, user, share=found[0], below=found[1])
    ended = site.sharing.store.ended_copy(site.upstream.name, user, canonical(rest))
    if ended is not None:
        return Facts(Place.ENDED, user, below=ended)  # below: where the copy was
    subscribed = site.subscriptions.mounted(user, rest)
    if subscribed is not None:
        return Facts(Place.SUBSCRIPTION, user, subscription=subscribed[0], below=subscribed[1])
    if _foreign_space(site, user, rest, destination):
        return Facts(Place.FOREIGN, user)
    return Facts(Place.UPSTREAM, user)


def _foreign_space(site: Site, user: str, rest: str, destination: str | None) -> bool:
    """Whether the request reaches into another user's space (``[access] foreign_homes``):
    its path, or the Destination of a MOVE/COPY."""
    upstream = site.upstream
    if upstream.config.access.foreign_homes != "refuse":
        return False
    rests = [rest]
    if destination is not None:
        destination = davxml.href_path(destination).partition("?")[0]
        rests.append(upstream.rest_of(destination) or "")
    owners = {upstream.home_owner(rest) for rest in rests}
    return bool(owners - {None, user})


def _classify_own(subpath: str) -> Facts:
    if subpath == FEEDS_SEGMENT or subpath.startswith(FEEDS_SEGMENT + "/"):
        return Facts(Place.FEEDS, below=subpath[len(FEEDS_SEGMENT) :])  # "" or "/…"
    if subpath.startswith(COLLECTION_SEGMENT + "/"):
        return Facts(Place.NOTIFICATIONS, below=subpath[len(COLLECTION_SEGMENT) + 1 :])
    if subpath == "whoami":
        return Facts(Place.WHOAMI)
    if subpath == GROUPS_SEGMENT or subpath.startswith(GROUPS_SEGMENT + "/"):
        return Facts(Place.GROUPS, below=subpath[len(GROUPS_SEGMENT) :])  # "" or "/…"
    if subpath == WEB_SEGMENT or subpath.startswith(WEB_SEGMENT + "/"):
        return Facts(Place.WEB, below=subpath[len(WEB_SEGMENT) :])  # "" or "/…"
    return Facts(Place.OWN_OTHER)


def _root_tag(body: bytes, strict: bool) -> str:
    """The body's root element; a sharing media type must parse (else 400), any other
    XML POST is the upstream's to judge."""
    try:
        root: etree._Element = davxml.parse(body)
    except davxml.XmlError:
        if strict:
            raise
        return UNUSABLE_XML
    return str(root.tag)


def route_for(ctx: Context, site: Site, facts: Facts) -> Route:
    for route in ROUTES:
        if route.matches(ctx, site, facts):
            return route
    raise AssertionError(f"no route for {facts.place}")  # the table ends with catch-alls


# -- dispatch ----------------------------------------------------------------------------


class Router:
    def __init__(self, sites: list[Site], limits: Limits) -> None:
        # Longest prefix first, so "/dav/team/" wins over "/dav/" and "/".
        self.sites = sorted(sites, key=lambda s: len(s.upstream.paths.public), reverse=True)
        self.default_site = sites[0]
        self.limits = limits
        self.monitor: Monitor | None = None  # set by the application once it has a store

    def site_for(self, path: str) -> tuple[Site, str] | None:
        for site in self.sites:
            rest = site.upstream.paths.rest(path)
            if rest is not None:
                return site, rest
        return None

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path, sep, query = request.raw_path.partition("?")
        which = MONITORING_PATHS.get(path)
        if which is not None and self.monitor is not None:
            request[ROUTE] = which
            return await self.monitor.answer(request, which, [s.upstream for s in self.sites])
        try:
            # routed, checked and forwarded in the form the upstream resolves it to
            path = resolve_path(path)
            destination = request.headers.get("Destination")
            if destination is not None:
                destination = resolve_href(destination)
        except PathRejected as exc:
            request[ROUTE] = "rejected"
            raise PlainError(400, f"Path not accepted: {exc}") from None
        found = self.site_for(path)
        if found is None:
            if path in WELL_KNOWN:
                # RFC 6764 §5: point discovery at the context path of the first upstream.
                request[ROUTE] = "well-known"
                raise web.HTTPMovedPermanently(self.default_site.upstream.paths.public)
            request[ROUTE] = "outside"
            raise PlainError(404, "No upstream is mapped at this path")
        site, rest = found
        await site.sharing.store.changes_noticed()  # another process's commit applies now
        ctx = Context(request, site.upstream, site.auth, self.limits, path, sep + query, rest)
        ctx.destination = destination
        request[ROUTE] = "passthrough"  # until a route is chosen
        return await answer(ctx, site, await classify(ctx, site))


async def answer(ctx: Context, site: Site, facts: Facts) -> web.StreamResponse:
    """The first matching route answers, with the identity it needs."""
    route = route_for(ctx, site, facts)
    ctx.request[ROUTE] = route.name
    if route.user == "verified":
        facts.user = await ctx.verified_user()
    return await route.handler(ctx, site, facts)
