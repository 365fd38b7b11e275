"""What the page shows one user, and what it does for them: always through the models.

Reading: the user's own collections come from the upstream, as that user (a PROPFIND
Depth 1 on each home with the identity mode's headers, as the share model's
``collection_info`` does); their shares, invitations, copies and subscriptions come from
davproxy's store.  Writing: sharing, changing access and revoking go through
``Sharing.change_sharees`` (what ``D:share-resource``, ``CS:share`` and ``davproxy admin
share`` use); accepting and declining through ``Sharing.accept``/``decline`` (the reply
path); leaving through ``Sharing.unbind`` (a DELETE of the copy); the copy's colour
through ``SharingProperties.set_instance_props`` (a PROPPATCH of the copy);
subscriptions through ``Subscriptions.create``/``unsubscribe`` (the MKCOL and DELETE
paths) and the refresher.
So an Apple client, a curl user and the page always see the same state, and the same
notifications are written.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from urllib.parse import unquote

from davproxy.config import feed_url
from davproxy.dav import davxml
from davproxy.dav.davxml import CALDAV, CARDDAV, CS, DAV, ICAL, element
from davproxy.dav.errors import DavError, PlainError
from davproxy.dav.paths import canonical, quote_segment, slash
from davproxy.edge.sites import Site
from davproxy.feeds.store import FeedSource, Subscription
from davproxy.feeds.subscriptions import COLOR, DISPLAYNAME
from davproxy.sharing.properties import copy_name
from davproxy.sharing.requests import ShareeRequest
from davproxy.store.records import Share
from davproxy.web import people

_COLOR = re.compile(r"#[0-9a-fA-F]{6}([0-9a-fA-F]{2})?")
# "Refresh now" fetches one source at most this often, whoever asks (the origin is
# someone else's server); the scheduler's own fetches do not count.
REFRESH_PAUSE = 30.0
_manual_refreshes: dict[int, float] = {}  # source id -> when; bounded below
STATUS_TEXT = {
    "noresponse": "invited, no answer yet",
    "accepted": "accepted",
    "declined": "declined",
    "invalid": "unknown user, nobody invited",
}


class Problem(Exception):
    """Something the user asked for that cannot be done; the text is shown to them."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class SignedOut(Exception):
    """The upstream no longer accepts the session's credentials (upstream-basic)."""


@dataclass(frozen=True, slots=True)
class Sharee:
    id: str
    name: str
    href: str
    access: str
    status: str
    detail: str = ""  # the e-mail address (or the href as the sharer wrote it)

    @property
    def status_text(self) -> str:
        return STATUS_TEXT.get(self.status, self.status)


@dataclass(frozen=True, slots=True)
class Collection:
    rest: str  # below the upstream root, canonical, with its slash
    url: str  # absolute, to paste into a client
    kind: str  # calendar | addressbook | collection
    name: str
    color: str
    sharees: list[Sharee] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Invitation:
    uid: str
    sharer: str
    sharer_name: str
    kind: str
    collection_name: str
    access: str
    comment: str
    suggested_name: str


@dataclass(frozen=True, slots=True)
class Copy:
    uid: str
    url: str
    kind: str
    name: str
    owner_name: str
    access: str


@dataclass(frozen=True, slots=True)
class FeedRow:
    path: str  # below the upstream root
    url: str  # the CalDAV collection, absolute
    name: str
    source: str
    status: str
    error: str
    objects: int
    last_attempt: float | None
    last_success: float | None
    next_fetch: float | None


def valid_color(text: str) -> str:
    """A ``#rrggbb`` (or ``#rrggbbaa``) colour, or "" for anything else."""
    text = text.strip()
    return text if _COLOR.fullmatch(text) else ""


def _problem(exc: DavError | PlainError) -> Problem:
    status = exc.status if 400 <= exc.status < 500 else 502
    text = exc.message or f"the server answered {exc.status}"
    return Problem(status, text[:1].upper() + text[1:])


