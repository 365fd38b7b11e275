"""Collection sharing (draft-pot-webdav-resource-sharing-04, IETF flavour).

The owner POSTs ``D:share-resource`` to a collection; each sharee gets a
``D:share-invite-notification`` and answers it with ``D:invite-reply``.  An accepted
share becomes a *copy* in the sharee's home: a path davproxy maps to the owner's
collection, forwarding requests as the owner and enforcing the sharee's access
itself (the proxy-enforced access backend).  Store rows are instances (owner's
collection x sharee) as in sabre; per-sharee properties of a copy live in davproxy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

from aiohttp import web
from lxml import etree

from davproxy.access.backend import AccessBackend
from davproxy.access.foreign import ForeignShare
from davproxy.dav import davxml
from davproxy.dav.davxml import CALDAV, CARDDAV, CS, DAV
from davproxy.dav.errors import NEED_PRIVILEGES, DavError, PlainError
from davproxy.dav.paths import canonical, slash, within
from davproxy.sharing.groups import CollectionFacts, GroupSharing
from davproxy.sharing.notifications import Renderer, invite_name, now_stamp, reply_name
from davproxy.sharing.properties import (
    SharingProperties,
)
from davproxy.sharing.replies import Replies
from davproxy.sharing.requests import (
    CS_SHARE,
    VALID_REQUEST,
    ShareeRequest,
    parse_cs_share,
    parse_share_resource,
)
from davproxy.store import Store, StoreConflict
from davproxy.store.records import NewShare, Notification, Share
from davproxy.upstream.client import Upstream
from davproxy.upstream.directory import Directory
from davproxy.upstream.identity import Authenticator

log = logging.getLogger("davproxy.sharing")

# What a read-only sharee may do under their copy.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PROPFIND", "REPORT"})
# What a read-write sharee may do besides: the methods whose effect davproxy knows.
# (No POST: it could carry a share request, or anything else, executed as the owner.)
WRITE_METHODS = frozenset({"PUT", "DELETE", "MOVE", "COPY", "PROPPATCH", "MKCOL", "MKCALENDAR"})
# Resource types that mark a collection as no one's to share, whatever its path: a
# principal, the scheduling inbox and outbox (RFC 6638; Xandikos advertises and accepts
# shares of them otherwise, exposing the owner's incoming scheduling messages), a
# notification collection, a subscription, a copy of someone else's collection.
NOT_SHAREABLE = frozenset(
    {
        f"{{{DAV}}}principal",
        f"{{{CALDAV}}}schedule-inbox",
        f"{{{CALDAV}}}schedule-outbox",
        f"{{{DAV}}}notifications",
        f"{{{CS}}}notification",
        f"{{{CS}}}subscribed",
        f"{{{CS}}}shared",
    }
)


class NotShareable(DavError):
    """The collection exists but is not one that can be shared (403)."""


def shareable_type(types: set[str]) -> bool:
    """Whether a resourcetype (its child element names) is one of a collection that
    can be shared: a calendar, an address book or a plain collection."""
    return f"{{{DAV}}}collection" in types and not types & NOT_SHAREABLE


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    kind: str  # calendar | addressbook | collection
    displayname: str
    components: tuple[str, ...]


class Sharing:
    """Shares of one upstream: requests, replies, copies and the properties that show them."""

    def __init__(
        self,
        store: Store,
        upstream: Upstream,
        auth: Authenticator,
        directory: Directory,
        renderer: Renderer,
        access: AccessBackend,
    ) -> None:
        self.access = access
        self.properties = SharingProperties(store, upstream, directory)
        self.store = store
        self.upstream = upstream
        self.auth = auth
        self.directory = directory
        self.renderer = renderer
        self.name = upstream.name
        self.replies = Replies(self)
        self.groups = GroupSharing(self)
        self.properties.group_entries = self.groups.entries

    async def collection_info(self, rest: str, headers: dict[str, str]) -> CollectionInfo:
        status, text = await self.upstream.propfind(
            rest,
            [
                f"{{{DAV}}}resourcetype",
                f"{{{DAV}}}displayname",
                f"{{{CALDAV}}}supported-calendar-component-set",
            ],
            headers,
        )
        if status == 404:
            raise DavError(404, None, "no such collection")
        if status in (401, 403):
            raise DavError(403, NEED_PRIVILEGES, "the upstream refuses access to this collection")
        if status != 207:
            raise PlainError(502, f"Upstream {self.name} answered {status} to a PROPFIND")
        try:
            root = davxml.parse(text)
        except davxml.XmlError:
            raise PlainError(502, f"Upstream {self.name} answered unusable XML") from None
        if davxml.response_status(root) == 404:
            raise DavError(404, None, "no such collection")
        types = {str(node.tag) for node in root.iterfind(f".//{{{DAV}}}resourcetype/*")}
        if f"{{{DAV}}}collection" not in types:
            raise NotShareable(403, NEED_PRIVILEGES, "only collections can be shared")
        if not shareable_type(types):
            raise NotShareable(403, NEED_PRIVILEGES, "this kind of collection cannot be shared")
        kind = (
            "calendar"
            if f"{{{CALDAV}}}calendar" in types
            else "addressbook"
            if f"{{{CARDDAV}}}addressbook" in types
            else "collection"
        )
        components = tuple(
            node.get("name", "")
            for node in root.iterfind(f".//{{{CALDAV}}}supported-calendar-component-set/*")
        )
        name = root.findtext(f".//{{{DAV}}}displayname") or unquote(rest.rstrip("/").split("/")[-1])
        return CollectionInfo(kind, name, components)

    # -- ownership -------------------------------------------------------------------------

    def homes(self, user: str) -> list[str]:
        """The user's home paths below the upstream root (deduplicated, longest first)."""
        paths = self.upstream.user_paths(user)
        rests = {
            canonical(self.upstream.rest_of(p) or "")
            for p in (paths.calendar_home, paths.addressbook_home, paths.principal)
        }
        return sorted(rests, key=len, reverse=True)

    def collection_homes(self, user: str) -> list[str]:
        """The user's calendar and address-book homes below the upstream root: where
        their collections live (RFC 4791 §6.2.1, RFC 6352 §7.1.1)."""
        paths = self.upstream.user_paths(user)
        rests = {
            canonical(self.upstream.rest_of(p) or "")
            for p in (paths.calendar_home, paths.addressbook_home)
        }
        return sorted(rests, key=len, reverse=True)

    def role(self, user: str, rest: str) -> tuple[str | None, Share | None]:
        """What a path of this user is to sharing, from one look at their copies:
        ``("copy", share)`` their copy of someone else's collection, ``("in-copy",
        share)`` something inside one, ``("owned", None)`` a collection of theirs that
        can be shared: strictly inside their calendar or address-book home (a home,
        even one nested in another as on Xandikos, and what lives beside the homes in
        the principal, such as Xandikos's schedule inbox and outbox, are not), or
        ``(None, None)``.  Resource types are checked where they are known
        (``shareable_type``)."""
        rest = canonical(rest)
        found = self.mount_for(user, rest)
        if found is not None:
            return ("copy" if found[1] == "" else "in-copy"), found[0]
        homes = self.homes(user)
        if rest in homes or not any(rest.startswith(h) for h in self.collection_homes(user)):
            return None, None
        return "owned", None

    def owns_collection(self, user: str, rest: str) -> bool:
        """A collection strictly inside one of the user's homes, not a shared copy."""
        return self.role(user, rest)[0] == "owned"

    # -- share requests ------------------------------------------------------------------

    async def share(
        self, request: web.Request, user: str, rest: str, root: etree._Element
    ) -> web.StreamResponse:
        """``D:share-resource`` (IETF, 204) or ``CS:share`` (Apple, 200) on a collection."""
        apple = root.tag == CS_SHARE
        collection = canonical(slash(rest))
        if not self.owns_collection(user, collection):
            if apple and any(collection.startswith(home) for home in self.homes(user)):
                # a home, principal, inbox ...: CalendarServer's "Sharing not supported"
                raise DavError(403, VALID_REQUEST, "this collection cannot be shared")
            raise DavError(403, NEED_PRIVILEGES, "only the owner of a collection can share it")
        sharees = parse_cs_share(root) if apple else parse_share_resource(root)
        try:
            info = await self.collection_info(
                collection, self.auth.headers_for(user, request.headers.get("Authorization"))
            )
        except NotShareable as exc:
            if apple:  # CalendarServer: 403 CS:valid-request, "Sharing not supported"
                raise DavError(403, VALID_REQUEST, exc.message) from None
            raise
        # The owner named as a sharee: a CS:set of theirs is refused for that href and a
        # CS:remove ignored, as CalendarServer does; an IETF request has no per-sharee
        # answer, so there it is ignored.  The rest of the batch applies either way.
        own = {s.href for s in sharees if self.directory.resolve(s.href) == user}
        known = {s.href for s in sharees if self._resolves(s.href)}
        refused = {s.href for s in sharees if s.href in own and s.access != "no-access"}
        if own:
            log.info("%s named themselves as a sharee of %s: not applied", user, collection)
        if apple:
            unknown = {s.href for s in sharees if s.access != "no-access" and s.href not in known}
            if unknown:  # CS: all or nothing, each bad href 403, every other one 424
                return self._per_href(sharees, unknown | refused, 424)
        others = [s for s in sharees if s.href not in own]
        if others:
            await self.change_sharees(user, collection, info, others)
        if apple and refused:
            return self._per_href(sharees, refused, 200)
        return web.Response(status=200 if apple else 204)

    async def change_sharees(
        self, user: str, collection: str, info: CollectionFacts, sharees: list[ShareeRequest]
    ) -> None:
        """Apply share requests of the collection's owner (checked by the caller): both
        flavours over HTTP and ``davproxy admin share`` come through here."""
        with self.store.transaction():
            for sharee in sharees:
                self._apply(user, collection, info, sharee)
        await self.access.apply(user)
        log.info("%s changed %d sharee(s) of %s (%s)", user, len(sharees), collection, info.kind)

    def _resolves(self, href: str) -> bool:
        """A user or, failing that, a group (CalendarServer's order)."""
        return self.directory.resolve(href) is not None or self.groups.resolve(href) is not None

    @staticmethod
    def _per_href(sharees: list[ShareeRequest], refused: set[str], others: int) -> web.Response:
        """CalendarServer's 207: 403 for each refused href, ``others`` (424 when nothing
        was applied, 200 when the rest was) for every other one, each href once."""
        hrefs = list(dict.fromkeys(s.href for s in sharees))
        responses = [davxml.status_response(h, 403 if h in refused else others) for h in hrefs]
        return web.Response(
            status=207,
            body=davxml.serialize(davxml.multistatus(*responses)),
            content_type="text/xml",
            charset="utf-8",
        )

    def _apply(
        self, owner: str, collection: str, info: CollectionFacts, wanted: ShareeRequest
    ) -> None:
        sharee = self.directory.resolve(wanted.href)
        if sharee == owner:
            raise DavError(403, NEED_PRIVILEGES, "the owner cannot be a sharee")
        group = self.groups.resolve(wanted.href) if sharee is None else None
        if group is not None:
            self.groups.share_group(owner, collection, info, group, wanted)
            return
        key = sharee if sharee is not None else wanted.href
        if wanted.access == "no-access":
            existing = self.store.share_for(self.name, collection, key)
            if existing is not None and not self.groups.individual_removed(existing, info):
                self._revoke(existing, info)
            return
        access = wanted.access
        if sharee is not None:  # with a group share too, the higher access wins
            access = self.groups.with_individual(collection, sharee, wanted.access)
        share, _ = self.store.share_upsert(
            NewShare(
                upstream=self.name, owner=owner, collection=collection, kind=info.kind,
                sharee=key, sharee_href=wanted.href, access=access,
                status="noresponse" if sharee is not None else "invalid",
                comment=wanted.comment, sharee_name=wanted.displayname,
            )
        )  # fmt: skip
        if sharee is not None:
            self.groups.note_individual(share, wanted.access)
        if share.status != "invalid":  # an unknown sharee is never notified
            self._invite(share, info, share.access)
        else:  # the protocol answer stays a success (204); the operator learns of it here
            log.warning(
                "%s shared %s with %r, which names no known user: recorded as "
                "invite-invalid, nobody notified (see `davproxy admin shares --status invalid`)",
                owner, collection, wanted.href,
            )  # fmt: skip

    def notify_invite(self, share: Share, info: CollectionFacts, access: str) -> None:
        self._invite(share, info, access)

    def end_share(self, share: Share, info: CollectionFacts | None) -> None:
        self._revoke(share, info)

    async def owner_collection_info(self, owner: str, collection: str) -> CollectionFacts:
        """What an invitation says of a collection, asked as its owner; from the path
        alone when the upstream cannot tell (it is down, or the collection is gone)."""
        try:
            return await self.collection_info(collection, self.auth.headers_for(owner))
        except (DavError, PlainError) as exc:
            log.warning("describing %s for its group's members: %s", collection, exc)
            kinds = [s.kind for s in self.store.shares_of_collection(self.name, collection)]
            return CollectionInfo(
                kinds[0] if kinds else "collection",
                unquote(collection.rstrip("/").split("/")[-1]),
                (),
            )

    def _invite(self, share: Share, info: CollectionFacts, access: str) -> None:
        """Write (or overwrite: coalesced per collection and sharee) the invitation."""
        body = {
            "dtstamp": now_stamp(),
            "uid": share.invite_uid,
            "sharer": share.owner,
            "sharee": share.sharee,
            "sharee_href": share.sharee_href,
            "collection": share.collection,
            "kind": share.kind,
            "access": access,
            "status": share.status if access != "no-access" else "accepted",
            "displayname": info.displayname,
            "components": list(info.components),
            "comment": share.comment,
        }
        self.store.notification_put(
            self.name, share.sharee, invite_name(share.invite_uid), "share-invite",
            json.dumps(body),
        )  # fmt: skip

    def _revoke(self, share: Share, info: CollectionFacts | None) -> None:
        if share.status == "accepted":
            # Tell an accepted sharee their copy is gone (share-access no-access).
            self._invite(share, info or self.info_of(share), "no-access")
            self.access.ended(share)
        else:
            self.store.notification_delete(self.name, share.sharee, invite_name(share.invite_uid))
        self.store.share_delete(share.id)

    def info_of(self, share: Share) -> CollectionFacts:
        name = unquote(share.collection.rstrip("/").split("/")[-1])
        return CollectionInfo(share.kind, name, ())

    # -- replies (sharing/replies.py) -------------------------------------------------------

    async def reply(
        self, request: web.Request, user: str, name: str, note: Notification | None, body: bytes
    ) -> web.StreamResponse:
        return await self.replies.reply(request, user, name, note, body)

    async def reply_cs(
        self, request: web.Request, user: str, root: etree._Element
    ) -> web.StreamResponse:
        return await self.replies.reply_cs(request, user, root)

    async def accept(
        self,
        share: Share,
        displayname: str = "",
        slug: str | None = None,
        authorization: str | None = None,
    ) -> str:
        return await self.replies.accept(share, displayname, slug, authorization)

    async def decline(self, share: Share, comment: str = "") -> None:
        await self.replies.decline(share, comment)

    def tell_owner(self, share: Share, status: str, comment: str = "") -> None:
        body = {
            "dtstamp": now_stamp(),
            "uid": share.invite_uid,
            "sharee": share.sharee,
            "sharee_href": share.sharee_href,
            "status": status,
            "collection": share.collection,
            "comment": comment,
        }
        self.store.notification_put(
            self.name, share.owner, reply_name(share.invite_uid), "share-reply", json.dumps(body)
        )

    async def exists(self, rest: str, headers: dict[str, str]) -> bool:
        status, text = await self.upstream.propfind(rest, [f"{{{DAV}}}resourcetype"], headers)
        if status == 404:
            return False
        if status != 207:
            return True  # unknown: do not claim the name
        try:
            return davxml.response_status(davxml.parse(text)) != 404
        except davxml.XmlError:
            return True

    # -- the sharee's copy ---------------------------------------------------------------

    def mount_for(self, user: str, rest: str) -> tuple[Share, str] | None:
        """The accepted share whose copy contains ``rest``, and the path below the copy."""
        rest = canonical(rest)
        doubtful = [path for _, path in self.store.pending_deletions(self.name)]
        for share in self.store.mounts_of(self.name, user):
            assert share.mount is not None
            if any(share.collection.startswith(path) for path in doubtful):
                continue  # its collection may be gone: not served until that is settled
            below = within(rest, share.mount)
            if below is not None:
                return share, below
        return None

    async def revoke(self, share: Share) -> None:
        """End one share as if its owner had said no-access (the admin command)."""
        with self.store.transaction():
            self._revoke(share, None)
        await self.access.apply(share.owner)

    async def adopt(self, found: ForeignShare) -> Share | None:
        """A share the upstream held before davproxy took over, recorded as it stands
        there: accepted at its own path when the sharee had enabled it (they are not
        asked again), else as an invitation.  None when it cannot be recorded."""
        if found.sharee == found.owner:
            return None
        headers = self.auth.headers_for(found.owner)
        try:
            info = await self.collection_info(found.collection, headers)
        except DavError as exc:  # the collection is gone or not the owner's
            log.warning("not adopting %s: %s", found, exc)
            return None
        new = NewShare(
            upstream=self.name, owner=found.owner, collection=found.collection, kind=info.kind,
            sharee=found.sharee, sharee_href=self.upstream.user_paths(found.sharee).principal,
            access=found.access, status="noresponse",
        )  # fmt: skip
        try:
            with self.store.transaction():
                if self.store.share_for(self.name, found.collection, found.sharee) is not None:
                    return None  # recorded meanwhile
                share, _ = self.store.share_upsert(new)
                if found.accepted:
                    return self.store.share_set_status(share, "accepted", found.mount)
                self._invite(share, info, share.access)
                return share
        except StoreConflict:  # its path is another share's copy
            log.warning("not adopting %s: the path is taken", found)
            return None

    async def unbind(self, share: Share) -> None:
        """The sharee removed their copy: only the binding goes; the owner is told."""
        with self.store.transaction():
            updated = self.store.share_set_status(share, "declined", None, expect="accepted")
            if updated is None:
                return  # revoked or left meanwhile: nothing more to undo
            self.access.ended(share)
            self.tell_owner(updated, "declined")
        await self.access.apply(share.owner)
        log.info("%s removed their copy of %s", share.sharee, share.collection)

    async def delete_owned(self, owner: str, rest: str, send: Callable[[], Awaitable[int]]) -> None:
        """An owner's DELETE of something that holds shares, crash-safe: the intent is
        recorded first, the outcome settled after (or at start-up, if davproxy died)."""
        path = canonical(slash(rest))
        with self.store.transaction():
            self.store.deletion_begin(self.name, owner, path)
        await self.access.apply(owner, without=path)  # Radicale refuses to delete mapped ones
        status = 0
        try:
            status = await send()
        finally:
            with self.store.transaction():
                if 200 <= status < 300:
                    self.owner_deleted(owner, path)
                self.store.deletion_end(self.name, owner, path)
            if not 200 <= status < 300:
                await self.access.apply(owner)  # the delete failed: the shares stand

    async def settle_deletions(self) -> None:
        """At start-up: deletions davproxy never saw the end of are checked upstream."""
        for owner, path in self.store.pending_deletions(self.name):
            gone = not await self.exists(path, self.auth.headers_for(owner))
            with self.store.transaction():
                if gone:
                    self.owner_deleted(owner, path)
                self.store.deletion_end(self.name, owner, path)
            log.info("settled an interrupted deletion of %s: %s", path, "gone" if gone else "kept")

    def owner_deleted(self, owner: str, rest: str) -> None:
        """The owner deleted a collection (or a parent of one): every share of it ends."""
        collection = canonical(slash(rest))
        shares = [s for s in self.store.shares_under(self.name, collection) if s.owner == owner]
        with self.store.transaction():
            self.groups.collection_gone(collection)  # an empty group's share too
            for share in shares:
                self._revoke(share, None)
        if not shares:
            return
        log.info("%s deleted %s: %d share(s) ended", owner, collection, len(shares))
