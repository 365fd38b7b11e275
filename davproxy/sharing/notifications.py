"""The per-user notification collection (draft-pot-webdav-notifications-03).

davproxy serves it at ``<prefix>.davproxy/notifications/<user>/``: below davproxy's own
namespace, so it can never collide with a user's collections.  Each notification is
stored once, as canonical JSON (store.Notification), and rendered at GET time in the
wire form the client asks for; this module knows the generic collection (PROPFIND,
GET, DELETE, sync-collection per RFC 6578) and renders the sharing types of
draft-pot-webdav-resource-sharing-04 §5.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from lxml import etree

from davproxy.dav import davxml, sync
from davproxy.dav.davxml import CALDAV, CARDDAV, CS, DAV, element, href, privilege_set
from davproxy.dav.errors import NEED_PRIVILEGES, DavError
from davproxy.dav.http import multistatus_response, read_body
from davproxy.dav.paths import quote_segment
from davproxy.store import Store
from davproxy.store.records import Notification
from davproxy.upstream.client import Upstream

COLLECTION_SEGMENT = "notifications"
IETF_MEDIA_TYPE = "application/davnotification+xml"
SYNC_TOKEN_PREFIX = "urn:x-davproxy:notifications:sync:"


# Protected properties that allprop does not return (notifications-03 §4, RFC 6578 §4).
_NOT_IN_ALLPROP = frozenset(
    {f"{{{DAV}}}notificationtype", f"{{{CS}}}notificationtype", f"{{{DAV}}}sync-token"}
)
# Placeholders of a listing's mold (davxml.Mold): never a notification's name or ETag.
_HREF_SLOT = "\ue000href\ue000"
_ETAG_SLOT = "\ue000etag\ue000"
# Nothing may be written into a notification collection by a client (notifications-03 §3).
_WRITES = frozenset(
    {"PUT", "MKCOL", "MKCALENDAR", "PROPPATCH", "COPY", "MOVE", "LOCK", "ACL", "PATCH"}
)
# Canonical type -> (IETF element, CS element) names.
_TYPE_ELEMENTS = {
    "share-invite": (f"{{{DAV}}}share-invite-notification", f"{{{CS}}}invite-notification"),
    "share-reply": (f"{{{DAV}}}share-reply-notification", f"{{{CS}}}invite-reply"),
}


def collection_path(upstream: Upstream, user: str) -> str:
    return f"{upstream.paths.public}.davproxy/{COLLECTION_SEGMENT}/{quote_segment(user)}/"


def invite_name(invite_uid: str) -> str:
    return f"{invite_uid}.xml"


def reply_name(invite_uid: str) -> str:
    return f"{invite_uid}-reply.xml"


def now_stamp() -> float:
    return time.time()


def _compact(stamp: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(stamp))


def _rfc3339(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


@dataclass(frozen=True, slots=True)
class Renderer:
    """Turns canonical notification bodies into wire XML for one upstream's URL space."""

    upstream: Upstream
    display_name: Callable[[str], str]

    def public(self, rest: str) -> str:
        return self.upstream.paths.public + rest

    def principal(self, user: str) -> str:
        return self.upstream.user_paths(user).principal

    def ietf(self, note: Notification) -> bytes:
        data: dict[str, Any] = json.loads(note.body)
        root = element(
            f"{{{DAV}}}notification", element(f"{{{DAV}}}dtstamp", text=_rfc3339(data["dtstamp"]))
        )
        if note.type == "share-invite":
            root.append(self._ietf_invite(note, data))
        elif note.type == "share-reply":
            root.append(self._ietf_reply(data))
        return davxml.serialize(root)

    def _ietf_invite(self, note: Notification, data: dict[str, Any]) -> etree._Element:
        sharer = data["sharer"]
        access = data["access"]
        body = element(
            f"{{{DAV}}}share-invite-notification",
            element(
                f"{{{DAV}}}principal",
                href(self.principal(sharer)),
                element(
                    davxml.PROP,
                    element(f"{{{DAV}}}displayname", text=self.display_name(sharer)),
                ),
            ),
            element(f"{{{DAV}}}invite-{data['status']}"),
            element(f"{{{DAV}}}sharer-resource-uri", href(self.public(data["collection"]))),
            element(f"{{{DAV}}}share-access", element(f"{{{DAV}}}{access}")),
            element(
                davxml.PROP,
                resourcetype(data["kind"]),
                element(f"{{{DAV}}}displayname", text=data.get("displayname") or ""),
            ),
        )
        if data["status"] == "noresponse" and access != "no-access":
            body.append(
                element(
                    f"{{{DAV}}}reply-url",
                    href(collection_path(self.upstream, note.user) + note.name),
                )
            )
        if data.get("comment"):
            body.append(element(f"{{{DAV}}}comment", text=data["comment"]))
        return body

    def _ietf_reply(self, data: dict[str, Any]) -> etree._Element:
        body = element(
            f"{{{DAV}}}share-reply-notification",
            element(
                f"{{{DAV}}}sharee",
                href(data["sharee_href"]),
                element(f"{{{DAV}}}invite-{data['status']}"),
            ),
            href(self.public(data["collection"])),
        )
        if data.get("comment"):
            body.append(element(f"{{{DAV}}}comment", text=data["comment"]))
        return body

    def cs(self, note: Notification) -> bytes:
        """The Apple CalendarServer form (caldav-sharing §5.1, caldav-notifications)."""
        data: dict[str, Any] = json.loads(note.body)
        root = element(
            f"{{{CS}}}notification",
            # compact stamp: Calendar.app does not like separators (Cyrus, CCS, sabre)
            element(f"{{{CS}}}dtstamp", text=_compact(data["dtstamp"])),
        )
        if note.type == "share-invite":
            root.append(self._cs_invite(data))
        elif note.type == "share-reply":
            root.append(self._cs_reply(data))
        return davxml.serialize(root)

    def _organizer(self, user: str) -> etree._Element:
        return element(
            f"{{{CS}}}organizer",
            href(self.principal(user)),
            element(f"{{{CS}}}common-name", text=self.display_name(user)),
        )

    def _cs_invite(self, data: dict[str, Any]) -> etree._Element:
        revoked = data["access"] == "no-access"
        status = "deleted" if revoked else data["status"]
        access = "read" if revoked else data["access"]
        body = element(
            f"{{{CS}}}invite-notification",
            element(f"{{{CS}}}uid", text=data["uid"]),
            href(data["sharee_href"]),
            element(f"{{{CS}}}invite-{status}"),
            element(f"{{{CS}}}access", element(f"{{{CS}}}{access}")),
            element(f"{{{CS}}}hosturl", href(self.public(data["collection"]))),
            self._organizer(data["sharer"]),
            element(f"{{{CS}}}summary", text=data.get("comment") or data.get("displayname") or ""),
        )
        body.set("shared-type", "addressbook" if data["kind"] == "addressbook" else "calendar")
        if data["kind"] == "calendar" and data.get("components"):
            body.append(
                element(
                    f"{{{CALDAV}}}supported-calendar-component-set",
                    *(element(f"{{{CALDAV}}}comp", name=c) for c in data["components"]),
                )
            )
        return body

    def _cs_reply(self, data: dict[str, Any]) -> etree._Element:
        body = element(
            f"{{{CS}}}invite-reply",
            href(data["sharee_href"]),
            element(f"{{{CS}}}invite-{data['status']}"),
            element(f"{{{CS}}}hosturl", href(self.public(data["collection"]))),
            element(f"{{{CS}}}in-reply-to", text=data["uid"]),
        )
        if data.get("comment"):
            body.append(element(f"{{{CS}}}summary", text=data["comment"]))
        return body

    def render(self, note: Notification, media: str) -> bytes:
        return self.ietf(note) if media == IETF_MEDIA_TYPE else self.cs(note)

    def notification_types(self, type_: str, kind: str) -> dict[str, etree._Element]:
        """``D:notificationtype`` and ``CS:notificationtype``: empty copies of the type
        (``kind``: the shared collection's, from the notification's body)."""
        ietf_name, cs_name = _TYPE_ELEMENTS.get(type_, (None, None))
        result: dict[str, etree._Element] = {}
        if ietf_name is None or cs_name is None:
            return result
        result[f"{{{DAV}}}notificationtype"] = element(
            f"{{{DAV}}}notificationtype", element(ietf_name)
        )
        cs_type = element(cs_name)
        if type_ == "share-invite":
            cs_type.set("shared-type", "addressbook" if kind == "addressbook" else "calendar")
        result[f"{{{CS}}}notificationtype"] = element(f"{{{CS}}}notificationtype", cs_type)
        return result