class Account:
    """One user's view of one upstream, for one request."""

    def __init__(self, site: Site, user: str, authorization: str | None, origin: str) -> None:
        self.site = site
        self.user = user
        self.authorization = authorization
        self.origin = origin
        self.upstream = site.upstream
        self.sharing = site.sharing
        self.store = site.sharing.store
        self.directory = site.sharing.directory

    def url(self, rest: str) -> str:
        return self.origin + self.upstream.paths.public + rest

    def _headers(self) -> dict[str, str]:
        return self.site.auth.headers_for(self.user, self.authorization)

    # -- reading ----------------------------------------------------------------------

    async def collections(self) -> list[Collection]:
        """The user's own collections in their homes (not copies, not subscriptions),
        with whom each is shared."""
        paths = self.upstream.user_paths(self.user)
        homes = dict.fromkeys(
            canonical(self.upstream.rest_of(p) or "")
            for p in (paths.calendar_home, paths.addressbook_home)
        )
        found: dict[str, Collection] = {}
        for home in homes:
            for rest, kind, name, color in await self._listing(home):
                if rest in found or self.sharing.role(self.user, rest)[0] != "owned":
                    continue
                if self.site.subscriptions.mounted(self.user, rest) is not None:
                    continue
                found[rest] = Collection(
                    rest, self.url(rest), kind, name, color, self._sharees(rest)
                )
        order = {"calendar": 0, "addressbook": 1, "collection": 2}
        return sorted(found.values(), key=lambda c: (order[c.kind], c.name.lower(), c.rest))

    async def collection(self, rest: str) -> Collection:
        """One of the user's own collections (refused for anything else)."""
        rest = canonical(slash(rest))
        if not self.sharing.owns_collection(self.user, rest):
            raise Problem(404, "No such collection of yours")
        for found in await self.collections():
            if found.rest == rest:
                return found
        raise Problem(404, "No such collection of yours")

    def _sharees(self, rest: str) -> list[Sharee]:
        sharees = []
        for share in self.store.shares_of_collection(self.upstream.name, rest):
            known = share.status != "invalid"
            name = self.directory.display_name(share.sharee) if known else share.sharee_href
            email = self.directory.email(share.sharee) if known else None
            detail = email or share.sharee_href.removeprefix("mailto:")
            sharees.append(
                Sharee(share.sharee, name, share.sharee_href, share.access, share.status, detail)
            )
        return sharees

    async def _listing(self, home: str) -> list[tuple[str, str, str, str]]:
        """(rest, kind, name, colour) of each collection the upstream lists in ``home``."""
        status, text = await self.upstream.propfind(
            home,
            [f"{{{DAV}}}resourcetype", f"{{{DAV}}}displayname", f"{{{ICAL}}}calendar-color"],
            self._headers(),
            depth="1",
        )
        if status == 404:
            return []
        if status == 401 and not self.site.auth.proxy_auth:
            raise SignedOut()
        if status != 207:
            raise Problem(502, f"The server answered {status} when listing your collections")
        try:
            root = davxml.parse(text)
        except davxml.XmlError:
            raise Problem(502, "The server answered unusable XML") from None
        found = []
        for response in root.iterfind(davxml.RESPONSE):
            link = response.findtext(davxml.HREF) or ""
            rest = self.upstream.rest_of(self.upstream.public_path(link))
            if rest is None:
                continue
            rest = canonical(slash(rest))
            if rest == home or not rest.startswith(home):
                continue
            ok = [
                stat.find(davxml.PROP)
                for stat in response.iterfind(f"{{{DAV}}}propstat")
                if " 200 " in (stat.findtext(f"{{{DAV}}}status") or "") + " "
            ]
            props = [p for p in ok if p is not None]
            types = {str(n.tag) for p in props for n in p.iterfind(f"{{{DAV}}}resourcetype/*")}
            if f"{{{DAV}}}collection" not in types:
                continue
            kind = (
                "calendar"
                if f"{{{CALDAV}}}calendar" in types
                else "addressbook"
                if f"{{{CARDDAV}}}addressbook" in types
                else "collection"
            )
            if f"{{{CS}}}notification" in types:
                continue
            name = next((p.findtext(f"{{{DAV}}}displayname") for p in props), None) or ""
            color = next((p.findtext(f"{{{ICAL}}}calendar-color") for p in props), None) or ""
            segment = unquote(rest.rstrip("/").rsplit("/", 1)[-1])
            found.append((rest, kind, name.strip() or segment, valid_color(color)))
        return found

    def invitations(self) -> list[Invitation]:
        """Open invitations, from the user's notification collection (as clients see them)."""
        found = []
        for note in self.store.notifications(self.upstream.name, self.user):
            if note.type != "share-invite":
                continue
            data = json.loads(note.body)
            share = self.store.share_by_uid(data.get("uid", ""))
            if share is None or share.sharee != self.user or share.status != "noresponse":
                continue
            owner_name = self.directory.display_name(share.owner)
            offered = data.get("displayname") or _last_segment(share.collection)
            found.append(
                Invitation(
                    share.invite_uid, share.owner, owner_name, share.kind, offered,
                    share.access, share.comment, copy_name(offered, owner_name),
                )
            )  # fmt: skip
        return found

    def copies(self) -> list[Copy]:
        """Accepted shares: the user's copies of other people's collections."""
        found = []
        for share in self.store.mounts_of(self.upstream.name, self.user):
            assert share.mount is not None
            props = self.sharing.properties.copy_props(share)
            shown = props.get(f"{{{DAV}}}displayname")
            name = (shown.text if shown is not None else None) or _last_segment(share.mount)
            found.append(
                Copy(
                    share.invite_uid, self.url(share.mount), share.kind, name,
                    self.directory.display_name(share.owner), share.access,
                )
            )  # fmt: skip
        return sorted(found, key=lambda c: c.name.lower())

    def subscriptions(self) -> list[FeedRow]:
        feeds = self.site.subscriptions.feeds
        rows = []
        for sub in feeds.subscriptions_of(self.upstream.name, self.user):
            source = feeds.source(sub.source_id)
            if source is None:
                continue
            view = self.site.subscriptions.subscription_view(sub, self.user)
            rows.append(self._feed_row(sub, source, view.displayname, feeds.count(source.id)))
        return rows

    def _feed_row(self, sub: Subscription, source: FeedSource, name: str, count: int) -> FeedRow:
        return FeedRow(
            sub.path, self.url(sub.path), name, source.url, source.status, source.error, count,
            source.last_attempt, source.last_success,
            source.next_fetch if source.next_fetch != float("inf") else None,
        )  # fmt: skip

    def operator_feeds(self) -> list[tuple[str, str, str]]:
        """(name, CalDAV URL, .ics URL) of the operator's feeds this user may read."""
        subs = self.site.subscriptions
        found = []
        for feed in subs.configured.values():
            if not subs.may_read(feed, self.user):
                continue
            view = subs.configured_view(feed, self.user)
            if view is not None:
                found.append(
                    (view.displayname, self.origin + view.base, self.origin + view.feed_path)
                )
        return found

    # -- sharing, as the owner --------------------------------------------------------

    async def share(self, rest: str, typed: str, access: str, comment: str) -> str:
        """Invite someone (or change their access); the name of who was invited."""
        collection = await self.collection(rest)
        person = people.resolve(self.directory, self.upstream, typed)
        if person is None:
            raise Problem(400, f"Nobody called {typed.strip()[:100]!r} is known here")
        if person.id == self.user:
            raise Problem(400, "That is you: choose someone else")
        href = people.sharee_href(self.upstream, person)
        existing = self.store.share_for(self.upstream.name, collection.rest, person.id)
        if existing is not None:
            href = existing.sharee_href  # the same sharee entry, as the protocol would
        await self._change(collection.rest, ShareeRequest(href, _access(access), comment, ""))
        return person.name

    async def change_access(self, rest: str, sharee: str, access: str) -> Share:
        share = self._own_share(rest, sharee)
        request = ShareeRequest(
            share.sharee_href, _access(access), share.comment, share.sharee_name
        )
        await self._change(share.collection, request)
        return share

    async def revoke(self, rest: str, sharee: str) -> Share:
        share = self._own_share(rest, sharee)
        await self._change(share.collection, ShareeRequest(share.sharee_href, "no-access", "", ""))
        return share

    def _own_share(self, rest: str, sharee: str) -> Share:
        collection = canonical(slash(rest))
        share = self.store.share_for(self.upstream.name, collection, sharee)
        if (
            share is None
            or share.owner != self.user
            or not self.sharing.owns_collection(self.user, collection)
        ):
            raise Problem(404, "No such share of yours")
        return share

    async def _change(self, collection: str, request: ShareeRequest) -> None:
        """What ``D:share-resource`` does, checked the same way."""
        try:
            info = await self.sharing.collection_info(collection, self._headers())
            await self.sharing.change_sharees(self.user, collection, info, [request])
        except (DavError, PlainError) as exc:
            raise _problem(exc) from None

    # -- invitations, as the sharee -----------------------------------------------------

    def _invitation(self, uid: str, status: str) -> Share:
        share = self.store.share_by_uid(uid)
        if share is None or share.sharee != self.user or share.status != status:
            raise Problem(404, "No such invitation for you (withdrawn, or answered already)")
        return share

    async def accept(self, uid: str, name: str, color: str) -> Copy:
        share = self._invitation(uid, "noresponse")
        try:
            mount = await self.sharing.accept(
                share, name.strip()[:512], authorization=self.authorization
            )
        except (DavError, PlainError) as exc:
            raise _problem(exc) from None
        accepted = self.store.share_for(self.upstream.name, share.collection, self.user)
        color = valid_color(color)
        if accepted is not None and color and share.kind == "calendar":
            update = element(
                f"{{{DAV}}}propertyupdate",
                element(
                    f"{{{DAV}}}set",
                    element(davxml.PROP, element(f"{{{ICAL}}}calendar-color", text=color)),
                ),
            )  # what a client's PROPPATCH of its copy does
            self.sharing.properties.set_instance_props(accepted, davxml.serialize(update))
        for copy in self.copies():
            if copy.uid == share.invite_uid:
                return copy
        return Copy(share.invite_uid, self.url(mount), share.kind, name, share.owner, share.access)

    async def decline(self, uid: str) -> Share:
        share = self._invitation(uid, "noresponse")
        try:
            await self.sharing.decline(share)
        except (DavError, PlainError) as exc:
            raise _problem(exc) from None
        return share

    async def leave(self, uid: str) -> Share:
        share = self._invitation(uid, "accepted")
        await self.sharing.unbind(share)
        return share

    # -- subscriptions ------------------------------------------------------------------

    async def subscribe(self, url_text: str, name: str, color: str) -> FeedRow:
        subs = self.site.subscriptions
        url = feed_url(url_text.strip())
        if url is None:
            raise Problem(400, "Give an http://, https:// or webcal:// address of a calendar")
        home = canonical(
            self.upstream.rest_of(self.upstream.user_paths(self.user).calendar_home) or ""
        )
        taken = {rest for rest, *_ in await self._listing(home)}
        base = _slug(name) or _slug(url.rsplit("/", 1)[-1].removesuffix(".ics")) or "feed"
        for attempt in range(1, 50):
            rest = f"{home}{quote_segment(base if attempt == 1 else f'{base}-{attempt}')}/"
            taken_here = rest in taken or self.store.mount_taken(self.upstream.name, rest)
            if not taken_here and subs.mounted(self.user, rest) is None:
                break
        else:
            raise Problem(409, "No free name for the subscription: choose another name")
        values = {DISPLAYNAME: name.strip()[:256]} if name.strip() else {}
        if valid_color(color):
            values[COLOR] = valid_color(color)

        async def exists() -> bool:
            return rest in {r for r, *_ in await self._listing(home)}

        try:
            await subs.create(self.user, rest, url, values, exists)
        except (DavError, PlainError) as exc:
            raise _problem(exc) from None
        return self._subscription(rest)

    def _subscription(self, rest: str) -> FeedRow:
        for row in self.subscriptions():
            if row.path == canonical(slash(rest)):
                return row
        raise Problem(404, "No such subscription of yours")

    def _mounted(self, rest: str) -> Subscription:
        found = self.site.subscriptions.mounted(self.user, canonical(slash(rest)))
        if found is None or found[1] != "":
            raise Problem(404, "No such subscription of yours")
        return found[0]

    async def refresh(self, rest: str) -> str:
        """Fetch the subscription's source now (see REFRESH_PAUSE); what happened."""
        sub = self._mounted(rest)
        feeds = self.site.subscriptions.feeds
        source = feeds.source(sub.source_id)
        if source is None:
            raise Problem(404, "No such subscription of yours")
        now = time.monotonic()
        if now - _manual_refreshes.get(source.id, -REFRESH_PAUSE) < REFRESH_PAUSE:
            raise Problem(429, "It was fetched a few seconds ago; try again in half a minute")
        if len(_manual_refreshes) > 10_000:
            _manual_refreshes.clear()
        _manual_refreshes[source.id] = now
        report = await self.site.subscriptions.refresher.refresh(source.id)
        if report.outcome == "failed":
            raise Problem(502, f"The feed could not be fetched: {report.error}")
        if report.outcome in ("unchanged", "not-modified"):
            return "Fetched: nothing changed"
        if report.outcome == "suspect":
            return f"Fetched, but kept the previous version: {report.error}"
        return f"Fetched: {report.added} added, {report.changed} changed, {report.removed} removed"

    def unsubscribe(self, rest: str) -> str:
        sub = self._mounted(rest)
        name = self._subscription(sub.path).name
        self.site.subscriptions.unsubscribe(self.user, sub)
        return name


def _access(value: str) -> str:
    if value not in ("read", "read-write"):
        raise Problem(400, "Access is read or read-write")
    return value


def _last_segment(rest: str) -> str:
    return unquote(rest.rstrip("/").rsplit("/", 1)[-1])


def _slug(text: str) -> str:
    """A path segment from a name: lower case letters, digits and dashes."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned[:40].strip("-")
