"""A sharee's view of a shared calendar: their own alarms and transparency.

The hook of ``sharing/copies.py`` for calendar copies (per-user-data digest §§7-9,
caldav-sharing §5.5.4).  The owner's requests never come here: they see and edit what
is stored upstream.  Under a sharee's copy:

- GET and every ``calendar-data`` in a REPORT or PROPFIND answer show the upstream
  object without anybody's personal lines, then the sharee's own (``peruser.render``);
- ETags are the sharee's (``peruser_store.sharee_etag``): ``If-Match`` and
  ``If-None-Match`` are judged against them, and a write goes upstream with the
  upstream's own ETag, so concurrent writers are still serialised (stale: 412);
- a PUT is split: the sharee's personal data is kept here, what goes upstream is the
  shared part with the owner's personal lines as stored.  A PUT that changes personal
  data only never reaches the upstream, so a read-only sharee may make it;
- ``sync-collection`` tokens carry the upstream's token and the per-user revision: a
  member whose own data changed is reported along with the upstream's changes;
- a ``calendar-query`` filtering on alarms or transparency is asked of the upstream
  without those filters and decided here on the sharee's view.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import hashlib
import logging
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from aiohttp import web
from lxml import etree
from multidict import CIMultiDictProxy

from davproxy.dav import davxml, textedit
from davproxy.dav.davxml import CALDAV, CS, DAV
from davproxy.dav.errors import NEED_PRIVILEGES, VALID_SYNC_TOKEN, DavError, PlainError
from davproxy.dav.paths import canonical, within
from davproxy.feeds import caldav_query
from davproxy.sharing import peruser, peruser_time
from davproxy.sharing.model import Sharing
from davproxy.sharing.peruser_store import Entry, PerUserStore, sharee_etag
from davproxy.store import Store
from davproxy.store.records import Share
from davproxy.upstream.proxy import Forward, end_to_end
from davproxy.upstream.site import Context

log = logging.getLogger("davproxy.sharing")

VALID_CALENDAR_DATA = f"{{{CALDAV}}}valid-calendar-data"
GETETAG = f"{{{DAV}}}getetag"
SYNC_TOKEN = f"{{{DAV}}}sync-token"
GETCTAG = f"{{{CS}}}getctag"
CALENDAR_DATA = peruser_time.CALENDAR_DATA
SYNC_COLLECTION = f"{{{DAV}}}sync-collection"
CALENDAR_QUERY = f"{{{CALDAV}}}calendar-query"
COMP_FILTER = f"{{{CALDAV}}}comp-filter"
PROP_FILTER = f"{{{CALDAV}}}prop-filter"
# A sync token of a copy: the upstream's, then this marker, the copy's tag and revision.
TOKEN_MARK = "#davproxy-peruser-"
# Conditional headers are the sharee's: judged here, never passed on as they are.
CONDITIONAL = frozenset({"if-match", "if-none-match", "if"})


class View:
    """What one request under a sharee's calendar copy needs to show their view."""

    def __init__(self, ctx: Context, sharing: Sharing, share: Share, spec: Forward, copy_path: str):
        self.ctx, self.share, self.spec = ctx, share, spec
        self.store = PerUserStore(sharing.store)
        self.copy_key = canonical(copy_path).rstrip("/") + "/"
        self.tag = _tag(share)

    # -- upstream requests of davproxy's own ---------------------------------------------

    async def send(
        self, method: str, headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """The request's target, as the forward would reach it (same identity)."""
        spec, request = self.spec, self.ctx.request
        sent = dict(spec.set_headers)
        if "authorization" not in spec.drop_headers and "Authorization" in request.headers:
            sent.setdefault("Authorization", request.headers["Authorization"])
        sent.update(headers or {})
        async with self.ctx.upstream.request(method, spec.path, sent, body) as answer:
            return answer.status, answer.headers, await answer.read()

    # -- keys, ETags, tokens --------------------------------------------------------------

    def member_of(self, href: str) -> str | None:
        """The member name of an href in an answer ('' for the copy itself)."""
        path = davxml.href_path(href)
        plain = path.isascii() and "%" not in path and "//" not in path
        if plain and path.startswith(self.copy_key):
            return path[len(self.copy_key) :]  # already canonical: the common case
        return within(canonical(path), self.copy_key)

    def etag(self, upstream_etag: str, entry: Entry | None) -> str:
        return sharee_etag(upstream_etag, entry.revision if entry is not None else 0)

    def token(self, upstream_token: str, revision: int) -> str:
        return copy_token(self.share, upstream_token, revision)

    def parse_token(self, value: str) -> tuple[str, int]:
        """(upstream token, revision) of a client's token; '' stands for an initial sync."""
        value = value.strip()
        if not value:
            return "", 0
        upstream, mark, rest = value.rpartition(TOKEN_MARK)
        tag, _, digits = rest.partition("-")
        if (
            not mark
            or tag != self.tag
            or not (digits.isascii() and digits.isdigit() and len(digits) < 19)
            or int(digits) > self.store.revision()
        ):
            raise DavError(403, VALID_SYNC_TOKEN, "unknown or expired sync token")
        return upstream, int(digits)

    def text(self, text: str, entry: Entry | None) -> str:
        """An object (or export) as the sharee sees it."""
        if entry is None and not peruser.might_hold_personal(text):
            return text  # nothing anybody could own: the upstream's text as it is
        try:
            obj = _parsed(text)
        except (peruser.NotCalendarData, peruser.InjectedData):
            return text  # not one davproxy can split: as the upstream has it
        mine = None
        if entry is not None and entry.uid == obj.uid:
            mine = peruser.lookup(entry.personal)
        return peruser.render(obj, mine)

    # -- multistatus answers --------------------------------------------------------------

    def edit(self, body: bytes, extra: Sequence[etree._Element] = (), revision: int = 0) -> bytes:
        """Each member's ETag and calendar-data become the sharee's; the copy's sync
        token and ctag carry the per-user revision."""
        if self.spec.edit_xml is not None:
            edited = self.spec.edit_xml(body)
            assert isinstance(edited, bytes)  # a copy's own edit never awaits anything
            body = edited
        root = davxml.parse(body)
        self.edit_tree(root, extra, revision)
        return davxml.serialize(root)

    def spec_editing(self, extra: Sequence[etree._Element] = (), revision: int = 0) -> Forward:
        """The forward with this view's edit: on the parsed answer (one parse with the
        href mapping) unless the copy has an edit of its own on the bytes first."""
        if self.spec.edit_xml is None:

            def text(root: etree._Element, body: bytes) -> bytes:
                return self.edit_text(root, body, revision)

            return replace(
                self.spec,
                edit_tree=lambda root: self.edit_tree(root, extra, revision),
                edit_text=None if extra else text,
            )
        return replace(self.spec, edit_xml=lambda body: self.edit(body, extra, revision))

    def edit_tree(
        self, root: etree._Element, extra: Sequence[etree._Element] = (), revision: int = 0
    ) -> None:
        """``edit`` on a parsed answer, in place: one pass over the responses, each
        member's ETag and calendar-data found by tag (not by path)."""
        token = root.find(SYNC_TOKEN)
        if extra:
            present = {node.findtext(davxml.HREF) for node in root.iterchildren(davxml.RESPONSE)}
            for node in extra:
                if node.findtext(davxml.HREF) not in present:
                    (token.addprevious if token is not None else root.append)(node)
        entries = self.store.entries(self.share)
        for node in root.iterchildren(davxml.RESPONSE):
            member = self.member_of(node.findtext(davxml.HREF) or "")
            if member is None:
                continue
            if member == "" or member.endswith("/"):
                self._edit_collection(node)
                continue
            entry = entries.get(member)
            if entry is not None and " 404 " in (node.findtext(davxml.STATUS) or ""):
                # reported gone (a sync): whoever deleted it, nobody's data of it stays
                self.store.forget(self.share.upstream, self.share.collection, member)
                continue
            for prop in node.iter(GETETAG, CALENDAR_DATA):
                if not prop.text or not _is_property(prop, node):
                    continue
                if prop.tag == GETETAG:
                    prop.text = self.etag(prop.text.strip(), entry)
                else:
                    prop.text = self.text(prop.text, entry)
        if token is not None and token.text:
            token.text = self.token(token.text.strip(), revision)

    def edit_text(self, root: etree._Element, body: bytes, revision: int = 0) -> bytes:
        """``edit_tree`` (hrefs mapped first) on the answer's text, ``root`` its parsed
        tree, when nobody has data of this copy's objects and none of them holds
        personal lines: then only the hrefs and ETags change, each ETag by itself
        (dav/textedit.py).  ``textedit.Unsupported`` otherwise: the tree is edited."""
        if self.store.entries(self.share) or peruser.might_hold_personal(body):
            raise textedit.Unsupported("per-user data to show")
        old = self.spec.path.partition("?")[0]
        hrefs = self.spec.response_hrefs or (lambda href: href)
        new = hrefs(old + "x")[:-1]
        if not old.endswith("/") or self.member_of(new + "x") != "x":
            raise textedit.Unsupported("not a collection whose members map by prefix")
        etags = {GETETAG: lambda etag: _bare_etag(etag.strip())}
        return textedit.edit(root, body, old, new, etags, lambda t: self.token(t, revision))

    def _edit_collection(self, node: etree._Element) -> None:
        listed(self.store.store, self.share, node)


def _is_property(node: etree._Element, response: etree._Element) -> bool:
    """Whether ``node`` is a property of the response (``propstat/prop/*``), not a value
    nested inside one."""
    prop = node.getparent()
    propstat = prop.getparent() if prop is not None else None
    owner = propstat.getparent() if propstat is not None else None
    return owner is response and (prop.tag, propstat.tag) == (davxml.PROP, davxml.PROPSTAT)  # type: ignore[union-attr]


@functools.lru_cache(maxsize=4096)
def _bare_etag(upstream_etag: str) -> str:
    """A sharee's ETag of an object nobody has data of (the same for every request)."""
    return sharee_etag(upstream_etag, 0)


@functools.lru_cache(maxsize=4096)
def _parsed(text: str) -> peruser.CalendarObject:
    """An upstream object as read for rendering (never changed: ``render`` only reads
    it): a sharee's clients fetch the same objects again and again, and parsing was
    half of what the per-user view costs a calendar-multiget."""
    return peruser.parse(text)


def _tag(share: Share) -> str:
    """What ties a token to one copy (one invitation)."""
    return hashlib.sha256(share.invite_uid.encode()).hexdigest()[:12]


def copy_token(share: Share, upstream_token: str, revision: int) -> str:
    return f"{upstream_token}{TOKEN_MARK}{_tag(share)}-{revision}"


def listed(store: Store, share: Share, node: etree._Element) -> bool:
    """The copy's own response, wherever it is listed (under it, or in the sharee's
    home): its sync token and ctag carry the sharee's per-user changes, so a client that
    watches the ctag in the home listing sees its own alarm edits from other devices."""
    if share.kind != "calendar":
        return False
    data = PerUserStore(store)
    changed = False
    for prop in node.iterfind(f"{davxml.PROPSTAT}/{davxml.PROP}/*"):
        if prop.tag == SYNC_TOKEN and prop.text:
            prop.text = copy_token(share, prop.text.strip(), data.revision())
            changed = True
        elif prop.tag == GETCTAG and prop.text:
            newest = data.newest(share)
            prop.text = hashlib.sha256(f"{prop.text}\0{newest}".encode()).hexdigest()[:32]
            changed = True
    return changed


def may_write(share: Share, method: str, below: str) -> bool:
    """A read-only sharee may still PUT their own alarms and transparency on an object
    of a shared calendar (caldav-sharing §6.12); ``_put`` refuses anything more."""
    return share.kind == "calendar" and method == "PUT" and bool(below) and not below.endswith("/")


async def serve(
    ctx: Context, sharing: Sharing, share: Share, below: str, spec: Forward, copy_path: str
) -> web.StreamResponse:
    """A request under a sharee's calendar copy, after the copy's own checks."""
    view = View(ctx, sharing, share, spec, copy_path)
    method = ctx.method
    member = below if below and not below.endswith("/") else None
    if method in ("GET", "HEAD"):
        return await _get(view, member)
    if method == "PUT" and member is not None:
        return await _put(view, member)
    if method == "DELETE" and member is not None:
        return await _delete(view, member)
    if method == "PROPFIND":
        return await ctx.forward(view.spec_editing())
    if method == "REPORT":
        return await _report(view)
    return await ctx.forward(spec)


def member_deleted(sharing: Sharing, rest: str) -> None:
    """The owner deleted an object (``rest``): if its calendar is shared, the sharees'
    data of it goes, so an object made again under that name starts clean."""
    collection, _, member = canonical(rest).rpartition("/")
    if sharing.store.shares_of_collection(sharing.name, collection + "/"):
        PerUserStore(sharing.store).forget(sharing.name, collection + "/", member)


def _matches(header: str | None, etag: str | None) -> bool:
    """Whether an If-Match/If-None-Match list names ``etag`` (``*``: any that exists)."""
    if header is None or etag is None:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in tags or etag in tags


def _relayed(status: int, headers: CIMultiDictProxy[str], body: bytes, **set_: str) -> web.Response:
    out = end_to_end(headers, frozenset({"content-length", "etag", "content-encoding"}))
    out.update(set_)
    return web.Response(status=status, headers=out, body=body)


async def _get(view: View, member: str | None) -> web.StreamResponse:
    request = view.ctx.request
    status, headers, body = await view.send("GET", {"Accept-Encoding": "identity"})
    calendar = headers.get("Content-Type", "").lower().startswith("text/calendar")
    if status == 404 and member is not None:
        view.store.forget(view.share.upstream, view.share.collection, member)
    if status != 200 or not calendar:  # nothing of the sharee's in it: as it came
        kept = {"ETag": headers["ETag"]} if "ETag" in headers else {}
        return _relayed(status, headers, body if request.method == "GET" else b"", **kept)
    entry = view.store.entry(view.share, member) if member is not None else None
    text = view.text(body.decode("utf-8", errors="replace"), entry)
    if member is None:  # a whole-collection export: nobody's personal data
        return _relayed(200, headers, text.encode() if request.method == "GET" else b"")
    etag = view.etag(headers.get("ETag", ""), entry)
    if _matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers={"ETag": etag})
    if "If-Match" in request.headers and not _matches(request.headers["If-Match"], etag):
        raise DavError(412, None, "the object has changed")
    payload = text.encode("utf-8")
    answer = _relayed(200, headers, payload if request.method == "GET" else b"", ETag=etag)
    if request.method == "HEAD":
        answer.headers["Content-Length"] = str(len(payload))
    return answer


