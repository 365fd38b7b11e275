"""Sharing end to end (IETF flavour) through davproxy in front of Radicale and Xandikos:
invite -> notification -> accept -> the sharee's copy -> writes reach the owner ->
downgrade -> revoke, and the negative paths around them."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from lxml import etree

from davproxy.dav.paths import canonical
from tests.helpers import Answer, basic, fetch, raw_session

from .conftest import Pair

D = "DAV:"
NS = {"D": "DAV:", "C": "urn:ietf:params:xml:ns:caldav", "CS": "http://calendarserver.org/ns/"}
SHARING = {"Content-Type": "application/davsharing+xml; charset=utf-8"}
XML = {"Content-Type": "application/xml; charset=utf-8"}


def share_body(*sharees: tuple[str, str], comment: str = "") -> str:
    items = "".join(
        f"<D:sharee><D:href>{href}</D:href><D:share-access><D:{access}/></D:share-access>"
        f"{f'<D:comment>{comment}</D:comment>' if comment else ''}</D:sharee>"
        for href, access in sharees
    )
    return f'<?xml version="1.0" encoding="utf-8"?><D:share-resource xmlns:D="DAV:">{items}</D:share-resource>'


def reply_body(accept: bool, create_in: str | None = None, slug: str | None = None) -> str:
    status = "invite-accepted" if accept else "invite-declined"
    parts = f"<D:{status}/>"
    if create_in:
        parts += f"<D:create-in><D:href>{create_in}</D:href></D:create-in>"
    if slug:
        parts += f"<D:slug>{slug}</D:slug>"
    return f'<?xml version="1.0" encoding="utf-8"?><D:invite-reply xmlns:D="DAV:">{parts}</D:invite-reply>'


def propfind(*names: str) -> str:
    props = "".join(f"<{n}/>" for n in names)
    return (
        '<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:" '
        'xmlns:C="urn:ietf:params:xml:ns:caldav" xmlns:CS="http://calendarserver.org/ns/" '
        f'xmlns:I="http://apple.com/ns/ical/"><D:prop>{props}</D:prop></D:propfind>'
    )


def xml(answer: Answer) -> etree._Element:
    return etree.fromstring(answer.body)


def copy_path(accepted: Answer) -> str:
    """The path of the sharee's copy from an accepting reply's Location."""
    assert accepted.status == 201, accepted.body
    return "/" + accepted.header("Location").split("://", 1)[1].split("/", 1)[1]


async def accept_latest(sharee: Client, create_in: str | None = None) -> str:
    """The sharee accepts their newest invitation; the path of the new copy."""
    _, notes = await notifications_of(sharee)
    return copy_path(await sharee("POST", notes[-1][0], reply_body(True, create_in), **SHARING))


def absent(answer: Answer) -> bool:
    """Not there for this user: 404/403 (Xandikos: 500 for denials, 207 + 404 inside)."""
    if answer.status == 207:
        return b"404 Not Found" in answer.body and b"200 OK" not in answer.body
    return answer.status in (403, 404, 500)


def event(uid: str, summary: str = "Shared") -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:{uid}\r\nDTSTAMP:20261101T090000Z\r\nDTSTART:20261124T100000Z\r\n"
        f"SUMMARY:{summary}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )


class Client:
    """One user talking to davproxy."""

    def __init__(self, session: object, pair: Pair, user: str) -> None:
        self.session, self.pair, self.user = session, pair, user

    async def __call__(
        self, method: str, path: str, body: str | None = None, **headers: str
    ) -> Answer:
        extra = {k.replace("_", "-"): v for k, v in headers.items()}
        if body is not None and method in ("PROPFIND", "PROPPATCH", "REPORT", "MKCOL"):
            extra.setdefault("Content-Type", "application/xml; charset=utf-8")  # Xandikos insists
        return await fetch(
            self.session,  # type: ignore[arg-type]
            method,
            path if path.startswith("http") else self.pair.proxy.url(path),
            {**basic(self.user), **extra},
            body,
        )

    async def hello(self) -> None:
        """Make sure the user's principal and homes exist upstream (created on first use)."""
        answer = await self("PROPFIND", f"/{self.user}/", propfind("D:displayname"), Depth="0")
        assert answer.status == 207, answer.body


async def notifications_of(client: Client) -> tuple[str, list[tuple[str, str]]]:
    """(collection URL, [(member href, IETF type)]) via the principal's notification-URL."""
    home = client.pair.calendar_home.replace("alice", client.user)
    principal = f"/{client.user}/"
    found = await client(
        "PROPFIND",
        principal,
        propfind("D:notification-URL"),
        Depth="0",
        **{"Content-Type": "application/xml"},
    )
    assert found.status == 207, found.body
    url = xml(found).findtext(".//D:notification-URL/D:href", namespaces=NS)
    assert url and url.startswith("/.davproxy/notifications/"), found.body
    listing = await client("PROPFIND", url, propfind("D:notificationtype", "D:getetag"), Depth="1")
    assert listing.status == 207
    members = []
    for response in xml(listing).findall("D:response", NS):
        link = response.findtext("D:href", namespaces=NS)
        kind = response.find(".//D:notificationtype/*", NS)
        if link != url and kind is not None:
            members.append((link, etree.QName(kind).localname))
    assert home  # the calendar home also lists the collection (checked elsewhere)
    return url, members


