"""A sharee's answers to invitations, in both flavours (resource-sharing-04 §4.7.1,
CalendarServer caldav-sharing §5.3.3), and where an accepted share's copy goes.

Any standing share can be answered either way, as CalendarServer lets a sharee change
their mind: accept (a copy is made in the sharee's home), decline (a copy that was
there goes), and an answer equal to the current one changes nothing and gets the same
answer.  A withdrawn invitation cannot be answered.
"""

from __future__ import annotations

import asyncio
import json
import re
import weakref
from typing import Protocol
from urllib.parse import quote, unquote

from aiohttp import web
from lxml import etree

from davproxy.access.backend import AccessBackend
from davproxy.dav import davxml
from davproxy.dav.davxml import CALDAV, CS, DAV, element, href
from davproxy.dav.errors import NEED_PRIVILEGES, DavError
from davproxy.dav.paths import PathRejected, canonical, resolve_path, slash
from davproxy.sharing.notifications import invite_name
from davproxy.sharing.properties import copy_name, inner_xml
from davproxy.sharing.requests import INVALID_SHARE, INVITE_REPLY, VALID_REQUEST
from davproxy.store import Store, StoreConflict
from davproxy.store.records import Notification, Share
from davproxy.upstream.client import Upstream
from davproxy.upstream.directory import Directory
from davproxy.upstream.identity import Authenticator


class _Named(Protocol):
    @property
    def displayname(self) -> str: ...


class SharingCore(Protocol):
    """What the sharee's side needs of ``sharing.model.Sharing`` (a seam, not an import:
    the model builds its ``Replies`` and calls into them)."""

    @property
    def store(self) -> Store: ...

    @property
    def upstream(self) -> Upstream: ...

    @property
    def auth(self) -> Authenticator: ...

    @property
    def directory(self) -> Directory: ...

    @property
    def name(self) -> str: ...

    @property
    def access(self) -> AccessBackend: ...

    def info_of(self, share: Share) -> _Named: ...

    def tell_owner(self, share: Share, status: str, comment: str = "") -> None: ...

    async def exists(self, rest: str, headers: dict[str, str]) -> bool: ...


# A share in these states can be answered (again): its sharee may change their mind.
_ANSWERABLE = ("noresponse", "accepted", "declined")


