"""What a client sees of the upstream where sharing changes it.

* ``sharee``: requests under a sharee's copy are rewritten to the owner's collection,
  forwarded as the owner, with the sharee's access enforced here first; every href in
  the answer is mapped back to the copy (the *rewrite* outcome).
* ``own``: a user's own requests pass through, and davproxy adds what it owns to the
  answer: the notification URL on the principal, shared copies and the notification
  collection in home listings, the sharing state of shared collections (the *augment*
  outcome); deleting a shared collection ends its shares.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from lxml import etree

from davproxy.dav import davxml
from davproxy.dav.davxml import CS, DAV, element, href
from davproxy.dav.errors import DavError, PlainError
from davproxy.dav.paths import PathMap, PathRejected, canonical, check_path
from davproxy.edge.proxy import Forward, end_to_end, forward, public_origin, read_body
from davproxy.feeds.views import ENHANCED, preferences
from davproxy.sharing.model import READ_METHODS, WRITE_METHODS, Sharing
from davproxy.sharing.notifications import NEED_PRIVILEGES, collection_path, multistatus_response
from davproxy.store.sqlite import Share

if TYPE_CHECKING:
    from davproxy.edge.routes import Context, Router

NOTIFICATION_URL = f"{{{DAV}}}notification-URL"
CS_NOTIFICATION_URL = f"{{{CS}}}notification-URL"
# Shared calendars cannot schedule through davproxy: said so, as CalendarServer does.
SHARING_TOKENS = (
    "resource-sharing",
    "calendarserver-sharing",
    "calendarserver-sharing-no-scheduling",
)
# What the user's homes offer: sharing, and subscriptions kept on the server (Apple
# clients store a subscription in the home only when the server announces this; sabre/dav
# uses the same token).
HOME_TOKENS = (*SHARING_TOKENS, "calendarserver-subscribed")
# Upstream properties davproxy extends: the privilege set (D:share on the user's own
# collections) and resourcetype (CS:shared-owner / CS:shared markers).
PRIVILEGES = f"{{{DAV}}}current-user-privilege-set"
RESOURCETYPE = f"{{{DAV}}}resourcetype"
# Properties davproxy adds to a user's own principal and collections.
OWNED_PROPS = frozenset(
    {
        NOTIFICATION_URL,
        CS_NOTIFICATION_URL,
        f"{{{DAV}}}share-access",
        f"{{{DAV}}}invite",
        f"{{{DAV}}}share-resource-uri",
        f"{{{CS}}}invite",
        f"{{{CS}}}allowed-sharing-modes",
        f"{{{CS}}}shared-url",
    }
)


async def sharee(
    router: Router, ctx: Context, user: str, share: Share, below: str
) -> web.StreamResponse:
    request, site = ctx.request, ctx.site
    sharing, upstream = site.sharing, site.upstream
    method = request.method
    copy_path = upstream.paths.public + (share.mount or "")
    if below == "":
        if method == "DELETE":
            await sharing.unbind(share)
            return web.Response(status=204)
        if method == "PROPPATCH":
            body = await read_body(request, router.max_body)
            return multistatus_response(sharing.set_instance_props(share, body))
        if method in ("MKCOL", "MKCALENDAR", "PUT", "MOVE", "COPY"):
            raise DavError(403, NEED_PRIVILEGES, "a shared copy cannot be replaced or moved")
    if share.access == "read" and method not in READ_METHODS:
        raise DavError(403, NEED_PRIVILEGES, "this share is read-only")
    if method not in WRITE_METHODS | READ_METHODS:
        # requests under a copy may run as the owner: only methods whose effect is known
        raise DavError(403, NEED_PRIVILEGES, f"{method} is not available on a shared copy")

    if method in ("MOVE", "COPY"):
        # strictly inside: onto the copy itself would replace the owner's collection
        destination = canonical(davxml.href_path(request.headers.get("Destination", "")))
        root = canonical(copy_path).rstrip("/")
        if not destination.startswith(root + "/") or destination.rstrip("/") == root:
            raise DavError(403, NEED_PRIVILEGES, "objects cannot be moved out of a shared copy")

    body_of_request = await read_body(request, router.max_body) if method == "PROPFIND" else None

    def edit(body: bytes) -> bytes:
        wanted = _wanted(request, body_of_request)
        return davxml.augment(
            body, wanted, _copy_provider(sharing, share, copy_path), None, _copy_marker(copy_path)
        )

    edit_xml = edit if method in ("PROPFIND", "REPORT") else None
    if sharing.native is not None:
        # The upstream enforces this share itself: the request goes to the copy's own
        # path, as the sharee; davproxy only adds the sharing properties.
        spec = replace(router.spec(ctx, ctx.rest, None), edit_xml=edit_xml, body=body_of_request)
        return await forward(request, spec, router.max_body, router.allowed)

    origin = public_origin(request, router.allowed)
    copy = PathMap(copy_path, upstream.paths.public + share.collection)
    base = router.spec(ctx, share.collection + below, share.owner)
    to_upstream = base.request_hrefs or (lambda h: h)
    to_public = base.response_hrefs or (lambda h: h)

    copy_key, owner_key = canonical(copy_path), canonical(upstream.paths.public + share.collection)

    def request_hrefs(value: str) -> str:
        """A client href (multiget, Destination) into the owner's collection.

        Requests under a copy run *as the owner*: an href outside the copy (or one the
        upstream would resolve elsewhere) would read the owner's other data, so it is
        refused rather than passed on."""
        path = davxml.href_path(value).partition("?")[0]
        try:
            check_path(path)
        except PathRejected as exc:
            raise DavError(400, None, f"href not accepted: {exc}") from None
        path = canonical(path)
        if path + "/" == copy_key:
            path = copy_key
        if not path.startswith(copy_key):
            raise DavError(403, NEED_PRIVILEGES, "hrefs must stay inside the shared copy")
        return to_upstream(owner_key + path[len(copy_key) :])

    def response_hrefs(value: str) -> str:
        return copy.href_to_public(to_public(value), upstream.origin, origin)

    spec = replace(
        base,
        request_hrefs=request_hrefs,
        response_hrefs=response_hrefs,
        strict_bodies=True,
        edit_xml=edit_xml,
        body=body_of_request,
        dav_tokens=SHARING_TOKENS if method == "OPTIONS" else (),
    )
    return await forward(request, spec, router.max_body, router.allowed)


def _copy_provider(
    sharing: Sharing, share: Share, copy_path: str
) -> Callable[[str], dict[str, etree._Element] | None]:
    copy_path = canonical(copy_path)

    def provide(path: str) -> dict[str, etree._Element] | None:
        path = canonical(path)
        if path.rstrip("/") == copy_path.rstrip("/"):
            return sharing.properties.copy_props(share)
        if path.startswith(copy_path):
            return sharing.properties.member_props(share)
        return None

    return provide


def _copy_marker(copy_path: str) -> Callable[[str, etree._Element], bool]:
    key = canonical(copy_path).rstrip("/")

    def adjust(path: str, node: etree._Element) -> bool:
        if canonical(path).rstrip("/") != key:
            return False
        return davxml.add_resourcetype(node, f"{{{CS}}}shared")

    return adjust


def _wanted(request: web.Request, body: bytes | None) -> davxml.PropRequest:
    if request.method != "PROPFIND":
        return davxml.PropRequest("prop", (f"{{{DAV}}}current-user-privilege-set",))
    return davxml.parse_propfind(body or b"")


async def own(router: Router, ctx: Context, user: str, spec: Forward) -> web.StreamResponse:
    """The user's own request: passthrough, with sharing state added to the answer."""
    request, site = ctx.request, ctx.site
    sharing, upstream = site.sharing, site.upstream
    method = request.method
    homes = sharing.homes(user)
    in_homes = any(ctx.rest.startswith(home) for home in homes)
    if method in ("GET", "HEAD") and ctx.rest.endswith("/"):
        # a collection exported as one .ics: advertise it as a subscription access point
        if method == "GET" and ENHANCED in preferences(request):
            return await _enhanced_export(router, ctx, user, spec)
        spec = replace(spec, add_headers=site.subscriptions.export_links(ctx.path))
    if method == "OPTIONS" and in_homes:
        spec = replace(spec, dav_tokens=HOME_TOKENS)
    elif method == "PROPFIND" and in_homes:
        body = spec.body if spec.body is not None else await read_body(request, router.max_body)
        try:
            wanted = davxml.parse_propfind(body)
        except davxml.XmlError:
            # not ours to judge: the upstream answers a bad PROPFIND in its own words
            return await forward(request, replace(spec, body=body), router.max_body, router.allowed)
        depth = request.headers.get("Depth", "infinity").strip()
        extra = await _listing_extras(router, ctx, user, wanted, body) if depth != "0" else []
        target = canonical(_slash(ctx.rest))
        is_home = target in homes
        owned = sharing.owns_collection(user, target)
        shared = owned and bool(sharing.store.shares_of_collection(upstream.name, target))
        edits = (
            bool(extra)
            or wanted.wants_any(OWNED_PROPS)
            or (wanted.wants(PRIVILEGES) and (is_home or owned))
            or (wanted.wants(RESOURCETYPE) and (is_home or shared))
        )
        if not edits:
            # nothing of davproxy's in the answer: plain passthrough (compression kept)
            return await forward(request, replace(spec, body=body), router.max_body, router.allowed)
        principal = canonical(upstream.user_paths(user).principal)
        notification_url = collection_path(upstream, user)
        roles: dict[str, tuple[str | None, Share | None]] = {}

        def role_of(path: str) -> tuple[str, str | None, Share | None]:
            """Each listed path is classified once, whichever hook asks first."""
            rest = upstream.rest_of(path)
            if rest is None:
                return "", None, None
            key = canonical(_slash(rest))
            if key not in roles:
                roles[key] = sharing.role(user, key)
            return (key, *roles[key])

        def provide(path: str) -> dict[str, etree._Element] | None:
            if canonical(path) == principal:
                return {
                    NOTIFICATION_URL: element(NOTIFICATION_URL, href(notification_url)),
                    CS_NOTIFICATION_URL: element(CS_NOTIFICATION_URL, href(notification_url)),
                }
            rest, role, share = role_of(path)
            if role == "owned":
                return sharing.properties.owner_props(rest)
            if role == "copy" and share is not None:  # a copy the upstream lists itself
                return sharing.properties.copy_props(share)
            return None

        def share_privilege(path: str, node: etree._Element) -> bool:
            """The owner may share their collections: D:share (resource-sharing §5.1);
            shared ones and copies carry Apple's resourcetype markers."""
            rest, role, _ = role_of(path)
            changed = False
            marker = sharing.shared_marker(role, rest)
            if marker is not None:
                changed = davxml.add_resourcetype(node, marker)
            if role == "owned":
                changed = davxml.add_privilege(node, f"{{{DAV}}}share") or changed
            return changed

        def edit(answer: bytes) -> bytes:
            return davxml.augment(answer, wanted, provide, extra, share_privilege)

        spec = replace(spec, body=body, edit_xml=edit)
    elif method == "DELETE" and sharing.store.shares_under(
        upstream.name, canonical(_slash(ctx.rest))
    ):
        # a shared collection, or a home (or anything else) that holds one
        answers: list[web.StreamResponse] = []

        async def send() -> int:
            answers.append(await forward(request, spec, router.max_body, router.allowed))
            return answers[0].status

        await sharing.delete_owned(user, ctx.rest, send)
        return answers[0]
    return await forward(request, spec, router.max_body, router.allowed)


