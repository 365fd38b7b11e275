"""Serving one feed: a read-only CalDAV collection, its members, and the whole feed.

- The collection (RFC 4791 subset, subscriptions digest §3.2): OPTIONS, PROPFIND Depth 0/1,
  REPORT sync-collection (RFC 6578, ``D:limit`` with 507 paging), calendar-multiget,
  calendar-query; every write is 403 ``D:need-privileges``.
- The whole feed (draft-ietf-calext-subscription-upgrade-13): GET/HEAD with a strong
  ETag, Last-Modified and 304s, ``Link`` relations to the collection and the feed itself,
  and enhanced GET (``Prefer: subscribe-enhanced-get`` + ``Sync-Token``): only changed
  objects plus ``STATUS:DELETED`` skeletons, 304 when nothing changed, 409 for a bad token,
  ``Prefer: limit=N`` paging.

RFC 6578 tokens, enhanced-GET tokens and ``CS:getctag`` are one token space: the source's
revision, tied to the source's random tag.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from urllib.parse import unquote

from aiohttp import web
from lxml import etree

from davproxy.dav import davxml, sync
from davproxy.dav.davxml import CALDAV, CS, DAV, ICAL, PropRequest, element, href, privilege_set
from davproxy.dav.errors import NEED_PRIVILEGES, DavError
from davproxy.dav.http import multistatus_response, preferences, read_body
from davproxy.feeds import caldav_query
from davproxy.feeds.store import FeedItem, FeedSource, FeedStore

ALLOW = "OPTIONS, GET, HEAD, PROPFIND, REPORT"
DAV_HEADER = "1, 3, calendar-access"
ENHANCED = "subscribe-enhanced-get"
CALENDAR_DATA = f"{{{CALDAV}}}calendar-data"
SYNC_TOKEN = sync.SYNC_TOKEN
#: properties PROPFIND allprop leaves out (RFC 6578 §4; calendar data is large)
HIDDEN = frozenset({CALENDAR_DATA, SYNC_TOKEN})
_REPORTS = ("calendar-multiget", "calendar-query", "sync-collection")
_DROPPED_CALENDAR_PROPS = ("REFRESH-INTERVAL", "X-PUBLISHED-TTL")
_CONTENT_TYPE = "text/calendar; charset=utf-8"
_CACHED_FEEDS = 32  # whole feeds kept in memory; the rest are rebuilt from the store


@dataclass(frozen=True, slots=True)
class FeedView:
    """One feed as one user sees it at one URL."""

    source: FeedSource
    base: str  # public path of the collection, ends with "/"
    feed_path: str  # public path of the whole feed
    displayname: str
    color: str = ""
    public: bool = False  # readable without credentials
    user_principal: str | None = None
    owner_principal: str | None = None
    extra_props: dict[str, etree._Element] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FeedLog:
    """A feed's change log as the RFC 6578 engine sees it."""

    feeds: FeedStore
    source: FeedSource

    @property
    def token_prefix(self) -> str:
        return self.source.token_prefix

    @property
    def tag(self) -> str:
        return self.source.tag

    @property
    def revision(self) -> int:
        return self.source.revision

    @property
    def min_revision(self) -> int:
        return self.source.min_revision

    def changes(self, since: int, limit: int | None, live_only: bool) -> list[FeedItem]:
        return self.feeds.changes(self.source.id, since, limit, live_only)


def http_date(stamp: float | None) -> str:
    return email.utils.formatdate(stamp or 0, usegmt=True)


def links(collection: str, feed_path: str, public: bool = False) -> str:
    """RFC 8288 links to the upgraded access points (subscription-upgrade §4)."""
    caldav = "subscribe-caldav" if public else "subscribe-caldav-auth"
    return (
        f'<{collection}>; rel="{caldav}", <{collection}>; rel="subscribe-webdav-sync", '
        f'<{feed_path}>; rel="{ENHANCED}"'
    )


def link_header(view: FeedView) -> str:
    return links(view.base, view.feed_path, view.public)


def _etag_matches(request: web.Request, etag: str) -> bool:
    header = request.headers.get("If-None-Match")
    if header is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def _not_modified_since(request: web.Request, stamp: float | None) -> bool:
    header = request.headers.get("If-Modified-Since")
    if header is None or stamp is None or "If-None-Match" in request.headers:
        return False
    try:
        since = email.utils.parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError, OverflowError):  # not a date, or out of range: ignored
        return False
    return int(stamp) <= since