async def test_calendar_share_full_flow(sharing_pair: Pair) -> None:
    pair = sharing_pair
    name = f"team-{uuid.uuid4().hex[:6]}"
    owner_cal = f"{pair.calendar_home}{name}/"
    bob_home = pair.calendar_home.replace("alice", "bob")
    async with raw_session() as session:
        alice, bob, carol = (Client(session, pair, u) for u in ("alice", "bob", "carol"))
        assert (await alice("MKCALENDAR", owner_cal)).status == 201
        assert (
            await alice(
                "PUT", owner_cal + "a.ics", event("a", "Alice's"), Content_Type="text/calendar"
            )
        ).status == 201
        # make sure bob's principal and homes exist upstream
        await bob.hello()

        # -- negative paths before anything is shared
        assert (
            await carol(
                "POST", owner_cal, share_body(("mailto:bob@example.org", "read")), **SHARING
            )
        ).status == 403
        bad = await alice(
            "POST", owner_cal, "<D:share-resource xmlns:D='DAV:'><D:sharee>", **SHARING
        )
        # a sharing media type must parse: 400 with a DAV error body, nothing forwarded
        assert bad.status == 400 and b"<D:error" in bad.body.replace(b"d:error", b"D:error")
        missing = await alice(
            "POST",
            f"{pair.calendar_home}nope-{name}/",
            share_body(("mailto:bob@example.org", "read")),
            **SHARING,
        )
        assert missing.status == 404
        no_access = await alice(
            "POST",
            owner_cal,
            '<D:share-resource xmlns:D="DAV:"><D:sharee><D:href>mailto:bob@example.org</D:href></D:sharee></D:share-resource>',
            **SHARING,
        )
        assert no_access.status == 400 and b"share-access" in no_access.body

        # -- invite bob read-write, and someone unknown
        shared = await alice(
            "POST",
            owner_cal,
            share_body(
                ("mailto:bob@example.org", "read-write"),
                ("mailto:nobody@example.org", "read"),
                comment="Team calendar",
            ),
            **SHARING,
        )
        assert shared.status == 204, shared.body

        owner_view = await alice(
            "PROPFIND",
            owner_cal,
            propfind("D:share-access", "D:invite", "D:displayname", "D:current-user-privilege-set"),
            Depth="0",
        )
        assert owner_view.status == 207
        doc = xml(owner_view)
        assert doc.find(".//D:share-access/D:shared-owner", NS) is not None
        assert doc.find(".//D:current-user-privilege-set/D:privilege/D:share", NS) is not None
        sharees = {
            s.findtext("D:href", namespaces=NS): s for s in doc.findall(".//D:invite/D:sharee", NS)
        }
        assert sharees["mailto:bob@example.org"].find("D:invite-noresponse", NS) is not None
        assert sharees["mailto:bob@example.org"].find("D:share-access/D:read-write", NS) is not None
        assert sharees["mailto:nobody@example.org"].find("D:invite-invalid", NS) is not None

        url, members = await notifications_of(bob)
        assert len([m for m in members if m[1] == "share-invite-notification"]) >= 1
        invite_href = members[-1][0]
        invite = await bob("GET", invite_href, Accept="application/davnotification+xml")
        assert invite.status == 200 and invite.header("Content-Type").startswith(
            "application/davnotification+xml"
        )
        assert invite.header("ETag")
        body = xml(invite)
        assert body.tag == "{DAV:}notification"
        assert body.find("D:share-invite-notification/D:invite-noresponse", NS) is not None
        assert (
            body.findtext("D:share-invite-notification/D:sharer-resource-uri/D:href", namespaces=NS)
            == owner_cal
        )
        assert body.find("D:share-invite-notification/D:share-access/D:read-write", NS) is not None
        assert (
            body.findtext("D:share-invite-notification/D:comment", namespaces=NS) == "Team calendar"
        )
        reply_url = body.findtext("D:share-invite-notification/D:reply-url/D:href", namespaces=NS)
        assert reply_url == invite_href
        plain = await bob("GET", invite_href)  # no Accept: plain XML, never 406
        assert plain.status == 200 and plain.header("Content-Type").startswith("application/xml")

        # nobody else reads or answers bob's notifications
        assert (await carol("GET", invite_href)).status == 403
        assert (await carol("POST", reply_url, reply_body(True), **SHARING)).status == 403

        # -- bob accepts into his calendar home under a chosen name
        accepted = await bob("POST", reply_url, reply_body(True, bob_home, "Team"), **SHARING)
        assert accepted.status == 201, accepted.body
        location = accepted.header("Location")
        copy = bob_home + "Team/"
        assert location.endswith(copy)
        # the same answer again: nothing changes, the same copy is named
        again = await bob("POST", reply_url, reply_body(True), **SHARING)
        assert again.status == 201 and again.header("Location") == location

        listing = await bob(
            "PROPFIND",
            bob_home,
            propfind(
                "D:resourcetype", "D:displayname", "D:share-access", "C:schedule-calendar-transp"
            ),
            Depth="1",
        )
        assert listing.status == 207
        responses = xml(listing).findall("D:response", NS)
        listed = [canonical(r.findtext("D:href", namespaces=NS)) for r in responses]
        assert len(listed) == len(set(listed)), listed  # the copy is listed once
        by_href = dict(zip(listed, responses, strict=True))
        entry = by_href[canonical(copy)]
        assert entry.find(".//D:share-access/D:read-write", NS) is not None
        assert entry.find(".//D:resourcetype/C:calendar", NS) is not None
        assert entry.find(".//C:schedule-calendar-transp/C:transparent", NS) is not None
        assert url in by_href  # the notification collection is listed in the calendar home

        # -- writes through the copy reach alice's calendar
        put = await bob("PUT", copy + "b.ics", event("b", "Bob's"), Content_Type="text/calendar")
        assert put.status == 201, put.body
        seen = await alice("GET", owner_cal + "b.ics")
        assert seen.status == 200 and b"SUMMARY:Bob's" in seen.body
        members_of_copy = await bob("PROPFIND", copy, propfind("D:getetag"), Depth="1")
        hrefs = [h.text for h in xml(members_of_copy).iterfind(".//D:href", NS)]
        assert copy + "a.ics" in hrefs and copy + "b.ics" in hrefs
        assert not any(h.startswith(owner_cal) for h in hrefs)
        sync = await bob(
            "REPORT",
            copy,
            '<D:sync-collection xmlns:D="DAV:"><D:sync-token/><D:sync-level>1</D:sync-level><D:prop><D:getetag/></D:prop></D:sync-collection>',
            **XML,
        )
        assert sync.status == 207
        sync_hrefs = [h.text for h in xml(sync).iterfind(".//D:href", NS)]
        assert copy + "b.ics" in sync_hrefs and all(h.startswith(copy) for h in sync_hrefs)

        # alice is told bob accepted
        _, alice_notes = await notifications_of(alice)
        assert any(kind == "share-reply-notification" for _, kind in alice_notes)

        # -- the sharee renames their copy; the owner's name is untouched
        patched = await bob(
            "PROPPATCH",
            copy,
            '<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop><D:displayname>Bob sees this</D:displayname></D:prop></D:set></D:propertyupdate>',
            **XML,
        )
        assert patched.status == 207 and b"200" in patched.body
        again = await bob("PROPFIND", copy, propfind("D:displayname"), Depth="0")
        assert xml(again).findtext(".//D:displayname", namespaces=NS) == "Bob sees this"
        owner_name = await alice("PROPFIND", owner_cal, propfind("D:displayname"), Depth="0")
        assert xml(owner_name).findtext(".//D:displayname", namespaces=NS) != "Bob sees this"

        # -- downgrade to read: bob's next write is refused and never reaches the upstream
        assert (
            await alice(
                "POST", owner_cal, share_body(("mailto:bob@example.org", "read")), **SHARING
            )
        ).status == 204
        refused = await bob("PUT", copy + "c.ics", event("c"), Content_Type="text/calendar")
        assert refused.status == 403 and b"need-privileges" in refused.body
        assert (await alice("GET", owner_cal + "c.ics")).status == 404
        assert (await bob("DELETE", copy + "a.ics")).status == 403
        privileges = await bob(
            "PROPFIND",
            copy,
            propfind("D:current-user-privilege-set", "D:share-access", "D:current-user-principal"),
            Depth="0",
        )
        principal = xml(privileges).findtext(".//D:current-user-principal/D:href", namespaces=NS)
        assert canonical(principal) == "/bob/"  # the sharee, not the owner the upstream saw
        granted = {
            etree.QName(p).localname for p in xml(privileges).iterfind(".//D:privilege/*", NS)
        }
        assert "read" in granted and "write" not in granted and "write-content" not in granted
        assert xml(privileges).find(".//D:share-access/D:read", NS) is not None
        assert (await bob("GET", copy + "a.ics")).status == 200

        # -- revoke: the copy is gone on the very next request
        assert (
            await alice(
                "POST", owner_cal, share_body(("mailto:bob@example.org", "no-access")), **SHARING
            )
        ).status == 204
        gone = await bob("GET", copy + "a.ics")
        assert absent(gone) and b"Alice's" not in gone.body  # bob's own (empty) namespace now
        _, bob_notes = await notifications_of(bob)
        revoked = [h for h, kind in bob_notes if kind == "share-invite-notification"]
        body = xml(await bob("GET", revoked[-1], Accept="application/davnotification+xml"))
        assert body.find(".//D:share-access/D:no-access", NS) is not None