_NOT_FOR_EXPORTS = frozenset(
    {"content-length", "accept-encoding", "if-none-match", "if-modified-since", "if-match"}
)


async def _enhanced_export(
    router: Router, ctx: Context, user: str, spec: Forward
) -> web.StreamResponse:
    """Enhanced GET on an upstream calendar: fetch its export as the client, then let
    the subscription machinery answer with what changed since the client's token."""
    request, site = ctx.request, ctx.site
    headers = end_to_end(request.headers, spec.drop_headers | _NOT_FOR_EXPORTS)
    headers.update(spec.set_headers)
    cap = site.subscriptions.settings.max_bytes
    async with site.upstream.request("GET", spec.path, headers) as answer:
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
    return await site.subscriptions.serve_export(request, user, ctx.rest, ctx.path, body)


async def _listing_extras(
    router: Router, ctx: Context, user: str, wanted: davxml.PropRequest, body: bytes
) -> list[etree._Element]:
    """Members davproxy adds to a Depth 1 listing of a home: the user's shared copies
    that live in it, and (calendar home) the notification collection."""
    site = ctx.site
    upstream, sharing = site.upstream, site.sharing
    home = canonical(_slash(ctx.rest))
    extras: list[etree._Element] = []
    if home == canonical(upstream.rest_of(upstream.user_paths(user).calendar_home) or ""):
        path = collection_path(upstream, user)
        props = site.notifications.collection_props(user)
        extras.append(davxml.answer(path, props, wanted, frozenset({f"{{{DAV}}}sync-token"})))
    extras += site.subscriptions.listing(user, home, wanted)
    if sharing.native is not None:
        return extras  # Radicale lists the user's map shares itself (``provide`` adds ours)
    for share in sharing.store.mounts_of(upstream.name, user):
        mount = share.mount or ""
        parent = mount.rstrip("/").rsplit("/", 1)[0] + "/"
        if parent != home:
            continue
        node = await _copy_listing(router, ctx, share, wanted, body)
        if node is not None:
            extras.append(node)
    return extras