async def _current(view: View) -> tuple[str | None, peruser.CalendarObject | None]:
    """The stored object: (upstream ETag, object), (None, None) when there is none."""
    status, headers, body = await view.send("GET", {"Accept-Encoding": "identity"})
    if status == 404:
        return None, None
    if status != 200:
        if status in (401, 403):
            raise DavError(403, NEED_PRIVILEGES, "the upstream refuses to read the object")
        raise PlainError(502, f"Upstream answered {status} to reading the object")
    try:
        return headers.get("ETag", ""), peruser.parse(body)
    except (peruser.NotCalendarData, peruser.InjectedData):
        return headers.get("ETag", ""), None


def _check_conditions(view: View, member: str, upstream_etag: str | None) -> None:
    """The sharee's If-Match / If-None-Match against the ETag they were given: 412."""
    headers = view.ctx.request.headers
    entry = view.store.entry(view.share, member)
    mine = view.etag(upstream_etag, entry) if upstream_etag is not None else None
    if "If-Match" in headers and not _matches(headers["If-Match"], mine):
        raise DavError(412, None, "the object has changed since it was read")
    if _matches(headers.get("If-None-Match"), mine):
        raise DavError(412, None, "the object exists already")


# How often a sharee's PUT is merged again when others keep writing the same object
# (the owner directly, another davproxy process), waiting a little longer each time.
_PUT_ATTEMPTS = 8
_PUT_BACKOFF = 0.02  # seconds, times the attempt, jittered