async def test_decline_delete_and_owner_delete(sharing_pair: Pair) -> None:
    pair = sharing_pair
    name = f"decl-{uuid.uuid4().hex[:6]}"
    owner_cal = f"{pair.calendar_home}{name}/"
    async with raw_session() as session:
        alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
        await bob.hello()
        assert (await alice("MKCALENDAR", owner_cal)).status == 201
        assert (
            await alice("POST", owner_cal, share_body(("/bob/", "read")), **SHARING)
        ).status == 204
        _, notes = await notifications_of(bob)
        invite = notes[-1][0]
        assert (await bob("POST", invite, reply_body(False), **SHARING)).status == 204
        owner_view = await alice("PROPFIND", owner_cal, propfind("D:invite"), Depth="0")
        assert xml(owner_view).find(".//D:sharee/D:invite-declined", NS) is not None

        # re-invite after decline, accept, then bob removes his copy
        assert (
            await alice("POST", owner_cal, share_body(("/bob/", "read")), **SHARING)
        ).status == 204
        _, notes = await notifications_of(bob)
        accepted = await bob("POST", notes[-1][0], reply_body(True), **SHARING)
        assert accepted.status == 201
        copy = copy_path(accepted)
        assert (await bob("PROPFIND", copy, propfind("D:displayname"), Depth="0")).status == 207
        assert (await bob("DELETE", copy)).status == 204
        assert (
            await alice("PROPFIND", owner_cal, propfind("D:displayname"), Depth="0")
        ).status == 207  # owner's data untouched
        owner_view = await alice("PROPFIND", owner_cal, propfind("D:invite"), Depth="0")
        assert xml(owner_view).find(".//D:sharee/D:invite-declined", NS) is not None

        # the owner deleting the collection ends every share
        assert (
            await alice("POST", owner_cal, share_body(("/bob/", "read")), **SHARING)
        ).status == 204
        _, notes = await notifications_of(bob)
        accepted = await bob("POST", notes[-1][0], reply_body(True), **SHARING)
        assert accepted.status == 201
        assert (await alice("DELETE", owner_cal)).status in (200, 204)
        copy = "/" + accepted.header("Location").split("://", 1)[1].split("/", 1)[1]
        assert absent(await bob("PROPFIND", copy, propfind("D:displayname"), Depth="0"))


