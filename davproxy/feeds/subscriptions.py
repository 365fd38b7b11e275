"""Where feeds appear and who may read them.

Three kinds of feed, one mechanism (a source in feed_store, served by feed_views):

- operator feeds from the mapping file, at ``<prefix>.davproxy/feeds/<name>/`` (the CalDAV
  collection) and ``<prefix>.davproxy/feeds/<name>.ics`` (the whole feed), readable by the
  listed users, or by anyone when ``public``;
- subscriptions users create in their calendar home the Apple/sabre way (extended MKCOL
  with resourcetype ``CS:subscribed`` and ``CS:source``, or MKCALENDAR carrying
  ``CS:source``): davproxy keeps them, fetches the source and serves them as syncable
  calendars at that path, listed in the home like any other calendar;
- the upstream's own calendars exported as ``.ics`` (GET on the collection): davproxy adds
  ``Link`` headers and answers enhanced GET from a snapshot it diffs on each request.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from lxml import etree

from davproxy.config import FeedConfig, FeedsConfig, feed_url
from davproxy.dav import davxml
from davproxy.dav.davxml import CALDAV, CS, DAV, ICAL, PropRequest, element, href
from davproxy.dav.errors import NEED_PRIVILEGES, DavError, PlainError
from davproxy.dav.http import multistatus_response, read_body
from davproxy.dav.paths import canonical, quote_segment, slash
from davproxy.feeds.fetch import Fetcher, OriginRefused
from davproxy.feeds.refresh import UPSTREAM_SOURCE, Bounds, Refresher
from davproxy.feeds.store import FeedStore, Subscription
from davproxy.feeds.views import DAV_HEADER, FeedServer, FeedView, links, read_only
from davproxy.upstream.client import Upstream
from davproxy.upstream.proxy import Forward, end_to_end
from davproxy.upstream.site import Context

# Validators and sizes of the client's request that do not apply to the export davproxy
# fetches for it (its answer to the client is built afresh).
_NOT_FOR_EXPORTS = frozenset(
    {"content-length", "accept-encoding", "if-none-match", "if-modified-since", "if-match"}
)
log = logging.getLogger("davproxy.subscriptions")

FEEDS_SEGMENT = "feeds"
OWN_FEEDS = f".davproxy/{FEEDS_SEGMENT}/"
SUBSCRIBED = f"{{{CS}}}subscribed"
SOURCE = f"{{{CS}}}source"
VALID_SOURCE = f"{{{CS}}}valid-source"  # davproxy's precondition: a source it can fetch
QUOTA = f"{{{DAV}}}quota-not-exceeded"  # RFC 4331 §6
DISPLAYNAME = f"{{{DAV}}}displayname"
COLOR = f"{{{ICAL}}}calendar-color"
ORDER = f"{{{ICAL}}}calendar-order"
DESCRIPTION = f"{{{CALDAV}}}calendar-description"
#: properties a user may set on their own subscription (stored by davproxy)
SETTABLE = (DISPLAYNAME, COLOR, ORDER, DESCRIPTION, SOURCE)
_SUBSCRIPTION_CREATORS = frozenset({"MKCOL", "MKCALENDAR"})

RequireUser = Callable[[], Awaitable[str]]


def feed_bounds(feed: FeedConfig, settings: FeedsConfig) -> Bounds:
    """A feed's own bounds win; a per-feed ceiling below the global floor lowers the floor."""
    ceiling = feed.refresh_ceiling
    floor = feed.refresh_floor or min(settings.refresh_floor, ceiling or settings.refresh_floor)
    return Bounds(floor, max(floor, ceiling or settings.refresh_ceiling))