def resourcetype(kind: str) -> etree._Element:
    node = element(f"{{{DAV}}}resourcetype", element(f"{{{DAV}}}collection"))
    if kind == "calendar":
        node.append(element(f"{{{CALDAV}}}calendar"))
    elif kind == "addressbook":
        node.append(element(f"{{{CARDDAV}}}addressbook"))
    return node


@dataclass(frozen=True, slots=True)
class NotificationLog:
    """One user's notification collection as the RFC 6578 engine sees it."""

    store: Store
    upstream: str
    user: str
    token_prefix: str = SYNC_TOKEN_PREFIX
    min_revision: int = 0  # tombstones are kept: every token ever given stays valid

    @property
    def tag(self) -> str:
        """Ties a sync token to one collection: another user's token is not valid here."""
        return hashlib.sha256(f"{self.upstream}\0{self.user}".encode()).hexdigest()[:12]

    @property
    def revision(self) -> int:
        return self.store.notification_revision(self.upstream, self.user)

    def changes(self, since: int, limit: int | None, live_only: bool) -> list[Notification]:
        return self.store.notification_changes(self.upstream, self.user, since, limit, live_only)


# (request, user, member name, the notification there if any, body)
ReplyHandler = Callable[
    [web.Request, str, str, Notification | None, bytes], Awaitable[web.StreamResponse]
]