class Replies:
    """The sharee's side of one upstream's shares."""

    def __init__(self, sharing: SharingCore) -> None:
        self.sharing = sharing
        self.store = sharing.store
        self.upstream = sharing.upstream
        self.auth = sharing.auth
        self.directory = sharing.directory
        self.name = sharing.name
        # one lock per invitation being answered, gone when no answer holds or awaits it
        self._turns: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @property
    def access(self) -> AccessBackend:
        return self.sharing.access

    async def reply(
        self, request: web.Request, user: str, name: str, note: Notification | None, body: bytes
    ) -> web.StreamResponse:
        """``D:invite-reply`` POSTed to the invitation's reply-url (resource-sharing-04
        §4.7.1).  The invitation is removed once answered (the draft's SHOULD), but its
        reply-url keeps taking answers while the share stands, so a sharee can change
        their mind as Apple's do (``reply_cs``): decline after accepting, accept after
        declining, and an identical answer again gets the same answer."""
        root = davxml.parse(body)
        if root.tag != INVITE_REPLY:
            raise DavError(400, None, "expected DAV:invite-reply")
        if note is not None and note.type != "share-invite":
            raise DavError(403, NEED_PRIVILEGES, "only invitations can be answered")
        uid = json.loads(note.body)["uid"] if note is not None else name.removesuffix(".xml")
        share = self._answerable(uid, user)
        if share is None:
            if note is None:
                raise DavError(404, None, "no such notification")
            raise DavError(403, NEED_PRIVILEGES, "this invitation was withdrawn")
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
        # the same answer to the same reply: a repeated accept names the same copy
        origin = f"{request.scheme}://{request.host}"
        return web.Response(
            status=201, headers={"Location": origin + self.upstream.paths.public + mount}
        )

    async def reply_cs(
        self, request: web.Request, user: str, root: etree._Element
    ) -> web.StreamResponse:
        """``CS:invite-reply`` POSTed to the sharee's home (caldav-sharing §5.3.3).

        As CalendarServer answers it: a sharee may decline after accepting (the copy
        goes, the sharer is told) and accept after declining (the copy comes back, at
        the same path unless that name was taken meanwhile); a repeated answer changes
        nothing and gets the same answer (the same ``CS:shared-as``).  A withdrawn
        invitation is ``CS:invalid-share``."""
        uid = (root.findtext(f"{{{CS}}}in-reply-to") or "").strip()
        accepted = root.find(f"{{{CS}}}invite-accepted") is not None
        declined = root.find(f"{{{CS}}}invite-declined") is not None
        if not uid or accepted == declined or root.find(f"{{{CS}}}hosturl") is None:
            raise DavError(
                403, VALID_REQUEST, "CS:invite-reply needs a status, CS:hosturl and CS:in-reply-to"
            )
        share = self._answerable(uid, user)
        if share is None:
            raise DavError(403, INVALID_SHARE, "no invitation of yours with that CS:in-reply-to")
        summary = (root.findtext(f"{{{CS}}}summary") or "")[:512]
        mount = await self._decide(
            request.headers.get("Authorization"), share, accepted, summary, None, None, summary
        )
        if mount is None:
            return web.Response(status=204)
        # CalendarServer writes the copy's URL without its trailing slash (joinURL of the
        # home and the name); Apple clients append "/" and member names to it.
        shared_as = element(
            f"{{{CS}}}shared-as", href((self.upstream.paths.public + mount).rstrip("/"))
        )
        return web.Response(
            status=200, body=davxml.serialize(shared_as), content_type="text/xml", charset="utf-8"
        )

    def _answerable(self, uid: str, user: str) -> Share | None:
        """The share an invitation stands for, if it is this user's and still stands
        (open, accepted or declined; not withdrawn)."""
        share = self.store.share_by_uid(uid)
        if share is None or share.sharee != user or share.status not in _ANSWERABLE:
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
        """Record the sharee's answer (both flavours); the copy's path when accepted.

        Every status a standing share can be in may be answered either way; an answer
        equal to the current status changes nothing (the same copy, no notification).
        Answers to one invitation are decided one after the other (a sharee's devices
        may send accept and decline at once); one that races another change of the
        share (the owner's, another process's) is decided again on what it left."""
        async with self._in_turn(share):
            return await self._decide_now(
                authorization, share, accept, comment, create_in, slug, displayname
            )

    def _in_turn(self, share: Share) -> asyncio.Lock:
        lock = self._turns.get(share.invite_uid)
        if lock is None:
            lock = self._turns[share.invite_uid] = asyncio.Lock()
        return lock

    async def _decide_now(
        self,
        authorization: str | None,
        share: Share,
        accept: bool,
        comment: str,
        create_in: str | None,
        slug: str | None,
        displayname: str,
    ) -> str | None:
        for _attempt in range(3):
            current = self.store.share(share.id)
            if current is None or current.invite_uid != share.invite_uid:
                raise DavError(403, INVALID_SHARE, "this invitation was withdrawn")
            share = current
            if not accept:
                if share.status == "declined":
                    return None
                with self.store.transaction():
                    done = self._answer(share, "declined", None, comment)
                if done is None:
                    continue
                await self.access.apply(share.owner)  # a copy that was there goes
                return None
            if share.status == "accepted" and share.mount:
                return share.mount
            mount = await self._choose_mount(authorization, share, create_in, slug)
            await self.access.grant(share, mount)  # first: nothing recorded if it refuses
            try:
                with self.store.transaction():
                    done = self._record_acceptance(share, mount, comment, displayname)
            except StoreConflict:
                done = None  # a racing reply took this name meanwhile: choose another
            except DavError:
                await self.access.apply(share.owner)  # take back what was granted above
                raise
            await self.access.apply(share.owner)  # on a lost race: takes the grant back
            if done is not None:
                return mount
        raise DavError(409, None, "the share changed while answering; try again")

    def _record_acceptance(
        self, share: Share, mount: str, comment: str, displayname: str
    ) -> Share | None:
        """The acceptance, with the copy's starting properties; None when the share
        changed meanwhile.  A copy that comes back keeps what its sharee set on it."""
        invitation = self.store.notification(self.name, share.sharee, invite_name(share.invite_uid))
        offered = json.loads(invitation.body).get("displayname", "") if invitation else ""
        offered = offered or self.sharing.info_of(share).displayname
        accepted = self._answer(share, "accepted", mount, comment)
        if accepted is None:
            return None
        stored = self.store.instance_props(accepted.id)
        transp = f"{{{CALDAV}}}schedule-calendar-transp"
        if share.kind == "calendar" and transp not in stored:
            # caldav-sharing-01 §4: a shared calendar starts out transparent.
            self.store.set_instance_prop(
                accepted.id,
                transp,
                inner_xml(element(transp, element(f"{{{CALDAV}}}transparent"))),
            )
        if f"{{{DAV}}}displayname" not in stored:
            # A name the sharee chose stands; otherwise (IETF replies carry none, Apple
            # clients echo the offered name) the copy is told apart from the sharee's
            # own collection of the same name: "Calendar (Alice)".
            if not displayname or displayname == offered:
                displayname = copy_name(offered, self.directory.display_name(share.owner))
            self.store.set_instance_prop(accepted.id, f"{{{DAV}}}displayname", displayname)
        return accepted

    def _answer(self, share: Share, status: str, mount: str | None, comment: str) -> Share | None:
        """The sharee's answer recorded and the owner told; None when the share is no
        longer in the status it was read in (a racing reply or revocation)."""
        updated = self.store.share_set_status(share, status, mount, expect=share.status)
        if updated is None:
            return None
        if share.status == "accepted" and updated.mount != share.mount:
            self.access.ended(share)  # declined after accepting: the copy must go upstream
        self.store.notification_delete(self.name, share.sharee, invite_name(share.invite_uid))
        self.sharing.tell_owner(updated, status, comment)
        return updated

    async def _choose_mount(
        self, authorization: str | None, share: Share, create_in: str | None, slug: str | None
    ) -> str:
        """Where the sharee's copy goes: inside their own home, under a free name; where
        it was, when it comes back after a decline and the reply names no other place."""
        headers = self.auth.headers_for(share.sharee, authorization)
        before = self.store.ended_copy_of(share) if not (create_in or slug) else None
        if before is not None and not await self.sharing.exists(before, headers):
            return before
        allowed = self._homes_for_kind(share.sharee, share.kind)
        parent = allowed[0]
        if create_in:
            try:
                wanted = self.upstream.rest_of(resolve_path(davxml.href_path(create_in)))
            except PathRejected:
                wanted = None
            if wanted is not None:
                wanted = canonical(slash(wanted))
            if wanted not in allowed:
                raise DavError(403, NEED_PRIVILEGES, "DAV:create-in must be one of your own homes")
            parent = wanted
        base = _segment(slug or "") or _segment(
            f"{unquote(share.collection.rstrip('/').split('/')[-1])}-{share.owner}"
        )
        for attempt in range(1, 50):
            candidate = f"{parent}{base if attempt == 1 else f'{base}-{attempt}'}/"
            if self.store.mount_taken(self.name, candidate):
                continue
            if not await self.sharing.exists(candidate, headers):
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


def _segment(text: str) -> str:
    """A safe path segment from a client's slug: no separators, dots or control chars."""
    cleaned = re.sub(r"[\x00-\x1f/\\?#%]+", "", text).strip().strip(".")[:64]
    return quote(cleaned, safe="@!$&'()*+,;=:-_~") if cleaned else ""