async def test_address_book_read_only_with_carol(sharing_pair: Pair) -> None:
    pair = sharing_pair
    name = f"book-{uuid.uuid4().hex[:6]}"
    book = f"{pair.addressbook_home}{name}/"
    carol_books = pair.addressbook_home.replace("alice", "carol")
    mkcol = '<D:mkcol xmlns:D="DAV:" xmlns:CR="urn:ietf:params:xml:ns:carddav"><D:set><D:prop><D:resourcetype><D:collection/><CR:addressbook/></D:resourcetype><D:displayname>Friends</D:displayname></D:prop></D:set></D:mkcol>'
    card = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:c1\r\nFN:Dora\r\nN:Dora;;;;\r\nEND:VCARD\r\n"
    async with raw_session() as session:
        alice, carol = Client(session, pair, "alice"), Client(session, pair, "carol")
        await carol.hello()
        assert (await alice("MKCOL", book, mkcol, **XML)).status == 201
        assert (await alice("PUT", book + "c1.vcf", card, Content_Type="text/vcard")).status == 201
        assert (
            await alice("POST", book, share_body(("mailto:carol@example.org", "read")), **SHARING)
        ).status == 204
        _, notes = await notifications_of(carol)
        invite = xml(await carol("GET", notes[-1][0], Accept="application/davnotification+xml"))
        assert (
            invite.find(".//D:prop/D:resourcetype/{urn:ietf:params:xml:ns:carddav}addressbook", NS)
            is not None
        )
        # create-in outside carol's own homes is refused
        outside = await carol(
            "POST", notes[-1][0], reply_body(True, pair.addressbook_home), **SHARING
        )
        assert outside.status == 403
        accepted = await carol("POST", notes[-1][0], reply_body(True, carol_books), **SHARING)
        assert accepted.status == 201
        copy = "/" + accepted.header("Location").split("://", 1)[1].split("/", 1)[1]
        assert copy.startswith(carol_books)
        got = await carol("GET", copy + "c1.vcf")
        assert got.status == 200 and b"FN:Dora" in got.body
        assert (
            await carol("PUT", copy + "c2.vcf", card.replace("c1", "c2"), Content_Type="text/vcard")
        ).status == 403
        assert (await carol("DELETE", copy + "c1.vcf")).status == 403
        assert (await alice("GET", book + "c1.vcf")).status == 200


async def test_notification_collection_sync_delete_and_refusals(sharing_pair: Pair) -> None:
    pair = sharing_pair
    name = f"note-{uuid.uuid4().hex[:6]}"
    owner_cal = f"{pair.calendar_home}{name}/"
    async with raw_session() as session:
        alice, bob, carol = (Client(session, pair, u) for u in ("alice", "bob", "carol"))
        await bob.hello()
        url, _ = await notifications_of(bob)
        sync = '<D:sync-collection xmlns:D="DAV:"><D:sync-token>{}</D:sync-token><D:sync-level>1</D:sync-level><D:prop><D:getetag/><D:notificationtype/></D:prop></D:sync-collection>'
        first = await bob("REPORT", url, sync.format(""), **XML)
        assert first.status == 207
        token = xml(first).findtext("D:sync-token", namespaces=NS)
        assert token

        props = await bob(
            "PROPFIND",
            url,
            propfind("D:resourcetype", "D:sync-token", "CS:getctag", "D:supported-report-set"),
            Depth="0",
        )
        doc = xml(props)
        assert doc.find(".//D:resourcetype/D:notifications", NS) is not None
        assert doc.find(".//D:resourcetype/CS:notification", NS) is not None
        assert doc.findtext(".//D:sync-token", namespaces=NS) == token
        assert doc.find(".//D:supported-report/D:report/D:sync-collection", NS) is not None

        assert (await alice("MKCALENDAR", owner_cal)).status == 201
        assert (
            await alice(
                "POST", owner_cal, share_body(("mailto:bob@example.org", "read")), **SHARING
            )
        ).status == 204
        delta = await bob("REPORT", url, sync.format(token), **XML)
        changed = [r for r in xml(delta).findall("D:response", NS)]
        assert (
            len(changed) == 1
            and changed[0].find(".//D:notificationtype/D:share-invite-notification", NS) is not None
        )
        member = changed[0].findtext("D:href", namespaces=NS)
        token2 = xml(delta).findtext("D:sync-token", namespaces=NS)

        # a change of access overwrites (coalesces) the same notification
        assert (
            await alice(
                "POST", owner_cal, share_body(("mailto:bob@example.org", "read-write")), **SHARING
            )
        ).status == 204
        _, members = await notifications_of(bob)
        assert [h for h, _ in members].count(member) == 1
        body = xml(await bob("GET", member, Accept="application/davnotification+xml"))
        assert body.find(".//D:share-access/D:read-write", NS) is not None

        # clients cannot write into the collection or change members; others cannot delete
        assert (
            await bob("PUT", url + "mine.xml", "<x/>", Content_Type="application/xml")
        ).status == 403
        assert (await bob("MKCOL", url + "sub/")).status == 403
        assert (
            await bob("PROPPATCH", member, '<D:propertyupdate xmlns:D="DAV:"/>', **XML)
        ).status == 403
        assert (await bob("DELETE", url)).status == 403
        assert (await carol("DELETE", member)).status == 403
        assert (await carol("PROPFIND", url, propfind("D:getetag"), Depth="1")).status == 403

        # ignoring the invite: DELETE; sync reports it as removed (404)
        assert (await bob("DELETE", member)).status == 204
        assert (await bob("GET", member)).status == 404
        after = await bob("REPORT", url, sync.format(token2), **XML)
        statuses = {
            r.findtext("D:href", namespaces=NS): r.findtext("D:status", namespaces=NS)
            for r in xml(after).findall("D:response", NS)
        }
        assert "404" in (statuses.get(member) or "")
        # ... and the sharer is not told (draft §4.5): alice has no reply for this share
        _, alice_notes = await notifications_of(alice)
        invalid = await bob("REPORT", url, sync.format(token2[:-1] + "99999999"), **XML)
        assert invalid.status == 403 and b"valid-sync-token" in invalid.body
        garbage = await bob("REPORT", url, sync.format("http://example.org/other-token"), **XML)
        assert garbage.status == 403 and b"valid-sync-token" in garbage.body


