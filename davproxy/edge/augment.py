"""The user's own requests: passthrough, and the *augment* outcome.

A user's own request goes to the upstream unchanged; where the answer shows something
davproxy owns, davproxy adds it: the notification URL on the principal, the user's
shared copies, subscriptions and notification collection in home listings, the sharing
state of shared collections (``D:share`` privilege, ``CS:shared-owner``), the sharing
feature tokens on homes, subscription links on calendar exports.  Deleting something
that holds shares ends them, crash-safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace

from aiohttp import web
from lxml import etree

from davproxy.dav import davxml
from davproxy.dav.davxml import CALDAV, CS, DAV, element, href
from davproxy.dav.errors import DavError
from davproxy.dav.http import preferences
from davproxy.dav.paths import PathRejected, canonical, resolve_path, slash
from davproxy.edge.sites import Site
from davproxy.feeds.views import ENHANCED
from davproxy.sharing import copies, peruser_view
from davproxy.sharing.copies import SHARING_TOKENS
from davproxy.sharing.model import shareable_type
from davproxy.sharing.notifications import collection_path
from davproxy.sharing.principals import PRINCIPAL_TOKENS
from davproxy.sharing.properties import SUPPORTED_PRIVILEGES, supported_share
from davproxy.store.records import Share
from davproxy.upstream.site import Context

NOTIFICATION_URL = f"{{{DAV}}}notification-URL"
CS_NOTIFICATION_URL = f"{{{CS}}}notification-URL"
GROUP_MEMBERSHIP = f"{{{DAV}}}group-membership"  # RFC 3744 §4.4: the user's groups
# What the user's homes offer: sharing, and subscriptions kept on the server (Apple
# clients store a subscription in the home only when the server announces this; sabre/dav
# uses the same token).
HOME_TOKENS = (*SHARING_TOKENS, "calendarserver-subscribed", *PRINCIPAL_TOKENS)
# Upstream properties davproxy extends: the privilege set (D:share on the user's own
# collections) and resourcetype (CS:shared-owner / CS:shared markers).
PRIVILEGES = f"{{{DAV}}}current-user-privilege-set"
RESOURCETYPE = f"{{{DAV}}}resourcetype"
DEFAULT_CALENDAR = f"{{{CALDAV}}}schedule-default-calendar-URL"
VALID_DEFAULT_CALENDAR = f"{{{CALDAV}}}valid-schedule-default-calendar-URL"
# Properties davproxy adds to a user's own principal and collections.
OWNED_PROPS = frozenset(
    {
        NOTIFICATION_URL,
        CS_NOTIFICATION_URL,
        GROUP_MEMBERSHIP,
        f"{{{DAV}}}share-access",
        f"{{{DAV}}}invite",
        f"{{{DAV}}}share-resource-uri",
        f"{{{CS}}}invite",
        f"{{{CS}}}allowed-sharing-modes",
        f"{{{CS}}}shared-url",
        SUPPORTED_PRIVILEGES,
    }
)


async def serve(ctx: Context, site: Site, user: str) -> web.StreamResponse:
    """The user's own request: passthrough, with sharing state added to the answer."""
    request, spec = ctx.request, ctx.spec()
    sharing, upstream = site.sharing, site.upstream
    method = request.method
    homes = sharing.homes(user)
    in_homes = any(ctx.rest.startswith(home) for home in homes)
    if method in ("GET", "HEAD") and ctx.rest.endswith("/"):
        # a collection exported as one .ics: advertise it as a subscription access point
        if method == "GET" and ENHANCED in preferences(request):
            return await site.subscriptions.serve_export(ctx, user, spec)
        spec = replace(spec, add_headers=site.subscriptions.export_links(ctx.path))
    if method == "OPTIONS" and in_homes:
        spec = replace(spec, dav_tokens=HOME_TOKENS)
    elif method == "PROPFIND" and in_homes:
        body = await ctx.body()
        try:
            wanted = davxml.parse_propfind(body)
        except davxml.XmlError:
            # not ours to judge: the upstream answers a bad PROPFIND in its own words
            return await ctx.forward(replace(spec, body=body))
        depth = request.headers.get("Depth", "infinity").strip()
        extra, here = _listing_extras(site, user, ctx.rest, wanted) if depth != "0" else ([], [])
        target = canonical(slash(ctx.rest))
        is_home = target in homes
        owned = sharing.owns_collection(user, target)
        shared = owned and bool(sharing.store.shares_of_collection(upstream.name, target))
        edits = (
            bool(extra or here)
            or wanted.wants_any(OWNED_PROPS)
            or (wanted.wants(PRIVILEGES) and (is_home or owned))
            or (wanted.wants(SUPPORTED_PRIVILEGES) and owned)
            or (wanted.wants(RESOURCETYPE) and (is_home or shared))
        )
        if not edits:
            # nothing of davproxy's in the answer: plain passthrough (compression kept)
            return await ctx.forward(replace(spec, body=body))
        principal = canonical(upstream.user_paths(user).principal)
        notification_url = collection_path(upstream, user)
        roles: dict[str, tuple[str | None, Share | None]] = {}
        listed_privileges: set[str] = set()  # paths the upstream lists privileges of

        def role_of(path: str) -> tuple[str, str | None, Share | None]:
            """Each listed path is classified once, whichever hook asks first."""
            rest = upstream.rest_of(path)
            if rest is None:
                return "", None, None
            key = canonical(slash(rest))
            if key not in roles:
                roles[key] = sharing.role(user, key)
            return (key, *roles[key])

        def provide(path: str) -> Mapping[str, etree._Element] | None:
            if canonical(path) == principal:
                return {
                    NOTIFICATION_URL: element(NOTIFICATION_URL, href(notification_url)),
                    CS_NOTIFICATION_URL: element(CS_NOTIFICATION_URL, href(notification_url)),
                    GROUP_MEMBERSHIP: element(
                        GROUP_MEMBERSHIP,
                        *(
                            href(sharing.groups.principal(g))
                            for g in sharing.groups.memberships(user)
                        ),
                    ),
                }
            rest, role, share = role_of(path)
            if role == "owned":
                props = sharing.properties.owner_props(rest)
                if props is not None and rest in listed_privileges:
                    del props[SUPPORTED_PRIVILEGES]  # the upstream's, with D:share added
                return props
            if role == "copy" and share is not None:  # a copy the upstream lists itself
                return sharing.properties.copy_props(share)
            return None

        def share_privilege(path: str, node: etree._Element) -> bool:
            """The owner may share their collections: D:share (resource-sharing §5.1);
            shared ones and copies carry Apple's resourcetype markers.  What the answer
            shows to be no shareable collection (an inbox, a principal ...) gets none of
            it, nor the properties ``provide`` adds (this runs first for each response)."""
            rest, role, share = role_of(path)
            types = davxml.resourcetypes(node)
            if role == "owned" and types is not None and not shareable_type(types):
                roles[rest] = (None, None)
                role = None
            changed = False
            marker = sharing.properties.shared_marker(role, rest)
            if marker is not None:
                changed = davxml.add_resourcetype(node, marker)
            if role == "copy" and share is not None:  # listed by the upstream itself
                changed = peruser_view.listed(sharing.store, share, node) or changed
            if role == "owned":
                changed = davxml.add_privilege(node, f"{{{DAV}}}share") or changed
                listed = davxml.found_prop(node, SUPPORTED_PRIVILEGES)
                if listed is not None:  # an upstream that lists privileges: D:share joins
                    listed_privileges.add(rest)
                    if listed.find(f".//{{{DAV}}}privilege/{{{DAV}}}share") is None:
                        listed.append(supported_share())
                        changed = True
            return changed

        async def edit(answer: bytes) -> bytes:
            listed = extra + (await fetching if fetching is not None else [])
            return davxml.augment(answer, wanted, provide, listed, share_privilege)

        # the copies in a listed home are fetched while the upstream lists the home
        fetching = None
        if here:
            fetching = asyncio.ensure_future(copies.listing(ctx, sharing, here, wanted, body))
        try:
            return await ctx.forward(replace(spec, body=body, edit_xml=edit))
        finally:
            if fetching is not None:  # done by now, unless the upstream's answer failed
                fetching.cancel()
                if fetching.done() and not fetching.cancelled():
                    fetching.exception()  # seen: an unused failure is not logged as lost
    elif method == "PROPPATCH":
        body = await ctx.body()
        _refuse_shared_default_calendar(site, user, body)
        spec = replace(spec, body=body)
    elif method == "DELETE" and (
        sharing.store.shares_under(upstream.name, canonical(slash(ctx.rest)))
        or sharing.groups.holds(canonical(slash(ctx.rest)))
    ):
        # a shared collection, or a home (or anything else) that holds one
        answers: list[web.StreamResponse] = []

        async def send() -> int:
            answers.append(await ctx.forward(spec))
            return answers[0].status

        await sharing.delete_owned(user, ctx.rest, send)
        return answers[0]
    elif method == "DELETE" and not ctx.rest.endswith("/"):
        answer = await ctx.forward(spec)
        if 200 <= answer.status < 300:  # the sharees' alarms of it go too
            peruser_view.member_deleted(sharing, ctx.rest)
        return answer
    return await ctx.forward(spec)