class _KeyedLocks:
    """One lock per object: the read-merge-write of two sharee PUTs of the same object
    through this process never race each other (only writers elsewhere can interleave,
    and those are retried)."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, ...], tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: tuple[str, ...]) -> AsyncIterator[None]:
        lock, users = self._held.get(key, (asyncio.Lock(), 0))
        self._held[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._held[key]
            if users == 1:
                del self._held[key]
            else:
                self._held[key] = (lock, users - 1)


_WRITING = _KeyedLocks()


async def _put(view: View, member: str) -> web.StreamResponse:
    ctx, share = view.ctx, view.share
    body = await ctx.body()
    try:
        new = peruser.parse(body)
    except peruser.InjectedData as exc:
        log.warning("refused a PUT by %s under %s: %s", share.sharee, share.collection, exc)
        raise DavError(403, VALID_CALENDAR_DATA, str(exc)) from None
    except peruser.NotCalendarData:
        if share.access == "read":
            raise DavError(403, NEED_PRIVILEGES, "this share is read-only") from None
        return await ctx.forward(view.spec)  # not calendar data: the upstream judges it
    async with _WRITING.hold((share.upstream, share.collection, member)):
        return await _merge_and_write(view, member, new)


async def _merge_and_write(
    view: View, member: str, new: peruser.CalendarObject
) -> web.StreamResponse:
    """Read, merge, write only if nothing changed meanwhile: when someone else wrote the
    object in between (the upstream's 412 to davproxy's own If-Match), start again from
    what is there now, the client's own conditions judged anew each time."""
    ctx, share = view.ctx, view.share
    for attempt in range(_PUT_ATTEMPTS):
        if attempt:
            await asyncio.sleep(random.uniform(0, _PUT_BACKOFF * attempt))
        upstream_etag, old = await _current(view)
        _check_conditions(view, member, upstream_etag)
        write = peruser.split_write(new, old)
        if write.shared_changed and share.access == "read":
            raise DavError(
                403, NEED_PRIVILEGES, "this share is read-only: only alarms and transparency"
            )
        created = upstream_etag is None
        if not write.shared_changed:
            break
        condition = {"If-None-Match": "*"} if created else {"If-Match": upstream_etag or "*"}
        sent = peruser.with_owner(write.shared, old).encode("utf-8")
        content_type = ctx.request.headers.get("Content-Type", "text/calendar; charset=utf-8")
        status, headers, answer = await view.send(
            "PUT", {**condition, "Content-Type": content_type}, sent
        )
        if status == 412:
            continue  # changed by someone else since it was read
        if not 200 <= status < 300:
            return _relayed(status, headers, answer)
        upstream_etag = headers.get("ETag")
        if upstream_etag is None:
            upstream_etag, _ = await _current(view)
        break
    else:
        log.warning("PUT by %s of %s%s: changed by others %d times in a row",
                    share.sharee, share.collection, member, _PUT_ATTEMPTS)  # fmt: skip
        raise PlainError(503, "The object keeps changing; try again", {"Retry-After": "1"})
    revision = view.store.put(share, member, new.uid, write.personal)
    result = web.Response(status=201 if created else 204)
    if upstream_etag is not None:
        result.headers["ETag"] = sharee_etag(upstream_etag, revision)
    return result