async def test_notification_collection_syncs_like_feeds(sharing_pair: Pair) -> None:
    """The notification collection uses the same RFC 6578 engine as feeds, end to end:
    D:limit pages with 507 and a token for that page, an empty D:prop still gives each
    changed member a propstat, sync-level 2 is refused."""
    pair = sharing_pair
    tag = uuid.uuid4().hex[:6]
    async with raw_session() as session:
        alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
        await bob.hello()
        url, _ = await notifications_of(bob)
        start = xml(await bob("REPORT", url, _sync(""), **XML)).findtext(
            "D:sync-token", namespaces=NS
        )
        for n in (1, 2):
            calendar = f"{pair.calendar_home}sync-{tag}-{n}/"
            assert (await alice("MKCALENDAR", calendar)).status == 201
            shared = await alice("POST", calendar, share_body(("bob", "read")), **SHARING)
            assert shared.status == 204

        seen: list[str] = []
        cuts = 0
        token = start or ""
        for _ in range(4):
            page = xml(await bob("REPORT", url, _sync(token, limit=1), **XML))
            statuses = {
                r.findtext("D:href", namespaces=NS): r.findtext("D:status", namespaces=NS)
                for r in page.findall("D:response", NS)
            }
            cut = statuses.pop(url, None)
            seen += list(statuses)
            token = page.findtext("D:sync-token", namespaces=NS) or ""
            if cut is None:
                break
            cuts += 1
            assert cut == "HTTP/1.1 507 Insufficient Storage"
            assert page.find("D:response/D:error/D:number-of-matches-within-limits", NS) is not None
        assert cuts == 1 and len(seen) == 2 and len(set(seen)) == 2, (cuts, seen)

        empty = xml(await bob("REPORT", url, _sync(start or "", prop=""), **XML))
        members = empty.findall("D:response", NS)
        assert len(members) == 2
        assert all(m.find("D:propstat/D:status", NS) is not None for m in members)

        level = await bob("REPORT", url, _sync("").replace(">1<", ">2<"), **XML)
        assert level.status == 400


def _sync(token: str, limit: int | None = None, prop: str = "<D:getetag/>") -> str:
    cap = f"<D:limit><D:nresults>{limit}</D:nresults></D:limit>" if limit else ""
    return (
        f'<D:sync-collection xmlns:D="DAV:"><D:sync-token>{token}</D:sync-token>'
        f"<D:sync-level>1</D:sync-level>{cap}<D:prop>{prop}</D:prop></D:sync-collection>"
    )


async def test_encoded_names_at_sign_users_and_missing_slashes(sharing_pair: Pair) -> None:
    """A collection name with a space, a sharee whose id holds '@', paths without the
    trailing slash: all map the same way in both directions."""
    pair = sharing_pair
    name = f"Team%20Plan%20{uuid.uuid4().hex[:4]}"
    owner_cal = f"{pair.calendar_home}{name}/"
    dave_home = pair.calendar_home.replace("alice", "dave@corp")
    async with raw_session() as session:
        alice, dave = Client(session, pair, "alice"), Client(session, pair, "dave@corp")
        await dave.hello()
        assert (await alice("MKCALENDAR", owner_cal)).status == 201
        assert (
            await alice("PUT", owner_cal + "e%201.ics", event("e1"), Content_Type="text/calendar")
        ).status == 201
        # the sharee named by principal URL, with the '@' percent-encoded
        assert (
            await alice(
                "POST",
                owner_cal.rstrip("/"),
                share_body(("/dave%40corp/", "read-write")),
                **SHARING,
            )
        ).status == 204
        copy = await accept_latest(dave)
        assert copy.startswith(dave_home) and "%20" in copy and copy.endswith("/")
        no_slash = await dave(
            "PROPFIND", copy.rstrip("/"), propfind("D:displayname", "D:share-access"), Depth="1"
        )
        assert no_slash.status == 207, no_slash.body
        # compared canonically: "%40" and "@" are the same path (RFC 3986 §6.2.2)
        hrefs = [canonical(h.text) for h in xml(no_slash).iterfind(".//D:href", NS)]
        assert canonical(copy + "e%201.ics") in hrefs, hrefs
        assert all(h.startswith(canonical(copy).rstrip("/")) for h in hrefs), hrefs
        multiget = (
            '<C:calendar-multiget xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
            f"<D:prop><D:getetag/><C:calendar-data/></D:prop><D:href>{copy}e%201.ics</D:href>"
            "</C:calendar-multiget>"
        )
        got = await dave("REPORT", copy, multiget, Depth="1")
        assert got.status == 207 and b"UID:e1" in got.body
        assert all(
            canonical(h.text).startswith(canonical(copy))
            for h in xml(got).iterfind(".//D:href", NS)
        )
        if pair.flavour == "radicale":  # Xandikos refuses a MOVE inside one calendar
            moved = await dave(
                "MOVE", copy + "e%201.ics", Destination=pair.proxy.url(copy + "e%202.ics")
            )
            assert moved.status in (201, 204), moved.body
            assert (await alice("GET", owner_cal + "e%202.ics")).status == 200
        # out of the copy into dave's own calendar: refused
        escape = await dave(
            "MOVE", copy + "e%202.ics", Destination=pair.proxy.url(dave_home + "mine.ics")
        )
        assert escape.status == 403