def _refuse_shared_default_calendar(site: Site, user: str, body: bytes) -> None:
    """The default calendar for scheduling (RFC 6638 §9.2) may not be a shared copy
    (CalendarServer caldav-sharing §5.5.2, caldav-sharing-01 §4) nor a subscription:
    403 ``C:valid-schedule-default-calendar-URL``, and the upstream never sees it."""
    if b"schedule-default-calendar-URL" not in body:
        return  # most PROPPATCHes: nothing to parse here
    try:
        root = davxml.parse(body)
    except davxml.XmlError:
        return  # the XML gate answers it
    for node in root.iterfind(f"{{{DAV}}}set/{davxml.PROP}/{DEFAULT_CALENDAR}/{davxml.HREF}"):
        try:
            path = resolve_path(davxml.href_path(node.text or "").partition("?")[0])
        except PathRejected:
            raise DavError(403, VALID_DEFAULT_CALENDAR, "the href is not accepted") from None
        rest = site.upstream.rest_of(path)
        if rest is None:
            continue
        if (
            site.sharing.mount_for(user, rest) is not None
            or site.subscriptions.mounted(user, rest) is not None
        ):
            raise DavError(
                403,
                VALID_DEFAULT_CALENDAR,
                "the default calendar cannot be a shared copy or a subscription",
            )


def _listing_extras(
    site: Site, user: str, rest: str, wanted: davxml.PropRequest
) -> tuple[list[etree._Element], list[Share]]:
    """Members davproxy adds to a Depth 1 listing of a home: the notification collection
    (calendar home) and subscriptions, built here, and the user's shared copies that
    live in it, to be fetched from their owners (``copies.listing``)."""
    upstream, sharing = site.upstream, site.sharing
    home = canonical(slash(rest))
    extras: list[etree._Element] = []
    if home == canonical(upstream.rest_of(upstream.user_paths(user).calendar_home) or ""):
        path = collection_path(upstream, user)
        props = site.notifications.collection_props(user)
        extras.append(davxml.answer(path, props, wanted, frozenset({f"{{{DAV}}}sync-token"})))
    extras += site.subscriptions.listing(user, home, wanted)
    if sharing.access.upstream_serves_copies:
        return extras, []  # the upstream lists the user's copies itself (``provide`` adds ours)
    here = [
        share
        for share in sharing.store.mounts_of(upstream.name, user)
        if (share.mount or "").rstrip("/").rsplit("/", 1)[0] + "/" == home
    ]
    return extras, here