async def _delete(view: View, member: str) -> web.StreamResponse:
    ctx = view.ctx
    headers = ctx.request.headers
    spec = view.spec
    if any(name.lower() in CONDITIONAL for name in headers):
        upstream_etag, _ = await _current(view)
        _check_conditions(view, member, upstream_etag)
        if upstream_etag is None:
            raise DavError(412 if "If-Match" in headers else 404, None, "no such object")
        spec = replace(
            spec,
            drop_headers=spec.drop_headers | CONDITIONAL,
            set_headers={**spec.set_headers, "If-Match": upstream_etag},
        )
    answer = await ctx.forward(spec)
    if 200 <= answer.status < 300 or answer.status == 404:
        view.store.forget(view.share.upstream, view.share.collection, member)
    return answer


# -- REPORTs -------------------------------------------------------------------------------


async def _report(view: View) -> web.StreamResponse:
    ctx = view.ctx
    try:
        root = await ctx.xml()  # parsed once for the copy's checks, the view and the gate
    except davxml.XmlError:
        return await ctx.forward(view.spec)  # the XML gate answers it
    if root.tag == SYNC_COLLECTION:
        return await _sync(view, copy.deepcopy(root))  # its token is changed
    if root.tag == CALENDAR_QUERY and _personal_filter(root):
        return await _query(view, root)
    if root.tag == peruser_time.FREE_BUSY_QUERY:
        return await peruser_time.serve(view, root)
    return await ctx.forward(view.spec_editing())