async def _copy_listing(
    router: Router, ctx: Context, share: Share, wanted: davxml.PropRequest, body: bytes
) -> etree._Element | None:
    """The copy's own response: the owner's collection, fetched as the owner, shown
    under the copy's path with the sharee's properties."""
    site = ctx.site
    upstream, sharing = site.upstream, site.sharing
    path, extra = upstream.target(share.collection)
    headers = {
        **sharing.as_user(share.owner),
        **extra,
        "Depth": "0",
        "Content-Type": "application/xml; charset=utf-8",
    }
    async with upstream.request("PROPFIND", path, headers, body) as answer:
        text = await answer.read()
        if answer.status != 207:
            return None  # the owner's collection is gone: list nothing rather than fail
    try:
        root = davxml.parse(text)
    except davxml.XmlError:
        return None
    node = root.find(davxml.RESPONSE)
    if node is None:
        return None
    copy_path = upstream.paths.public + (share.mount or "")
    link = node.find(davxml.HREF)
    if link is not None:
        link.text = copy_path
    document = davxml.multistatus(node)
    edited = davxml.augment(
        davxml.serialize(document),
        wanted,
        _copy_provider(sharing, share, copy_path),
        None,
        _copy_marker(copy_path),
    )
    return davxml.parse(edited).find(davxml.RESPONSE)


def _slash(rest: str) -> str:
    return rest if rest.endswith("/") else rest + "/"