async def test_plain_collection_share(sharing_pair: Pair) -> None:
    pair = sharing_pair
    if pair.flavour.startswith("radicale"):
        pytest.skip("Radicale (owner_only rights) allows only calendars and address books there")
    name = f"files-{uuid.uuid4().hex[:6]}"
    folder = f"{pair.calendar_home}{name}/"
    async with raw_session() as session:
        alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
        await bob.hello()
        made = await alice("MKCOL", folder)
        assert made.status == 201, made.body
        assert (await alice("POST", folder, share_body(("bob", "read")), **SHARING)).status == 204
        _, notes = await notifications_of(bob)
        invite = xml(await bob("GET", notes[-1][0], Accept="application/davnotification+xml"))
        kinds = [
            etree.QName(t).localname for t in invite.iterfind(".//D:prop/D:resourcetype/*", NS)
        ]
        assert kinds == ["collection"]
        accepted = await bob("POST", notes[-1][0], reply_body(True), **SHARING)
        assert accepted.status == 201
        copy = "/" + accepted.header("Location").split("://", 1)[1].split("/", 1)[1]
        listing = await bob(
            "PROPFIND", copy, propfind("D:resourcetype", "D:share-access"), Depth="0"
        )
        assert (
            listing.status == 207 and xml(listing).find(".//D:share-access/D:read", NS) is not None
        )
        assert (await bob("MKCOL", copy + "sub/")).status == 403


async def test_radicale_native_backend_enforces_upstream_and_reconciles_at_start(tmp_path) -> None:
    """radicale-native: Radicale itself serves and guards the copy (bob reaches it
    directly, with his own identity); rights are reconciled when davproxy starts."""
    from davproxy.ops.embedded import start_davproxy, start_radicale
    from tests.helpers import write_config, write_htpasswd

    with start_radicale(tmp_path / "radicale", sharing=True) as radicale:
        main, port = write_config(
            tmp_path / "davproxy", upstream_url=radicale.url, kind="radicale",
            mode="proxy-auth", htpasswd=write_htpasswd(tmp_path / "users.htpasswd"),
            mapping_extra='[access]\nbackend = "radicale-native"\n',
        )  # fmt: skip
        direct = {"bob": {"X-Remote-User": "bob"}, "alice": {"X-Remote-User": "alice"}}
        with start_davproxy(main, port=port) as proxy:
            from tests.integration.conftest import Endpoint

            pair = Pair(
                "radicale-native",
                Endpoint(radicale.url, direct),
                Endpoint(proxy.url, {}),
                "/alice/",
                "/alice/",
                radicale,
                proxy,
            )
            async with raw_session() as session:
                alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
                await bob.hello()
                assert (await alice("MKCALENDAR", "/alice/nat/")).status == 201
                assert (
                    await alice("PUT", "/alice/nat/a.ics", event("a"), Content_Type="text/calendar")
                ).status == 201
                assert (
                    await alice("POST", "/alice/nat/", share_body(("bob", "read")), **SHARING)
                ).status == 204
                _, notes = await notifications_of(bob)
                accepted = await bob(
                    "POST", notes[-1][0], reply_body(True, "/bob/", "nat"), **SHARING
                )
                assert accepted.status == 201
                # straight to Radicale as bob: the upstream itself grants read ...
                got = await fetch(session, "GET", radicale.url + "bob/nat/a.ics", direct["bob"])
                assert got.status == 200
                put = await fetch(
                    session,
                    "PUT",
                    radicale.url + "bob/nat/b.ics",
                    {**direct["bob"], "Content-Type": "text/calendar"},
                    event("b"),
                )
                assert put.status == 403
                # ... and nothing of alice's outside the share
                assert (
                    await fetch(session, "GET", radicale.url + "alice/nat/a.ics", direct["bob"])
                ).status == 403
                # a map lost behind davproxy's back (here: deleted directly) ...
                lost = await fetch(
                    session,
                    "POST",
                    radicale.url + ".sharing/v1/map/delete",
                    {
                        **direct["alice"],
                        "Content-Type": "application/json",
                        "Accept": "application/json",
                        "Accept-Encoding": "identity",
                    },
                    '{"PathOrToken": "/bob/nat/"}',
                )
                assert lost.status == 200
                assert (
                    await fetch(session, "GET", radicale.url + "bob/nat/a.ics", direct["bob"])
                ).status != 200
        # ... is restored when davproxy starts again
        with start_davproxy(main, port=port):
            async with raw_session() as session:
                assert (
                    await fetch(session, "GET", radicale.url + "bob/nat/a.ics", direct["bob"])
                ).status == 200
                # revoke through davproxy: the upstream refuses bob on the very next request
                alice = Client(session, pair, "alice")
                assert (
                    await alice("POST", "/alice/nat/", share_body(("bob", "no-access")), **SHARING)
                ).status == 204
                assert (
                    await fetch(session, "GET", radicale.url + "bob/nat/a.ics", direct["bob"])
                ).status != 200
                # and the owner can delete a collection that was shared (maps are removed first)
                assert (await alice("DELETE", "/alice/nat/")).status in (200, 204)