async def _sync(view: View, root: etree._Element) -> web.StreamResponse:
    token = root.find(SYNC_TOKEN)
    upstream_token, since = view.parse_token(token.text or "" if token is not None else "")
    if token is not None:
        token.text = upstream_token
    revision = view.store.revision()  # read first: a later change is in the next sync
    extra: list[etree._Element] = []
    # an initial sync lists every member anyway
    changed = view.store.changed_since(view.share, since) if upstream_token else []
    if changed:
        extra = await _multiget(view, changed, root.find(davxml.PROP))

    spec = replace(view.spec_editing(extra, revision), body=davxml.serialize(root))
    return await view.ctx.forward(spec)


async def _multiget(
    view: View, members: list[str], prop: etree._Element | None
) -> list[etree._Element]:
    """Responses for members whose per-user data changed, as the sync's own would be."""
    spec = view.spec
    report = etree.Element(f"{{{CALDAV}}}calendar-multiget", nsmap={"D": DAV, "C": CALDAV})
    report.append(copy.deepcopy(prop) if prop is not None else etree.Element(davxml.PROP))
    for member in members:
        public = view.copy_key + member
        link = etree.SubElement(report, davxml.HREF)
        link.text = spec.request_hrefs(public) if spec.request_hrefs else public
    status, _, answer = await view.send(
        "REPORT",
        {"Depth": "1", "Content-Type": "application/xml; charset=utf-8"},
        davxml.serialize(report),
    )
    if status != 207:
        return []
    try:
        found = davxml.parse(answer)
    except davxml.XmlError:
        return []
    nodes = []
    for node in found.findall(davxml.RESPONSE):
        link = node.find(davxml.HREF)
        if link is None or node.find(davxml.PROPSTAT) is None:
            continue  # gone meanwhile: the upstream's own sync reports that
        if spec.response_hrefs is not None and link.text:
            link.text = spec.response_hrefs(link.text)
        nodes.append(node)
    return nodes