class NotificationCollection:
    """Serves one user's notifications; only that user may read or change them."""

    def __init__(self, store: Store, renderer: Renderer, reply: ReplyHandler) -> None:
        self.store = store
        self.renderer = renderer
        self.reply = reply
        self.upstream = renderer.upstream

    async def handle(
        self, request: web.Request, user: str, subpath: str, body_limit: int
    ) -> web.StreamResponse:
        owner_segment, _, member = subpath.partition("/")
        if unquote(owner_segment) != user:
            raise DavError(403, NEED_PRIVILEGES, "only the owner may use a notification collection")
        base = collection_path(self.upstream, user)
        if subpath == owner_segment:  # no trailing slash: point at the collection
            raise web.HTTPMovedPermanently(base)
        if request.method in _WRITES:
            raise DavError(403, NEED_PRIVILEGES, "notifications are written by the server only")
        if member == "":
            return await self._collection(request, user, base, body_limit)
        if "/" in member:
            raise DavError(404, None, "no such notification")
        return await self._member(request, user, base, member, body_limit)

    # -- the collection ------------------------------------------------------------------

    async def _collection(
        self, request: web.Request, user: str, base: str, body_limit: int
    ) -> web.StreamResponse:
        method = request.method
        if method == "OPTIONS":
            return web.Response(headers={"Allow": "OPTIONS, PROPFIND, REPORT", "DAV": "1, 3"})
        if method == "PROPFIND":
            wanted = davxml.parse_propfind(await read_body(request, body_limit))
            depth = request.headers.get("Depth", "infinity").strip()
            itself = davxml.answer(base, self.collection_props(user), wanted, _NOT_IN_ALLPROP)
            if depth == "0":
                return multistatus_response(davxml.multistatus(itself))
            # members differ only in name and ETag: one mold per type, stamped per member
            molds: dict[tuple[str, str], davxml.Mold] = {}
            members = []
            for name, type_, etag, kind in self.store.notification_listing(
                self.upstream.name, user
            ):
                mold = molds.get((type_, kind))
                if mold is None:
                    props = self._props(type_, kind, _ETAG_SLOT)
                    model = davxml.answer(_HREF_SLOT, props, wanted, _NOT_IN_ALLPROP)
                    mold = molds[(type_, kind)] = davxml.Mold(model, (_HREF_SLOT, _ETAG_SLOT))
                members.append(mold.stamp(base + name, etag))
            return web.Response(
                status=207,
                body=davxml.multistatus_bytes([itself], members),
                content_type="application/xml",
                charset="utf-8",
            )
        if method == "REPORT":
            return self._sync_collection(request, user, base, await read_body(request, body_limit))
        raise DavError(403, NEED_PRIVILEGES, "the notification collection is managed by the server")

    def collection_props(self, user: str) -> dict[str, etree._Element]:
        log = NotificationLog(self.store, self.upstream.name, user)
        revision = log.revision
        token = sync.token(log, revision)
        return {
            f"{{{DAV}}}resourcetype": element(
                f"{{{DAV}}}resourcetype",
                element(f"{{{DAV}}}collection"),
                element(f"{{{DAV}}}notifications"),
                element(f"{{{CS}}}notification"),
            ),
            f"{{{DAV}}}displayname": element(f"{{{DAV}}}displayname", text="Notifications"),
            f"{{{DAV}}}owner": element(f"{{{DAV}}}owner", href(self.renderer.principal(user))),
            f"{{{DAV}}}getetag": element(f"{{{DAV}}}getetag", text=f'"{revision}"'),
            f"{{{CS}}}getctag": element(f"{{{CS}}}getctag", text=token),
            f"{{{DAV}}}sync-token": element(f"{{{DAV}}}sync-token", text=token),
            f"{{{DAV}}}supported-report-set": element(
                f"{{{DAV}}}supported-report-set",
                element(
                    f"{{{DAV}}}supported-report",
                    element(f"{{{DAV}}}report", element(f"{{{DAV}}}sync-collection")),
                ),
            ),
            f"{{{DAV}}}current-user-privilege-set": privilege_set("read", "unbind"),
        }

    def _member_props(self, note: Notification) -> dict[str, etree._Element]:
        kind = json.loads(note.body).get("kind", "") if note.body else ""
        return self._props(note.type, kind, note.etag)

    def _props(self, type_: str, kind: str, etag: str) -> dict[str, etree._Element]:
        props = {
            f"{{{DAV}}}resourcetype": element(f"{{{DAV}}}resourcetype"),
            f"{{{DAV}}}getetag": element(f"{{{DAV}}}getetag", text=f'"{etag}"'),
            f"{{{DAV}}}getcontenttype": element(f"{{{DAV}}}getcontenttype", text="application/xml"),
        }
        props.update(self.renderer.notification_types(type_, kind))
        return props

    def _sync_collection(
        self, request: web.Request, user: str, base: str, body: bytes
    ) -> web.StreamResponse:
        sync.check_depth(request.headers.get("Depth"))
        document = sync.report(
            NotificationLog(self.store, self.upstream.name, user),
            sync.parse_request(davxml.parse(body)),
            base,
            lambda note: base + note.name,
            lambda note, wanted: davxml.answer(base + note.name, self._member_props(note), wanted),
        )
        return multistatus_response(document)

    # -- members ---------------------------------------------------------------------------

    async def _member(
        self, request: web.Request, user: str, base: str, name: str, body_limit: int
    ) -> web.StreamResponse:
        note = self.store.notification(self.upstream.name, user, name)
        method = request.method
        if method == "POST":
            # a reply-url keeps taking answers after its invitation was removed
            body = await read_body(request, body_limit)
            return await self.reply(request, user, name, note, body)
        if note is None:
            raise DavError(404, None, "no such notification")
        etag = f'"{note.etag}"'
        if method in ("GET", "HEAD"):
            if request.headers.get("If-None-Match", "").strip() in (etag, "*"):
                return web.Response(status=304, headers={"ETag": etag})
            media = negotiate(request)
            body = self.renderer.render(note, media)
            # aiohttp answers HEAD with this body's Content-Length and no body
            return web.Response(
                body=body,
                headers={
                    "ETag": etag,
                    "Content-Type": f"{media}; charset=utf-8",
                    "Vary": "Accept",  # IETF form on request, Apple's otherwise
                },
            )
        if method == "DELETE":
            with self.store.transaction():
                self.store.notification_delete(self.upstream.name, user, name)
            return web.Response(status=204)
        if method == "PROPFIND":
            wanted = davxml.parse_propfind(await read_body(request, body_limit))
            answer = davxml.answer(base + name, self._member_props(note), wanted, _NOT_IN_ALLPROP)
            return multistatus_response(davxml.multistatus(answer))
        if method == "OPTIONS":
            return web.Response(headers={"Allow": "OPTIONS, GET, HEAD, DELETE, PROPFIND, POST"})
        raise DavError(403, NEED_PRIVILEGES, "notifications cannot be changed")


def negotiate(request: web.Request) -> str:
    """The IETF form for clients that ask for its media type; the Apple CalendarServer
    form as plain XML otherwise (Apple clients send no Accept; never a 406).

    Some clients (Kolab) send the IETF type as Content-Type on GET instead of Accept.
    """
    asked = request.headers.get("Accept", "") + "," + request.headers.get("Content-Type", "")
    if IETF_MEDIA_TYPE in asked or "application/davsharing+xml" in asked:
        return IETF_MEDIA_TYPE
    return "application/xml"