async def test_sharee_cannot_reach_beyond_the_copy(sharing_pair: Pair) -> None:
    """Under a copy requests may run as the owner: hrefs, Destinations, methods and
    paths that point anywhere else are refused, never forwarded."""
    pair = sharing_pair
    name = f"esc-{uuid.uuid4().hex[:6]}"
    shared, private = f"{pair.calendar_home}{name}/", f"{pair.calendar_home}{name}-private/"
    async with raw_session() as session:
        alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
        await bob.hello()
        for collection in (shared, private):
            assert (await alice("MKCALENDAR", collection)).status == 201
        assert (
            await alice(
                "PUT",
                private + "secret.ics",
                event("secret", "SECRET"),
                Content_Type="text/calendar",
            )
        ).status == 201
        assert (
            await alice("POST", shared, share_body(("bob", "read-write")), **SHARING)
        ).status == 204
        copy = await accept_latest(bob)

        def multiget(*hrefs: str) -> str:
            refs = "".join(f"<D:href>{h}</D:href>" for h in hrefs)
            return f'<C:calendar-multiget xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav"><D:prop><C:calendar-data/></D:prop>{refs}</C:calendar-multiget>'

        for href in (
            private + "secret.ics",
            copy + "../" + name + "-private/secret.ics",
            "http://elsewhere" + private + "secret.ics",
        ):
            answer = await bob("REPORT", copy, multiget(href), Depth="1")
            assert b"SECRET" not in answer.body, href
            if pair.flavour != "radicale-native":  # native: Radicale answers as bob
                assert answer.status in (400, 403), (href, answer.status)
        mislabelled = await bob(
            "REPORT", copy, multiget(private + "secret.ics"), Depth="1", Content_Type="text/plain"
        )
        assert b"SECRET" not in mislabelled.body
        for destination in (private + "stolen.ics", pair.proxy.url(private + "stolen.ics")):
            moved = await bob("PUT", copy + "mine.ics", event("mine"), Content_Type="text/calendar")
            assert moved.status in (201, 204)
            out = await bob("MOVE", copy + "mine.ics", Destination=destination)
            assert out.status == 403
        assert (await alice("GET", private + "stolen.ics")).status == 404
        for method in ("LOCK", "ACL", "FROBNICATE"):
            assert (await bob(method, copy + "mine.ics")).status in (403, 405)


async def test_review_regressions(sharing_pair: Pair) -> None:
    """Defects a security review found, each pinned: replacing the owner's collection
    through the copy root, POST under a copy, sharing a home, racing replies, and a
    deleted home leaving its shares behind."""
    import asyncio

    pair = sharing_pair
    name = f"rev-{uuid.uuid4().hex[:6]}"
    owner_cal = f"{pair.calendar_home}{name}/"
    async with raw_session() as session:
        alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
        await bob.hello()
        assert (await alice("MKCALENDAR", owner_cal)).status == 201
        assert (
            await alice("PUT", owner_cal + "a.ics", event("a"), Content_Type="text/calendar")
        ).status == 201
        # a home is not a collection one can share
        home_share = await alice("POST", pair.calendar_home, share_body(("bob", "read")), **SHARING)
        assert home_share.status == 403
        assert (
            await alice("POST", owner_cal, share_body(("bob", "read-write")), **SHARING)
        ).status == 204

        # two answers racing for one invitation: exactly one copy is made, and the
        # later answer names it (an accepted share accepted again), no 500
        _, notes = await notifications_of(bob)
        answers = await asyncio.gather(
            bob("POST", notes[-1][0], reply_body(True, None, "one"), **SHARING),
            bob("POST", notes[-1][0], reply_body(True, None, "two"), **SHARING),
        )
        assert [a.status for a in answers] == [201, 201], [a.body for a in answers]
        assert answers[0].header("Location") == answers[1].header("Location")
        copy = copy_path(answers[0])
        listed = await bob("PROPFIND", pair.calendar_home.replace("alice", "bob"),
                           propfind("D:resourcetype"), Depth="1")  # fmt: skip
        copies = [h for h in (e.text or "" for e in xml(listed).iterfind(".//D:href", NS))
                  if canonical(h).rstrip("/").endswith(("/one", "/two"))]  # fmt: skip
        assert copies == [copy], copies

        # nothing may land on the copy root itself: it would replace alice's calendar
        for method in ("COPY", "MOVE"):
            over = await bob(
                method, copy + "a.ics", Destination=pair.proxy.url(copy), Overwrite="T"
            )
            assert over.status == 403, (method, over.status)
        listing = await alice("PROPFIND", owner_cal, propfind("D:resourcetype"), Depth="0")
        assert xml(listing).find(".//D:resourcetype/C:calendar", NS) is not None
        # POST under a copy could carry anything, executed as the owner
        assert (await bob("POST", copy, share_body(("carol", "read")), **SHARING)).status == 403
        assert (await bob("POST", copy, "x", Content_Type="text/calendar")).status == 403
        if pair.flavour == "radicale-native":
            planted = await bob(
                "POST",
                "/.sharing/v1/map/create",
                '{"PathOrToken": "/carol/x/"}',
                Content_Type="application/json",
            )
            assert planted.status == 403

        # the owner deleting what holds a shared collection ends the share: the home on
        # Radicale; the collection itself elsewhere (Xandikos refuses to delete a
        # calendar home, and the other set-ups share Radicale's home deletion path)
        home = pair.calendar_home if pair.flavour == "radicale" else owner_cal
        deleted = await alice("DELETE", home)
        assert deleted.status in (200, 204), deleted.body
        assert absent(await bob("GET", copy + "a.ics"))
        owner_invites = await alice("PROPFIND", "/alice/", propfind("D:displayname"), Depth="0")
        assert owner_invites.status in (207, 404)


