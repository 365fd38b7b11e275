"""A sharee's copy of someone else's collection: the *rewrite* outcome.

Requests under a copy are rewritten to the owner's collection and forwarded as the
owner, with the sharee's access enforced here first; every href in the answer is mapped
back to the copy (resource-sharing-04 §4.6, caldav-sharing §4).  Where the access backend
makes the upstream serve copies itself (radicale-native), the request goes to the copy's
own path as the sharee and davproxy only adds the sharing properties; where the upstream
enforces shares on the owner's collection (acl), the request is rewritten there but sent
as the sharee.  The copy's own response in its parent's Depth 1 listing is built here too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import replace

from aiohttp import web
from lxml import etree

from davproxy.dav import davxml, textedit
from davproxy.dav.davxml import CS, DAV
from davproxy.dav.errors import NEED_PRIVILEGES, DavError
from davproxy.dav.http import multistatus_response
from davproxy.dav.paths import PathMap, PathRejected, canonical, resolve_path, slash, within
from davproxy.sharing import peruser_view
from davproxy.sharing.model import READ_METHODS, WRITE_METHODS, Sharing
from davproxy.store.records import Share
from davproxy.upstream.proxy import Forward
from davproxy.upstream.site import Context

# Shared calendars cannot schedule through davproxy: said so, as CalendarServer does.
SHARING_TOKENS = (
    "resource-sharing",
    "calendarserver-sharing",
    "calendarserver-sharing-no-scheduling",
)


async def serve(ctx: Context, sharing: Sharing, share: Share, below: str) -> web.StreamResponse:
    """A request at ``below`` under the sharee's copy of ``share``."""
    upstream = ctx.upstream
    method = ctx.method
    copy_path = upstream.paths.public + (share.mount or "")
    if below == "":
        if method == "DELETE":
            await sharing.unbind(share)
            return web.Response(status=204)
        if method == "PROPPATCH":
            return multistatus_response(
                sharing.properties.set_instance_props(share, await ctx.body())
            )
        if method in ("MKCOL", "MKCALENDAR", "PUT", "MOVE", "COPY"):
            raise DavError(403, NEED_PRIVILEGES, "a shared copy cannot be replaced or moved")
    if (
        share.access == "read"
        and method not in READ_METHODS
        and not peruser_view.may_write(share, method, below)
    ):
        raise DavError(403, NEED_PRIVILEGES, "this share is read-only")
    if method not in WRITE_METHODS | READ_METHODS:
        # requests under a copy may run as the owner: only methods whose effect is known
        raise DavError(403, NEED_PRIVILEGES, f"{method} is not available on a shared copy")

    if method in ("MOVE", "COPY"):
        # strictly inside: onto the copy itself would replace the owner's collection
        destination = canonical(davxml.href_path(ctx.destination or ""))
        root = canonical(copy_path).rstrip("/")
        if not destination.startswith(root + "/") or destination.rstrip("/") == root:
            raise DavError(403, NEED_PRIVILEGES, "objects cannot be moved out of a shared copy")

    request_body = await ctx.body() if method in ("PROPFIND", "REPORT") else None

    def edit(body: bytes) -> bytes:
        wanted = _wanted(method, request_body)
        return davxml.augment(
            body, wanted, _copy_provider(sharing, share, copy_path), None, _copy_marker(copy_path)
        )

    edit_xml = None
    if method == "PROPFIND" or (method == "REPORT" and await _asks_privileges(ctx)):
        edit_xml = edit
    if sharing.access.upstream_serves_copies:
        # The upstream enforces this share itself: the request goes to the copy's own
        # path, as the sharee; davproxy only adds the sharing properties.
        return await _forward(ctx, sharing, share, below, replace(ctx.spec(), edit_xml=edit_xml))

    origin = ctx.origin
    copy = PathMap(copy_path, upstream.paths.public + share.collection)
    # as the owner, unless the upstream checks the sharee itself (acl): then as the client
    acting = None if sharing.access.upstream_enforces else share.owner
    base = ctx.spec(share.collection + below, acting)
    to_upstream = base.request_hrefs or (lambda h: h)
    to_public = base.response_hrefs or (lambda h: h)
    copy_key, owner_key = canonical(copy_path), canonical(upstream.paths.public + share.collection)

    request_hrefs = copy_request_hrefs(copy_key, owner_key, to_upstream)

    def response_hrefs(value: str) -> str:
        return copy.href_to_public(to_public(value), upstream.origin, origin)

    spec = replace(
        base,
        request_hrefs=request_hrefs,
        response_hrefs=response_hrefs,
        strict_bodies=True,
        edit_xml=edit_xml,
        dav_tokens=SHARING_TOKENS if method == "OPTIONS" else (),
    )
    if method == "REPORT" and request_body:
        mapped = await _body_on_text(ctx, request_body, request_hrefs, (copy_path, copy_key))
        if mapped is not None:
            spec = replace(spec, body=mapped, body_mapped=True)
    return await _forward(ctx, sharing, share, below, spec)