def _personal_filter(root: etree._Element) -> bool:
    for node in root.iter(COMP_FILTER, PROP_FILTER):
        name = (node.get("name") or "").upper()
        if node.tag == COMP_FILTER and name in peruser.PERSONAL_COMPONENTS:
            return True
        if node.tag == PROP_FILTER and peruser.is_personal(name):
            return True
    return False


async def _query(view: View, root: etree._Element) -> web.StreamResponse:
    """A calendar-query on alarms or transparency: the upstream is asked for every
    object of the component type, with its data; the filter is decided here."""
    query = caldav_query.parse_filter(root)
    # the shared filter decides presence; when each alarm triggers is decided here
    subfilters = query.comp.comps if query.comp is not None else ()
    alarm_ranges = [c.time_range for c in subfilters if c.name == "VALARM" and c.time_range]
    asked = copy.deepcopy(root)
    prop = asked.find(davxml.PROP)
    if prop is None:
        prop = etree.SubElement(asked, davxml.PROP)
    wanted = {str(child.tag) for child in prop}
    for name in (GETETAG, CALENDAR_DATA):
        if name not in wanted:
            etree.SubElement(prop, name)
    top = asked.find(f"{{{CALDAV}}}filter/{COMP_FILTER}")
    assert top is not None  # parse_filter checked it
    for child in list(top):
        top.remove(child)
    if query.kind is not None:
        etree.SubElement(top, COMP_FILTER, name=query.kind)

    def edit(answer: bytes) -> bytes:
        edited = davxml.parse(view.edit(answer))
        for node in edited.findall(davxml.RESPONSE):
            data = node.findtext(f".//{CALENDAR_DATA}")
            kind = query.kind if data and f"BEGIN:{query.kind}" in data.upper() else ""
            if (
                data is None
                or not caldav_query.matches(query, kind or "", data)
                or not all(peruser_time.alarm_in_range(data, r.start, r.end) for r in alarm_ranges)
            ):
                edited.remove(node)
                continue
            for extra in node.iterfind(f"{davxml.PROPSTAT}/{davxml.PROP}/*"):
                if str(extra.tag) not in wanted:
                    extra.getparent().remove(extra)  # type: ignore[union-attr]
        return davxml.serialize(edited)

    return await view.ctx.forward(replace(view.spec, body=davxml.serialize(asked), edit_xml=edit))