class Subscriptions:
    def __init__(
        self,
        feeds: FeedStore,
        server: FeedServer,
        refresher: Refresher,
        fetcher: Fetcher,
        upstream: Upstream,
        settings: FeedsConfig,
    ) -> None:
        self.feeds = feeds
        self.server = server
        self.refresher = refresher
        self.fetcher = fetcher
        self.upstream = upstream
        self.settings = settings
        self.configured: dict[str, FeedConfig] = {f.name: f for f in upstream.config.feeds}

    # -- operator feeds ---------------------------------------------------------------------

    def note_bounds(self) -> None:
        """This process's refresher learns the operator feeds' refresh bounds."""
        for feed in self.configured.values():
            self.refresher.bounds[feed.url] = feed_bounds(feed, self.settings)

    def sync_configured(self) -> None:
        """Make the store's operator feeds match the mapping file (at start-up)."""
        name = self.upstream.name
        self.note_bounds()
        with self.feeds.transaction():
            for feed in self.configured.values():
                source = self.feeds.source_ensure(feed.url)
                self.feeds.subscription_put(
                    name, "", f"{OWN_FEEDS}{feed.name}/", feed.name, source.id
                )
            for sub in self.feeds.subscriptions_of(name, ""):
                if sub.name not in self.configured:
                    self.feeds.subscription_delete(name, sub.path)
                    log.info("feed %s is no longer configured: removed", sub.name)
            self.feeds.drop_unused_sources()

    def may_read(self, feed: FeedConfig, user: str | None) -> bool:
        if feed.public:
            return True
        return user is not None and ("*" in feed.users or user in feed.users)

    def _principal(self, user: str | None) -> str | None:
        return self.upstream.user_paths(user).principal if user else None

    def configured_view(self, feed: FeedConfig, user: str | None) -> FeedView | None:
        sub = self.feeds.subscription_at(self.upstream.name, f"{OWN_FEEDS}{feed.name}/")
        source = self.feeds.source(sub.source_id) if sub else None
        if source is None:
            return None
        own = self.upstream.paths.public + OWN_FEEDS
        meta = source.meta_data
        return FeedView(
            source=source,
            base=f"{own}{quote_segment(feed.name)}/",
            feed_path=f"{own}{quote_segment(feed.name)}.ics",
            displayname=feed.display_name or meta.get("name") or feed.name,
            color=feed.color or meta.get("color") or "",
            public=feed.public,
            user_principal=self._principal(user),
        )

    async def serve_configured(
        self, request: web.Request, subpath: str, user: str | None, require_user: RequireUser
    ) -> web.StreamResponse:
        """``subpath`` is below ``<prefix>.davproxy/feeds/``."""
        if subpath == "":
            return await self._feeds_parent(request, user, require_user)
        first, slash, member = subpath.partition("/")
        name = unquote(first)
        as_ics = not slash and name.endswith(".ics")
        feed = self.configured.get(name.removesuffix(".ics") if as_ics else name)
        if feed is None:
            raise DavError(404, None, "no such feed")
        if not self.may_read(feed, user):
            if user is None:
                user = await require_user()
            if not self.may_read(feed, user):
                raise DavError(403, NEED_PRIVILEGES, "this feed is not shared with you")
        view = self.configured_view(feed, user)
        if view is None:
            raise DavError(404, None, "no such feed")
        if as_ics:
            if request.method in ("GET", "HEAD"):
                return self.server.whole_feed(request, view)
            if request.method == "OPTIONS":
                return self.server.options(view)
            raise read_only()
        if not slash:
            raise web.HTTPMovedPermanently(view.base)
        if member:
            return await self.server.member(request, view, unquote(member))
        return await self.server.collection(request, view)

    async def _feeds_parent(
        self, request: web.Request, user: str | None, require_user: RequireUser
    ) -> web.StreamResponse:
        """The parent of the feed collections: Thunderbird asks it for OPTIONS and aborts
        on anything but 2xx or 404; a Depth 1 PROPFIND lists the feeds the caller may read."""
        if request.method == "OPTIONS":
            return web.Response(headers={"Allow": "OPTIONS, PROPFIND", "DAV": DAV_HEADER})
        if request.method != "PROPFIND":
            raise read_only("the list of feeds is managed by the operator")
        if user is None and not all(f.public for f in self.configured.values()):
            user = await require_user()
        wanted = davxml.parse_propfind(await read_body(request, self.server.body_limit))
        base = self.upstream.paths.public + OWN_FEEDS
        props = {
            f"{{{DAV}}}resourcetype": element(
                f"{{{DAV}}}resourcetype", element(f"{{{DAV}}}collection")
            ),
            DISPLAYNAME: element(DISPLAYNAME, text="Feeds"),
        }
        responses = [davxml.answer(base, props, wanted)]
        if request.headers.get("Depth", "infinity").strip() != "0":
            for feed in self.configured.values():
                view = self.configured_view(feed, user) if self.may_read(feed, user) else None
                if view is not None:
                    responses.append(self.server.collection_answer(view, wanted))
        return multistatus_response(davxml.multistatus(*responses))

    # -- users' own subscriptions ---------------------------------------------------------------

    def mounted(self, user: str, rest: str) -> tuple[Subscription, str] | None:
        """The user's subscription at ``rest`` and the member name below it ('' = itself)."""
        key = canonical(rest)
        for sub in self.feeds.subscriptions_of(self.upstream.name, user):
            if key == sub.path or key == sub.path[:-1]:
                return sub, ""
            if key.startswith(sub.path):
                return sub, unquote(key[len(sub.path) :])
        return None

    def subscription_view(self, sub: Subscription, user: str) -> FeedView:
        source = self.feeds.source(sub.source_id)
        if source is None:  # cannot happen while the foreign key holds; fail clearly
            raise DavError(404, None, "this subscription's source is gone")
        props = sub.prop_data
        meta = source.meta_data
        base = self.upstream.paths.public + sub.path
        extra = {SOURCE: element(SOURCE, href(source.url))}
        if ORDER in props:
            extra[ORDER] = element(ORDER, text=props[ORDER])
        if props.get(DESCRIPTION):
            extra[DESCRIPTION] = element(DESCRIPTION, text=props[DESCRIPTION])
        return FeedView(
            source=source,
            base=base,
            feed_path=base,
            displayname=props.get(DISPLAYNAME) or meta.get("name") or unquote(sub.name),
            color=props.get(COLOR) or meta.get("color") or "",
            user_principal=self._principal(user),
            owner_principal=self._principal(user),
            extra_props=extra,
        )

    async def serve_mounted(
        self, request: web.Request, user: str, sub: Subscription, member: str
    ) -> web.StreamResponse:
        view = self.subscription_view(sub, user)
        if member:
            return await self.server.member(request, view, member)
        method = request.method
        if method == "DELETE":
            self.unsubscribe(user, sub)
            return web.Response(status=204)
        if method == "PROPPATCH":
            return await self._proppatch(request, user, sub, view)
        if method in _SUBSCRIPTION_CREATORS:
            raise DavError(405, None, "a subscription already exists here")
        return await self.server.collection(request, view)

    def unsubscribe(self, user: str, sub: Subscription) -> None:
        """The user ends their subscription (DELETE on it, or the web page)."""
        with self.feeds.transaction():
            self.feeds.subscription_delete(self.upstream.name, sub.path)
            self.feeds.drop_unused_sources()
        log.info("user %s unsubscribed %s", user, sub.path)

    def wants_subscription(self, body: bytes) -> tuple[str, dict[str, str]] | None:
        """(source URL, settable properties) when a MKCOL/MKCALENDAR body creates a
        subscription; None for an ordinary collection."""
        try:
            root = davxml.parse(body)
        except davxml.XmlError:
            return None
        prop = root.find(f"{{{DAV}}}set/{davxml.PROP}")
        if prop is None:
            return None
        source = prop.find(SOURCE)
        subscribed = prop.find(f"{{{DAV}}}resourcetype/{SUBSCRIBED}") is not None
        if source is None and not subscribed:
            return None
        url = (
            (source.findtext(davxml.HREF) or source.text or "").strip()
            if source is not None
            else ""
        )
        if not url:
            raise DavError(403, VALID_SOURCE, "a subscription needs CS:source with an href")
        values = {
            str(child.tag): (child.text or "").strip()
            for child in prop
            if child.tag in (DISPLAYNAME, COLOR, ORDER, DESCRIPTION)
        }
        return url, values

    async def create(
        self,
        user: str,
        rest: str,
        url_text: str,
        values: dict[str, str],
        exists_upstream: Callable[[], Awaitable[bool]],
    ) -> web.Response:
        path = canonical(slash(rest))
        home = canonical(self.upstream.rest_of(self.upstream.user_paths(user).calendar_home) or "")
        parent = path.rstrip("/").rsplit("/", 1)[0] + "/"
        if parent != home or path == home:
            raise DavError(
                403, NEED_PRIVILEGES, "subscriptions are created directly in your calendar home"
            )
        url = feed_url(url_text)
        if url is None:
            raise DavError(403, VALID_SOURCE, f"not an http(s) or webcal(s) URL: {url_text!r}")
        mine = self.feeds.subscriptions_of(self.upstream.name, user)
        if len(mine) >= self.settings.max_subscriptions_per_user:
            raise DavError(507, QUOTA, "too many subscriptions for one user")
        try:
            await self.fetcher.check_origin(url)
        except OriginRefused as exc:
            log.warning("subscription by %s to %s refused: %s", user, url, exc)
            raise DavError(
                403, VALID_SOURCE, f"davproxy does not fetch from there: {exc}"
            ) from None
        if self.mounted(user, path) is not None or await exists_upstream():
            raise DavError(405, None, "something already exists at this path")
        with self.feeds.transaction():
            source = self.feeds.source_ensure(url)
            name = path.rstrip("/").rsplit("/", 1)[-1]
            self.feeds.subscription_put(self.upstream.name, user, path, name, source.id, values)
        log.info("user %s subscribed %s to %s", user, path, url)
        if source.status == "new":
            # the first listing shows the data (unless another process fetched it meanwhile)
            await self.refresher.refresh(source.id, lambda s: s.status == "new")
        else:
            self.refresher.wake()
        return web.Response(status=201, headers={"Location": self.upstream.paths.public + path})

    async def _proppatch(
        self, request: web.Request, user: str, sub: Subscription, view: FeedView
    ) -> web.Response:
        root = davxml.parse(await read_body(request, self.server.body_limit))
        if root.tag != f"{{{DAV}}}propertyupdate":
            raise DavError(400, None, "expected DAV:propertyupdate")
        changes: list[tuple[str, str | None]] = []
        for action in root:
            prop = action.find(davxml.PROP)
            if prop is None or action.tag not in (f"{{{DAV}}}set", f"{{{DAV}}}remove"):
                continue
            for child in prop:
                if not isinstance(child.tag, str):
                    continue
                value = None
                if action.tag == f"{{{DAV}}}set":
                    value = (child.findtext(davxml.HREF) or child.text or "").strip()
                changes.append((child.tag, value))
        refused = [
            name
            for name, value in changes
            if name not in SETTABLE or (name == SOURCE and value is None)
        ]
        new_url = None
        for name, value in changes:
            if name == SOURCE and value is not None:
                new_url = feed_url(value)
                if new_url is None:
                    refused.append(name)
        if refused:
            # RFC 4918 §9.2: all or nothing; the others fail with 424
            failed = davxml.response(view.base, [])
            failed.append(davxml.propstat(403, [etree.Element(n) for n in refused]))
            others = [n for n, _ in changes if n not in refused]
            if others:
                failed.append(davxml.propstat(424, [etree.Element(n) for n in others]))
            return multistatus_response(davxml.multistatus(failed))
        if new_url is not None:
            try:
                await self.fetcher.check_origin(new_url)
            except OriginRefused as exc:
                raise DavError(
                    403, VALID_SOURCE, f"davproxy does not fetch from there: {exc}"
                ) from None
        props = dict(sub.prop_data)
        with self.feeds.transaction():
            for name, value in changes:
                if name == SOURCE:
                    continue
                if value is None:
                    props.pop(name, None)
                else:
                    props[name] = value
            source_id = sub.source_id
            if new_url is not None:
                source_id = self.feeds.source_ensure(new_url).id
            self.feeds.subscription_put(
                self.upstream.name, user, sub.path, sub.name, source_id, props
            )
            self.feeds.drop_unused_sources()
        if new_url is not None:
            self.refresher.wake()
        ok = davxml.response(view.base, [etree.Element(n) for n, _ in changes])
        return multistatus_response(davxml.multistatus(ok))

    def listing(self, user: str, home: str, wanted: PropRequest) -> list[etree._Element]:
        """Responses for the user's subscriptions in ``home`` (a Depth 1 listing)."""
        found = []
        for sub in self.feeds.subscriptions_of(self.upstream.name, user):
            if sub.path.rstrip("/").rsplit("/", 1)[0] + "/" != home:
                continue
            view = self.subscription_view(sub, user)
            found.append(self.server.collection_answer(view, wanted))
        return found

    # -- upstream exports -------------------------------------------------------------------------

    def export_links(self, public_path: str) -> Callable[[int, Mapping[str, str]], dict[str, str]]:
        """``Link`` headers for a calendar the upstream exports as one .ics (GET on the
        collection): the collection itself is the CalDAV and sync access point."""
        value = links(public_path, public_path)

        def add(status: int, headers: Mapping[str, str]) -> dict[str, str]:
            content_type = headers.get("Content-Type", "")
            if status == 200 and content_type.lower().startswith("text/calendar"):
                return {"Link": value}
            return {}

        return add

    async def serve_export(self, ctx: Context, user: str, spec: Forward) -> web.StreamResponse:
        """Enhanced GET of an upstream calendar: fetch its export as the client, diff it
        against the snapshot davproxy keeps for it, then answer like any feed."""
        request = ctx.request
        headers = end_to_end(request.headers, spec.drop_headers | _NOT_FOR_EXPORTS)
        headers.update(spec.set_headers)
        cap = self.settings.max_bytes
        async with self.upstream.request("GET", spec.path, headers) as answer:
            calendar = answer.headers.get("Content-Type", "").lower().startswith("text/calendar")
            if answer.content_length is not None and answer.content_length > cap:
                raise PlainError(502, f"The upstream's export is over {cap} bytes")
            try:
                body = await answer.content.read(cap + 1)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise PlainError(502, "Upstream broke off its answer") from exc
            if len(body) > cap:
                raise PlainError(502, f"The upstream's export is over {cap} bytes")
            if answer.status != 200 or not calendar:
                # not a calendar export (or refused): the client sees the upstream's answer
                return web.Response(
                    status=answer.status,
                    reason=answer.reason,
                    body=body,
                    headers=end_to_end(answer.headers, frozenset({"content-length"})),
                )
        key = f"{UPSTREAM_SOURCE}{self.upstream.name}:{canonical(ctx.rest)}"
        with self.feeds.transaction():
            source = self.feeds.source_ensure(key, next_fetch=math.inf)
        report = await self.refresher.apply(source, body, confirm_losses=False)
        if report.outcome == "failed":
            raise DavError(502, None, f"the upstream's export is unusable: {report.error}")
        current = self.feeds.source(source.id)
        assert current is not None
        view = FeedView(
            source=current,
            base=ctx.path,
            feed_path=ctx.path,
            displayname=current.meta_data.get("name") or "",
            user_principal=self._principal(user),
        )
        return self.server.whole_feed(request, view)