class FeedServer:
    """Answers requests on feeds from the store; nothing here writes."""

    def __init__(self, feeds: FeedStore, body_limit: int) -> None:
        self.feeds = feeds
        self.body_limit = body_limit
        # whole feeds by source tag (never by row id: SQLite reuses those), newest last
        self._full: OrderedDict[str, tuple[tuple[object, ...], bytes, str]] = OrderedDict()

    # -- entry points ----------------------------------------------------------------------

    async def collection(self, request: web.Request, view: FeedView) -> web.StreamResponse:
        method = request.method
        if method == "OPTIONS":
            return self.options(view)
        if method in ("GET", "HEAD"):
            return self.whole_feed(request, view)
        if method == "PROPFIND":
            wanted = davxml.parse_propfind(await read_body(request, self.body_limit))
            depth = request.headers.get("Depth", "infinity").strip()
            responses = [self.collection_answer(view, wanted)]
            if depth != "0":
                for item in self.feeds.items(view.source.id):
                    responses.append(self._member_answer(view, item, wanted))
            return multistatus_response(davxml.multistatus(*responses))
        if method == "REPORT":
            return await self.report(request, view, await read_body(request, self.body_limit))
        raise read_only()

    async def member(self, request: web.Request, view: FeedView, name: str) -> web.StreamResponse:
        method = request.method
        item = self.feeds.item(view.source.id, name) if "/" not in name else None
        if method == "OPTIONS":
            return self.options(view)
        if item is None:
            if method in ("GET", "HEAD", "PROPFIND", "REPORT"):
                raise DavError(404, None, "no such object in this feed")
            raise read_only()
        if method in ("GET", "HEAD"):
            return self._get_member(request, item)
        if method == "PROPFIND":
            wanted = davxml.parse_propfind(await read_body(request, self.body_limit))
            answer = self._member_answer(view, item, wanted)
            return multistatus_response(davxml.multistatus(answer))
        raise read_only()

    def options(self, view: FeedView) -> web.Response:
        return web.Response(headers={"Allow": ALLOW, "DAV": DAV_HEADER, "Link": link_header(view)})

    # -- properties ---------------------------------------------------------------------------

    def collection_answer(self, view: FeedView, wanted: PropRequest) -> etree._Element:
        """The collection's PROPFIND response (also in listings of its parent)."""
        return davxml.answer(view.base, self.collection_props(view), wanted, HIDDEN)

    def collection_props(self, view: FeedView) -> dict[str, etree._Element]:
        source = view.source
        token = sync.token(source)
        kinds = self.feeds.kinds(source.id) or ["VEVENT"]
        meta = source.meta_data
        principal = (
            href(view.user_principal)
            if view.user_principal
            else element(f"{{{DAV}}}unauthenticated")
        )
        props = {
            f"{{{DAV}}}resourcetype": element(
                f"{{{DAV}}}resourcetype",
                element(f"{{{DAV}}}collection"),
                element(f"{{{CALDAV}}}calendar"),
            ),
            f"{{{DAV}}}displayname": element(f"{{{DAV}}}displayname", text=view.displayname),
            f"{{{CS}}}getctag": element(f"{{{CS}}}getctag", text=token),
            SYNC_TOKEN: element(SYNC_TOKEN, text=token),
            f"{{{DAV}}}supported-report-set": element(
                f"{{{DAV}}}supported-report-set",
                *(
                    element(
                        f"{{{DAV}}}supported-report",
                        element(
                            f"{{{DAV}}}report",
                            element(f"{{{DAV if r == 'sync-collection' else CALDAV}}}{r}"),
                        ),
                    )
                    for r in _REPORTS
                ),
            ),
            f"{{{CALDAV}}}supported-calendar-component-set": element(
                f"{{{CALDAV}}}supported-calendar-component-set",
                *(element(f"{{{CALDAV}}}comp", name=k) for k in kinds),
            ),
            f"{{{CALDAV}}}supported-calendar-data": element(
                f"{{{CALDAV}}}supported-calendar-data",
                element(
                    f"{{{CALDAV}}}calendar-data", **{"content-type": "text/calendar"}, version="2.0"
                ),
            ),
            # always sent: DAVx5 assumes a calendar is writable when it is missing
            f"{{{DAV}}}current-user-privilege-set": privilege_set("read"),
            f"{{{DAV}}}current-user-principal": element(
                f"{{{DAV}}}current-user-principal", principal
            ),
            f"{{{DAV}}}getlastmodified": element(
                f"{{{DAV}}}getlastmodified", text=http_date(source.last_change)
            ),
        }
        if view.owner_principal:
            props[f"{{{DAV}}}owner"] = element(f"{{{DAV}}}owner", href(view.owner_principal))
        description = meta.get("description")
        if description:
            props[f"{{{CALDAV}}}calendar-description"] = element(
                f"{{{CALDAV}}}calendar-description", text=description
            )
        if view.color:
            props[f"{{{ICAL}}}calendar-color"] = element(
                f"{{{ICAL}}}calendar-color", text=view.color
            )
        zone = meta.get("timezone")
        zones = source.timezone_texts
        if zone and zone in zones:
            text = "\r\n".join(["BEGIN:VCALENDAR", *meta["header"], ""]) + zones[zone]
            props[f"{{{CALDAV}}}calendar-timezone"] = element(
                f"{{{CALDAV}}}calendar-timezone", text=text + "END:VCALENDAR\r\n"
            )
        props.update(view.extra_props)
        return props

    def _member_props(self, item: FeedItem, wanted: PropRequest) -> dict[str, etree._Element]:
        props = {
            f"{{{DAV}}}getetag": element(f"{{{DAV}}}getetag", text=f'"{item.etag}"'),
            f"{{{DAV}}}getcontenttype": element(
                f"{{{DAV}}}getcontenttype", text=f"{_CONTENT_TYPE}; component={item.kind.lower()}"
            ),
            f"{{{DAV}}}resourcetype": element(f"{{{DAV}}}resourcetype"),
            f"{{{DAV}}}getlastmodified": element(
                f"{{{DAV}}}getlastmodified", text=http_date(item.modified)
            ),
            f"{{{DAV}}}getcontentlength": element(
                f"{{{DAV}}}getcontentlength", text=str(len(item.text.encode("utf-8")))
            ),
        }
        if wanted.wants(CALENDAR_DATA):
            props[CALENDAR_DATA] = element(CALENDAR_DATA, text=item.text)
        return props

    def _member_answer(self, view: FeedView, item: FeedItem, wanted: PropRequest) -> etree._Element:
        return davxml.answer(
            view.base + item.href, self._member_props(item, wanted), wanted, HIDDEN
        )

    # -- reports ------------------------------------------------------------------------------

    async def report(self, request: web.Request, view: FeedView, body: bytes) -> web.Response:
        root = davxml.parse(body)
        prop = root.find(davxml.PROP)
        wanted = PropRequest(
            "prop",
            tuple(str(p.tag) for p in prop if isinstance(p.tag, str)) if prop is not None else (),
        )
        if root.tag == sync.SYNC_COLLECTION:
            sync.check_depth(request.headers.get("Depth"))
            document = sync.report(
                FeedLog(self.feeds, view.source),
                sync.parse_request(root),
                view.base,
                lambda item: view.base + item.href,
                lambda item, wanted: self._member_answer(view, item, wanted),
            )
            return multistatus_response(document)
        if root.tag == f"{{{CALDAV}}}calendar-multiget":
            return self._multiget(view, root, wanted)
        if root.tag == f"{{{CALDAV}}}calendar-query":
            query = caldav_query.parse_filter(root)
            items = self.feeds.items(view.source.id)
            if query.needs_parsing:  # parsing and expanding objects: off the event loop
                kept = await asyncio.to_thread(
                    lambda: [i for i in items if caldav_query.matches(query, i.kind, i.text)]
                )
            else:
                kept = [i for i in items if caldav_query.matches(query, i.kind, i.text)]
            responses = [self._member_answer(view, item, wanted) for item in kept]
            return multistatus_response(davxml.multistatus(*responses))
        raise DavError(
            403, f"{{{DAV}}}supported-report", f"report {root.tag} is not supported here"
        )

    def _multiget(self, view: FeedView, root: etree._Element, wanted: PropRequest) -> web.Response:
        names: dict[str, str] = {}
        for node in root.findall(davxml.HREF):
            path = davxml.href_path(node.text or "")
            name = unquote(path[len(view.base) :]) if path.startswith(view.base) else ""
            names[path] = name
        found = {
            i.href: i for i in self.feeds.items(view.source.id, [n for n in names.values() if n])
        }
        responses = []
        for path, name in names.items():
            item = found.get(name)
            if item is None:
                responses.append(davxml.status_response(path, 404))
            else:
                responses.append(self._member_answer(view, item, wanted))
        return multistatus_response(davxml.multistatus(*responses))

    # -- GET ------------------------------------------------------------------------------------

    def _get_member(self, request: web.Request, item: FeedItem) -> web.Response:
        etag = f'"{item.etag}"'
        headers = {"ETag": etag, "Last-Modified": http_date(item.modified)}
        if _etag_matches(request, etag) or _not_modified_since(request, item.modified):
            return web.Response(status=304, headers=headers)
        body = item.text.encode("utf-8", "surrogatepass")
        return _body_response(body, headers)

    def whole_feed(self, request: web.Request, view: FeedView) -> web.Response:
        source = view.source
        prefer = preferences(request)
        enhanced = ENHANCED in prefer
        headers = {"Link": link_header(view), "Vary": "Prefer, Sync-Token"}
        if enhanced:
            headers["Preference-Applied"] = ENHANCED
        token_header = request.headers.get("Sync-Token")
        limit = sync.positive_limit(prefer.get("limit")) if enhanced else None
        if enhanced and (token_header is not None or limit is not None):
            return self._enhanced(request, view, token_header or "", limit, headers)
        body, etag = self.full(source)
        headers["ETag"] = etag
        headers["Last-Modified"] = http_date(source.last_change)
        headers["Sync-Token"] = f'"{sync.token(source)}"'  # a hint even without Prefer (§5)
        if _etag_matches(request, etag) or _not_modified_since(request, source.last_change):
            return web.Response(status=304, headers=headers)
        return _body_response(body, headers)

    def _enhanced(
        self,
        request: web.Request,
        view: FeedView,
        token_header: str,
        limit: int | None,
        headers: dict[str, str],
    ) -> web.Response:
        source = view.source
        since = sync.token_revision(token_header.strip().strip('"'), source)
        if since is None:
            # the client must drop its copy and fetch everything again (§5)
            return web.Response(
                status=409,
                text="The Sync-Token is not valid for this feed; fetch it again without one.\n",
                headers={"Vary": headers["Vary"], "Link": headers["Link"]},
            )
        found = sync.page(FeedLog(self.feeds, source), since, limit)
        items = list(found.changes)
        headers["Sync-Token"] = f'"{sync.token(source, found.revision)}"'
        if found.truncated:
            headers["Preference-Applied"] = f"{ENHANCED}, limit={limit}"
        if not items:
            return web.Response(status=304, headers=headers)
        body = self.assemble(source, items, delta=since > 0)
        headers["Content-Type"] = _CONTENT_TYPE
        return _body_response(body, headers)

    def full(self, source: FeedSource) -> tuple[bytes, str]:
        """The whole feed as davproxy serves it, cached until the source changes."""
        key = (source.revision, source.meta, source.timezones, source.interval)
        cached = self._full.get(source.tag)
        if cached is not None and cached[0] == key:
            self._full.move_to_end(source.tag)
            return cached[1], cached[2]
        body = self.assemble(source, self.feeds.items(source.id), delta=False)
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        self._full[source.tag] = (key, body, etag)
        while len(self._full) > _CACHED_FEEDS:
            self._full.popitem(last=False)
        return body, etag

    def assemble(self, source: FeedSource, items: list[FeedItem], delta: bool) -> bytes:
        """A VCALENDAR of ``items`` (deletions as STATUS:DELETED skeletons) with the time
        zones they reference (all of them for the whole feed)."""
        meta = source.meta_data
        zones = source.timezone_texts
        lines = ["BEGIN:VCALENDAR", *meta.get("header", ["VERSION:2.0"])]
        lines += [
            p
            for p in meta.get("properties", [])
            if not p.upper().startswith(_DROPPED_CALENDAR_PROPS)
        ]
        if source.interval:
            # clients need not poll davproxy more often than davproxy polls the origin
            lines.append(f"REFRESH-INTERVAL;VALUE=DURATION:PT{source.interval}S")
            lines.append(f"X-PUBLISHED-TTL:PT{source.interval}S")
        text = "\r\n".join(lines) + "\r\n"
        if delta:
            wanted = {tz for item in items if not item.deleted for tz in item.tzid_list}
            text += "".join(z for tzid, z in zones.items() if tzid in wanted)
        else:
            text += "".join(zones.values())
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        parts = [text]
        for item in items:
            if item.deleted:
                parts.append(_skeleton(item, stamp))
            else:
                parts.append(item.components)
        parts.append("END:VCALENDAR\r\n")
        return "".join(parts).encode("utf-8", "surrogatepass")


def _skeleton(item: FeedItem, stamp: str) -> str:
    """A deleted object as subscription-upgrade §6 wants it: real UID, synthesised DTSTAMP
    and DTSTART, STATUS:DELETED."""
    kind = item.kind if item.kind in ("VEVENT", "VTODO", "VJOURNAL") else "VEVENT"
    uid = item.uid.replace("\\", "\\\\").replace("\n", "\\n")
    return (
        f"BEGIN:{kind}\r\nUID:{uid}\r\nDTSTAMP:{stamp}\r\nDTSTART:{stamp}\r\n"
        f"STATUS:DELETED\r\nEND:{kind}\r\n"
    )


def _body_response(body: bytes, headers: dict[str, str]) -> web.Response:
    # aiohttp answers HEAD with this body's Content-Length and no body
    headers.setdefault("Content-Type", _CONTENT_TYPE)
    return web.Response(body=body, headers=headers)


def read_only(message: str = "this calendar is a read-only subscription") -> DavError:
    return DavError(403, NEED_PRIVILEGES, message)