async def test_native_sharee_cut_off_at_commit_even_if_radicale_does_not_answer(tmp_path) -> None:
    """radicale-native: the store ends a share first and Radicale's map goes after it.
    When Radicale does not confirm (here: stopped, so the call times out), davproxy itself
    refuses the ended sharee at the old copy until a later reconciliation succeeds."""
    import signal

    from davproxy.ops.embedded import start_davproxy, start_radicale
    from tests.helpers import write_config, write_htpasswd
    from tests.integration.conftest import Endpoint

    with start_radicale(tmp_path / "radicale", sharing=True) as radicale:
        main, port = write_config(
            tmp_path / "davproxy", upstream_url=radicale.url, kind="radicale",
            mode="proxy-auth", htpasswd=write_htpasswd(tmp_path / "users.htpasswd"),
            mapping_extra='[access]\nbackend = "radicale-native"\n',
            server_extra="upstream_timeout = 1.5",
        )  # fmt: skip
        with start_davproxy(main, port=port) as proxy:
            pair = Pair(
                "radicale-native", Endpoint(radicale.url), Endpoint(proxy.url, {}),
                "/alice/", "/alice/", radicale, proxy,
            )  # fmt: skip
            async with raw_session() as session:
                alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
                carol = Client(session, pair, "carol")
                await bob.hello()
                await carol.hello()
                assert (await alice("MKCALENDAR", "/alice/fence/")).status == 201
                put = await alice(
                    "PUT", "/alice/fence/a.ics", event("a"), Content_Type="text/calendar"
                )
                assert put.status == 201
                shared = await alice(
                    "POST", "/alice/fence/", share_body(("bob", "read")), **SHARING
                )
                assert shared.status == 204
                _, notes = await notifications_of(bob)
                accepted = await bob(
                    "POST", notes[-1][0], reply_body(True, "/bob/", "fence"), **SHARING
                )
                assert accepted.status == 201
                assert (await bob("GET", "/bob/fence/a.ics")).status == 200

                radicale.process.send_signal(signal.SIGSTOP)
                try:
                    left = await bob("DELETE", "/bob/fence/")  # committed, Radicale silent
                finally:
                    radicale.process.send_signal(signal.SIGCONT)
                assert left.status in (502, 504)
                fenced = await bob("GET", "/bob/fence/a.ics")
                assert fenced.status == 403 and b"this share has ended" in fenced.body

                # the next change of alice's shares reaches Radicale: the map is gone there
                # and davproxy stops refusing on its own
                again = await alice(
                    "POST", "/alice/fence/", share_body(("carol", "read")), **SHARING
                )
                assert again.status == 204
                after = await bob("GET", "/bob/fence/a.ics")
                assert after.status != 200 and b"this share has ended" not in after.body

        # davproxy starting while Radicale does not answer: start-up reconciliation fails
        # and is retried until it succeeds
        radicale.process.send_signal(signal.SIGSTOP)
        try:
            restarted = start_davproxy(main, port=port)
        finally:
            radicale.process.send_signal(signal.SIGCONT)
        with restarted:
            for _ in range(100):
                log = restarted.log_path.read_text(encoding="utf-8", errors="replace")
                if "reconciliation with up done" in log:
                    break
                time.sleep(0.1)
        assert "start-up reconciliation with up failed" in log
        assert "reconciliation with up done" in log


async def test_concurrent_home_listings_never_wait_on_each_other(radicale_pair: Pair) -> None:
    """A sharee's home listing asks the upstream for the home and, meanwhile, for its
    copies' owners: it must never hold one of the upstream's connection slots (two for
    Radicale) while waiting for another.  Regression: with two listings at once each
    held a slot for the home's answer while its copies waited for a free one — both
    hung until the upstream timeout."""
    pair = radicale_pair
    owner_cal = f"{pair.calendar_home}slots-{uuid.uuid4().hex[:6]}/"
    async with raw_session() as session:
        alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
        await bob.hello()
        assert (await alice("MKCALENDAR", owner_cal)).status == 201
        shared = await alice(
            "POST", owner_cal, share_body(("mailto:bob@example.org", "read")), **SHARING
        )
        assert shared.status == 204, shared.body
        copy = await accept_latest(bob)
        home = pair.calendar_home.replace("alice", "bob")

        async def listing() -> Answer:
            return await bob("PROPFIND", home, propfind("D:displayname"), Depth="1")

        answers = await asyncio.wait_for(asyncio.gather(*(listing() for _ in range(6))), 20)
        for answer in answers:
            assert answer.status == 207
            listed = {canonical(h.text or "") for h in xml(answer).iter("{DAV:}href")}
            assert canonical(copy) in listed