def copy_request_hrefs(
    copy_key: str, owner_key: str, to_upstream: Callable[[str], str]
) -> Callable[[str], str]:
    """How a client href under a copy (multiget, Destination; both keys canonical)
    becomes the owner's, as the upstream knows it."""

    def request_hrefs(value: str) -> str:
        """Requests under a copy run *as the owner*: an href outside the copy (or one
        the upstream would resolve elsewhere) would read the owner's other data, so it
        is refused rather than passed on."""
        path = davxml.href_path(value).partition("?")[0]
        try:
            path = canonical(resolve_path(path))  # '//' collapsed, '..' refused
        except PathRejected as exc:
            raise DavError(400, None, f"href not accepted: {exc}") from None
        below = within(path, copy_key)
        if below is None:
            raise DavError(403, NEED_PRIVILEGES, "hrefs must stay inside the shared copy")
        return to_upstream(owner_key + below)

    return request_hrefs


_PROBE = "0.A_z~-9"  # one of each kind of character a plain member name may hold


async def _body_on_text(
    ctx: Context, body: bytes, mapper: Callable[[str], str], spellings: tuple[str, ...]
) -> bytes | None:
    """A REPORT body whose every href is the copy's path (as davproxy spells it) and a
    plain member name, mapped on its text (dav/textedit.py: the hrefs' prefix replaced,
    nothing else touched) instead of parsed, mapped href by href and written again;
    None when it is anything else (then the tree is mapped, as before).  ``mapper``
    maps such an href to its prefix's mapping followed by the same name, which is
    checked here on a probe (and in tests/unit/test_textedit_request.py on any)."""
    try:
        root = await ctx.xml()
    except davxml.XmlError:
        return None  # the XML gate refuses it
    for old in dict.fromkeys(spellings):
        try:
            new = mapper(old + _PROBE)
        except DavError:
            continue
        if not old.endswith("/") or not new.endswith(_PROBE):
            continue
        try:
            return textedit.map_prefix(root, body, old, new[: -len(_PROBE)])
        except textedit.Unsupported:
            continue
    return None


async def _forward(
    ctx: Context, sharing: Sharing, share: Share, below: str, spec: Forward
) -> web.StreamResponse:
    """The one place a request under a copy leaves: in a calendar, through the sharee's
    per-user view (their own alarms and transparency, sharing/peruser_view.py)."""
    if share.kind == "calendar":
        copy_path = ctx.upstream.paths.public + (share.mount or "")
        return await peruser_view.serve(ctx, sharing, share, below, spec, copy_path)
    return await ctx.forward(spec)


