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
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote, unquote

from aiohttp import web
from lxml import etree

from davproxy.access.backend import AccessBackend
from davproxy.access.foreign import ForeignShare
from davproxy.dav import davxml
from davproxy.dav.davxml import CALDAV, CARDDAV, CS, DAV, element, href
from davproxy.dav.errors import NEED_PRIVILEGES, DavError, PlainError
from davproxy.dav.paths import canonical, slash
from davproxy.sharing.notifications import Renderer, invite_name, now_stamp, reply_name
from davproxy.sharing.properties import (
    SharingProperties,
    copy_name,
    inner_xml,
)
from davproxy.sharing.requests import (
    CS_SHARE,
    INVALID_SHARE,
    INVITE_REPLY,
    VALID_REQUEST,
    ShareeRequest,
    parse_cs_share,
    parse_share_resource,
)
from davproxy.store.records import NewShare, Notification, Share
from davproxy.store.sqlite import Store, StoreConflict
from davproxy.upstream.client import Upstream
from davproxy.upstream.directory import Directory
from davproxy.upstream.identity import Authenticator

log = logging.getLogger("davproxy.sharing")

# What a read-only sharee may do under their copy.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PROPFIND", "REPORT"})
# What a read-write sharee may do besides: the methods whose effect davproxy knows.
# (No POST: it could carry a share request, or anything else, executed as the owner.)
WRITE_METHODS = frozenset({"PUT", "DELETE", "MOVE", "COPY", "PROPPATCH", "MKCOL", "MKCALENDAR"})


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

    async def collection_info(self, rest: str, headers: dict[str, str]) -> CollectionInfo:
        body = davxml.serialize(
            element(
                davxml.PROPFIND,
                element(
                    davxml.PROP,
                    element(f"{{{DAV}}}resourcetype"),
                    element(f"{{{DAV}}}displayname"),
                    element(f"{{{CALDAV}}}supported-calendar-component-set"),
                ),
            )
        )
        path, extra = self.upstream.target(rest)
        request_headers = {
            **headers,
            **extra,
            "Depth": "0",
            "Content-Type": "application/xml; charset=utf-8",
        }
        async with self.upstream.request("PROPFIND", path, request_headers, body) as answer:
            text = await answer.read()
            status = answer.status
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
            raise DavError(403, NEED_PRIVILEGES, "only collections can be shared")
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

    def role(self, user: str, rest: str) -> tuple[str | None, Share | None]:
        """What a path of this user is to sharing, from one look at their copies:
        ``("copy", share)`` their copy of someone else's collection, ``("in-copy",
        share)`` something inside one, ``("owned", None)`` a collection strictly inside
        one of their homes (a home, even one nested in another as on Xandikos, is not
        shareable), or ``(None, None)``."""
        rest = canonical(rest)
        found = self.mount_for(user, rest)
        if found is not None:
            return ("copy" if found[1] == "" else "in-copy"), found[0]
        homes = self.homes(user)
        if rest in homes or not any(rest.startswith(home) for home in homes):
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
            raise DavError(403, NEED_PRIVILEGES, "only the owner of a collection can share it")
        sharees = parse_cs_share(root) if apple else parse_share_resource(root)
        info = await self.collection_info(
            collection, self.auth.headers_for(user, request.headers.get("Authorization"))
        )
        if apple:
            unknown = {
                s.href
                for s in sharees
                if s.access != "no-access" and self.directory.resolve(s.href) is None
            }
            if unknown:  # CS: all or nothing, each bad href 403, every other one 424
                return self._partial_failure(sharees, unknown)
        await self.change_sharees(user, collection, info, sharees)
        return web.Response(status=200 if apple else 204)

    async def change_sharees(
        self, user: str, collection: str, info: CollectionInfo, sharees: list[ShareeRequest]
    ) -> None:
        """Apply share requests of the collection's owner (checked by the caller): both
        flavours over HTTP and ``davproxy admin share`` come through here."""
        with self.store.transaction():
            for sharee in sharees:
                self._apply(user, collection, info, sharee)
        await self.access.apply(user)
        log.info("%s changed %d sharee(s) of %s (%s)", user, len(sharees), collection, info.kind)

    @staticmethod
    def _partial_failure(sharees: list[ShareeRequest], unknown: set[str]) -> web.Response:
        responses = [
            davxml.status_response(s.href, 403 if s.href in unknown else 424) for s in sharees
        ]
        return web.Response(
            status=207,
            body=davxml.serialize(davxml.multistatus(*responses)),
            content_type="text/xml",
            charset="utf-8",
        )

    def _apply(
        self, owner: str, collection: str, info: CollectionInfo, wanted: ShareeRequest
    ) -> None:
        sharee = self.directory.resolve(wanted.href)
        if sharee == owner:
            raise DavError(403, NEED_PRIVILEGES, "the owner cannot be a sharee")
        key = sharee if sharee is not None else wanted.href
        if wanted.access == "no-access":
            existing = self.store.share_for(self.name, collection, key)
            if existing is not None:
                self._revoke(existing, info)
            return
        share, _ = self.store.share_upsert(
            NewShare(
                upstream=self.name, owner=owner, collection=collection, kind=info.kind,
                sharee=key, sharee_href=wanted.href, access=wanted.access,
                status="noresponse" if sharee is not None else "invalid",
                comment=wanted.comment, sharee_name=wanted.displayname,
            )
        )  # fmt: skip
        if share.status != "invalid":  # an unknown sharee is never notified
            self._invite(share, info, share.access)
        else:  # the protocol answer stays a success (204); the operator learns of it here
            log.warning(
                "%s shared %s with %r, which names no known user: recorded as "
                "invite-invalid, nobody notified (see `davproxy admin shares --status invalid`)",
                owner, collection, wanted.href,
            )  # fmt: skip

    def _invite(self, share: Share, info: CollectionInfo, access: str) -> None:
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

    def _revoke(self, share: Share, info: CollectionInfo | None) -> None:
        if share.status == "accepted":
            # Tell an accepted sharee their copy is gone (share-access no-access).
            self._invite(share, info or self._info_of(share), "no-access")
            self.access.ended(share)
        else:
            self.store.notification_delete(self.name, share.sharee, invite_name(share.invite_uid))
        self.store.share_delete(share.id)

    def _info_of(self, share: Share) -> CollectionInfo:
        name = unquote(share.collection.rstrip("/").split("/")[-1])
        return CollectionInfo(share.kind, name, ())

    # -- replies ----------------------------------------------------------------------------

    async def reply(
        self, request: web.Request, user: str, note: Notification, body: bytes
    ) -> web.StreamResponse:
        """``D:invite-reply`` POSTed to the invitation (resource-sharing-04 §4.5)."""
        root = davxml.parse(body)
        if root.tag != INVITE_REPLY:
            raise DavError(400, None, "expected DAV:invite-reply")
        if note.type != "share-invite":
            raise DavError(403, NEED_PRIVILEGES, "only invitations can be answered")
        share = self._open_invitation(json.loads(note.body)["uid"], user)
        if share is None:
            raise DavError(403, NEED_PRIVILEGES, "this invitation was withdrawn or answered")
        accepted = root.find(f"{{{DAV}}}invite-accepted") is not None
        declined = root.find(f"{{{DAV}}}invite-declined") is not None
        if accepted == declined:
            raise DavError(400, None, "DAV:invite-reply needs invite-accepted or invite-declined")
        mount = await self._decide(
            request.headers.get("Authorization"), share, accepted,
            (root.findtext(f"{{{DAV}}}comment") or "")[:4096],
            root.findtext(f"{{{DAV}}}create-in/{{{DAV}}}href"), root.findtext(f"{{{DAV}}}slug"),
        )  # fmt: skip
        if mount is None:
            return web.Response(status=204)
        origin = f"{request.scheme}://{request.host}"
        return web.Response(
            status=201, headers={"Location": origin + self.upstream.paths.public + mount}
        )

    async def reply_cs(
        self, request: web.Request, user: str, root: etree._Element
    ) -> web.StreamResponse:
        """``CS:invite-reply`` POSTed to the sharee's home (caldav-sharing §5.3.3)."""
        uid = (root.findtext(f"{{{CS}}}in-reply-to") or "").strip()
        accepted = root.find(f"{{{CS}}}invite-accepted") is not None
        declined = root.find(f"{{{CS}}}invite-declined") is not None
        if not uid or accepted == declined or root.find(f"{{{CS}}}hosturl") is None:
            raise DavError(
                403, VALID_REQUEST, "CS:invite-reply needs a status, CS:hosturl and CS:in-reply-to"
            )
        share = self._open_invitation(uid, user)
        if share is None:
            raise DavError(403, INVALID_SHARE, "no open invitation with that CS:in-reply-to")
        summary = (root.findtext(f"{{{CS}}}summary") or "")[:512]
        mount = await self._decide(
            request.headers.get("Authorization"), share, accepted, summary, None, None, summary
        )
        if mount is None:
            return web.Response(status=204)
        shared_as = element(f"{{{CS}}}shared-as", href(self.upstream.paths.public + mount))
        return web.Response(
            status=200, body=davxml.serialize(shared_as), content_type="text/xml", charset="utf-8"
        )

    def _open_invitation(self, uid: str, user: str) -> Share | None:
        """The share an invitation stands for, if it is this user's and still open."""
        share = self.store.share_by_uid(uid)
        if share is None or share.sharee != user or share.status != "noresponse":
            return None
        return share

    async def accept(
        self,
        share: Share,
        displayname: str = "",
        slug: str | None = None,
        authorization: str | None = None,
    ) -> str:
        """Accept an open invitation outside the protocol (``davproxy admin accept``, the
        web page), exactly as the sharee's own reply would; the copy's path.
        ``authorization``: the sharee's own credentials, where the page has them."""
        if share.status != "noresponse":
            raise DavError(403, INVALID_SHARE, f"the share is {share.status}, not an invitation")
        mount = await self._decide(authorization, share, True, "", None, slug, displayname)
        assert mount is not None
        return mount

    async def decline(self, share: Share, comment: str = "") -> None:
        """Decline an open invitation outside the protocol (the web page), exactly as the
        sharee's own reply would: the invitation goes, the owner is told."""
        if share.status != "noresponse":
            raise DavError(403, INVALID_SHARE, f"the share is {share.status}, not an invitation")
        await self._decide(None, share, False, comment[:4096], None, None)

    async def _decide(
        self,
        authorization: str | None,
        share: Share,
        accept: bool,
        comment: str,
        create_in: str | None,
        slug: str | None,
        displayname: str = "",
    ) -> str | None:
        """Record the sharee's answer (both flavours); the copy's path when accepted."""
        if not accept:
            with self.store.transaction():
                self._answer(share, "declined", None, comment)
            await self.access.apply(share.owner)
            return None
        invitation = self.store.notification(self.name, share.sharee, invite_name(share.invite_uid))
        offered = json.loads(invitation.body).get("displayname", "") if invitation else ""
        offered = offered or self._info_of(share).displayname
        # A name the sharee chose stands; otherwise (IETF replies carry none, Apple
        # clients echo the offered name) the copy is told apart from the sharee's own
        # collection of the same name: "Calendar (Alice)".
        if not displayname or displayname == offered:
            displayname = copy_name(offered, self.directory.display_name(share.owner))
        for _attempt in range(3):
            mount = await self._choose_mount(authorization, share, create_in, slug)
            await self.access.grant(share, mount)  # first: nothing recorded if it refuses
            try:
                with self.store.transaction():
                    self._record_acceptance(share, mount, comment, displayname)
            except StoreConflict:
                continue  # a racing reply took this name meanwhile: choose another
            except DavError:
                await self.access.apply(share.owner)  # take back what was granted above
                raise
            await self.access.apply(share.owner)
            return mount
        raise DavError(409, None, "no free name for the shared copy; try again")

    def _record_acceptance(self, share: Share, mount: str, comment: str, name: str) -> None:
        accepted = self._answer(share, "accepted", mount, comment)
        if share.kind == "calendar":
            # caldav-sharing-01 §4: a shared calendar starts out transparent.
            transp = f"{{{CALDAV}}}schedule-calendar-transp"
            self.store.set_instance_prop(
                accepted.id,
                transp,
                inner_xml(element(transp, element(f"{{{CALDAV}}}transparent"))),
            )
        if name:
            self.store.set_instance_prop(accepted.id, f"{{{DAV}}}displayname", name)

    def _answer(self, share: Share, status: str, mount: str | None, comment: str) -> Share:
        updated = self.store.share_set_status(share, status, mount, expect="noresponse")
        if updated is None:  # answered or revoked while this reply was on its way
            raise DavError(403, INVALID_SHARE, "this invitation was withdrawn or answered")
        self.store.notification_delete(self.name, share.sharee, invite_name(share.invite_uid))
        self._tell_owner(updated, status, comment)
        return updated

    def _tell_owner(self, share: Share, status: str, comment: str = "") -> None:
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

    async def _choose_mount(
        self, authorization: str | None, share: Share, create_in: str | None, slug: str | None
    ) -> str:
        """Where the sharee's copy goes: inside their own home, under a free name."""
        allowed = self._homes_for_kind(share.sharee, share.kind)
        parent = allowed[0]
        if create_in:
            wanted = self.upstream.rest_of(davxml.href_path(create_in))
            if wanted is not None:
                wanted = canonical(slash(wanted))
            if wanted not in allowed:
                raise DavError(403, NEED_PRIVILEGES, "DAV:create-in must be one of your own homes")
            parent = wanted
        base = _segment(slug or "") or _segment(
            f"{unquote(share.collection.rstrip('/').split('/')[-1])}-{share.owner}"
        )
        headers = self.auth.headers_for(share.sharee, authorization)
        for attempt in range(1, 50):
            candidate = f"{parent}{base if attempt == 1 else f'{base}-{attempt}'}/"
            if self.store.mount_taken(self.name, candidate):
                continue
            if not await self._exists(candidate, headers):
                return candidate
        raise DavError(409, None, "no free name for the shared copy; give another DAV:slug")

    def _homes_for_kind(self, user: str, kind: str) -> list[str]:
        paths = self.upstream.user_paths(user)
        calendar = self.upstream.rest_of(paths.calendar_home) or ""
        book = self.upstream.rest_of(paths.addressbook_home) or ""
        calendar, book = canonical(calendar), canonical(book)
        if kind == "calendar":
            return [calendar]
        if kind == "addressbook":
            return [book]
        return list(dict.fromkeys([calendar, book]))

    async def _exists(self, rest: str, headers: dict[str, str]) -> bool:
        path, extra = self.upstream.target(rest)
        body = davxml.serialize(
            element(davxml.PROPFIND, element(davxml.PROP, element(f"{{{DAV}}}resourcetype")))
        )
        request_headers = {**headers, **extra, "Depth": "0", "Content-Type": "application/xml"}
        async with self.upstream.request("PROPFIND", path, request_headers, body) as answer:
            text = await answer.read()
            if answer.status == 404:
                return False
            if answer.status != 207:
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
            if rest.startswith(share.mount):
                return share, rest[len(share.mount) :]
            if rest + "/" == share.mount:
                return share, ""
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
            self._tell_owner(updated, "declined")
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
            gone = not await self._exists(path, self.auth.headers_for(owner))
            with self.store.transaction():
                if gone:
                    self.owner_deleted(owner, path)
                self.store.deletion_end(self.name, owner, path)
            log.info("settled an interrupted deletion of %s: %s", path, "gone" if gone else "kept")

    def owner_deleted(self, owner: str, rest: str) -> None:
        """The owner deleted a collection (or a parent of one): every share of it ends."""
        collection = canonical(slash(rest))
        shares = [s for s in self.store.shares_under(self.name, collection) if s.owner == owner]
        if not shares:
            return
        with self.store.transaction():
            for share in shares:
                if share.owner == owner:
                    self._revoke(share, None)
        log.info("%s deleted %s: %d share(s) ended", owner, collection, len(shares))


def _segment(text: str) -> str:
    """A safe path segment from a client's slug: no separators, dots or control chars."""
    cleaned = re.sub(r"[\x00-\x1f/\\?#%]+", "", text).strip().strip(".")[:64]
    return quote(cleaned, safe="@!$&'()*+,;=:-_~") if cleaned else ""