async def listing(
    ctx: Context, sharing: Sharing, shares: list[Share], wanted: davxml.PropRequest, body: bytes
) -> list[etree._Element]:
    """The copies' own responses in a listing of their parent: each owner's collection,
    fetched as the owner, shown under the copy's path with the sharee's properties.

    Copies of one owner's collections that share a parent come from one Depth 1
    PROPFIND of that parent (one round trip, not one per copy), and the owners are
    asked at once; a collection that is gone is left out rather than failing the
    listing."""
    groups: dict[tuple[str, str], list[Share]] = {}
    for share in shares:
        parent = share.collection.rstrip("/").rsplit("/", 1)[0] + "/"
        groups.setdefault((share.owner, parent), []).append(share)
    found = await asyncio.gather(
        *(
            _collections(ctx, owner, parent, group, body)
            for (owner, parent), group in groups.items()
        )
    )
    upstream = ctx.upstream
    nodes, by_copy = [], {}
    for share, node in (pair for pairs in found for pair in pairs):
        copy_path = upstream.paths.public + (share.mount or "")
        link = node.find(davxml.HREF)
        if link is not None:
            link.text = copy_path
        nodes.append(node)
        by_copy[canonical(copy_path).rstrip("/")] = share
    if not nodes:
        return []

    def provide(path: str) -> Mapping[str, etree._Element] | None:
        share = by_copy.get(canonical(path).rstrip("/"))
        return sharing.properties.copy_props(share) if share is not None else None

    def mark(path: str, node: etree._Element) -> bool:
        if canonical(path).rstrip("/") not in by_copy:
            return False
        return davxml.add_resourcetype(node, f"{{{CS}}}shared")

    edited = davxml.augment(
        davxml.serialize(davxml.multistatus(*nodes)), wanted, provide, None, mark
    )
    listed = davxml.parse(edited).findall(davxml.RESPONSE)
    for node in listed:
        listed_share = by_copy.get(canonical(node.findtext(davxml.HREF) or "").rstrip("/"))
        if listed_share is not None:  # the sharee's sync token and ctag
            peruser_view.listed(sharing.store, listed_share, node)
    return listed


async def _collections(
    ctx: Context, owner: str, parent: str, shares: list[Share], body: bytes
) -> list[tuple[Share, etree._Element]]:
    """The upstream's responses for the owner's shared collections below ``parent``."""
    upstream = ctx.upstream
    single = len(shares) == 1
    path, extra = upstream.target(shares[0].collection if single else parent)
    headers = {
        **ctx.auth.headers_for(owner),
        **extra,
        "Depth": "0" if single else "1",
        "Content-Type": "application/xml; charset=utf-8",
    }
    async with upstream.request("PROPFIND", path, headers, body) as answer:
        text = await answer.read()
        if answer.status != 207:
            return []  # the owner's collection is gone: list nothing rather than fail
    try:
        root = davxml.parse(text)
    except davxml.XmlError:
        return []
    wanted = {canonical(share.collection): share for share in shares}
    pairs = []
    for node in root.iterfind(davxml.RESPONSE):
        rest = upstream.rest_of(upstream.public_path(node.findtext(davxml.HREF) or ""))
        share = wanted.get(canonical(slash(rest))) if rest is not None else None
        if share is not None:
            pairs.append((share, node))
    return pairs


def _copy_provider(
    sharing: Sharing, share: Share, copy_path: str
) -> Callable[[str], Mapping[str, etree._Element] | None]:
    copy_path = canonical(copy_path)

    def provide(path: str) -> Mapping[str, etree._Element] | None:
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


async def _asks_privileges(ctx: Context) -> bool:
    """Whether a REPORT asks for the privileges of what it lists: the upstream answers
    them as the owner, so the sharee's replace them (nothing else of a report is ours)."""
    try:
        prop = (await ctx.xml()).find(davxml.PROP)
    except davxml.XmlError:
        return False  # the XML gate refuses it before it is forwarded
    return prop is not None and prop.find(f"{{{DAV}}}current-user-privilege-set") is not None


def _wanted(method: str, body: bytes | None) -> davxml.PropRequest:
    if method != "PROPFIND":
        return davxml.PropRequest("prop", (f"{{{DAV}}}current-user-privilege-set",))
    return davxml.parse_propfind(body or b"")
