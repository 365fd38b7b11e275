"""The Apple CalendarServer flavour, replayed as an Apple client sends it, on the same
share records as the IETF flavour (and across flavours)."""

from __future__ import annotations

import re
import uuid

from lxml import etree

from tests.helpers import fetch, raw_session

from .conftest import Pair
from .test_sharing import NS, SHARING, Client, event, propfind, reply_body, xml

TEXT_XML = {"Content-Type": "text/xml; charset=utf-8"}
CS = "http://calendarserver.org/ns/"


def cs_share(*sets: tuple[str, str], removes: tuple[str, ...] = (), summary: str = "Work") -> str:
    items = "".join(
        f"<CS:set><D:href>{h}</D:href><CS:common-name>{h}</CS:common-name>"
        f"<CS:summary>{summary}</CS:summary><CS:{a}/></CS:set>"
        for h, a in sets
    ) + "".join(f"<CS:remove><D:href>{h}</D:href></CS:remove>" for h in removes)
    return f'<?xml version="1.0"?><CS:share xmlns:D="DAV:" xmlns:CS="{CS}">{items}</CS:share>'


def cs_reply(uid: str, host: str, accept: bool = True, summary: str = "") -> str:
    status = "invite-accepted" if accept else "invite-declined"
    extra = f"<CS:summary>{summary}</CS:summary>" if summary else ""
    return (
        f'<?xml version="1.0"?><CS:invite-reply xmlns:D="DAV:" xmlns:CS="{CS}">'
        f"<D:href>mailto:bob@example.org</D:href><CS:{status}/>"
        f"<CS:hosturl><D:href>{host}</D:href></CS:hosturl><CS:in-reply-to>{uid}</CS:in-reply-to>"
        f"{extra}</CS:invite-reply>"
    )


async def apple_notifications(client: Client) -> list[tuple[str, etree._Element]]:
    """What Calendar.app does: sync the collection for CS:notificationtype + getetag,
    then GET each member without an Accept header."""
    found = await client("PROPFIND", f"/{client.user}/", propfind("CS:notification-URL"), Depth="0")
    url = xml(found).findtext(".//CS:notification-URL/D:href", namespaces=NS)
    sync = await client(
        "REPORT", url,
        '<D:sync-collection xmlns:D="DAV:" xmlns:CS="http://calendarserver.org/ns/"><D:sync-token/>'
        "<D:sync-level>1</D:sync-level><D:prop><CS:notificationtype/><D:getetag/></D:prop>"
        "</D:sync-collection>",
        **TEXT_XML,
    )  # fmt: skip
    assert sync.status == 207
    result = []
    for response in xml(sync).findall("D:response", NS):
        link = response.findtext("D:href", namespaces=NS)
        kind = response.find(".//CS:notificationtype/*", NS)
        assert kind is not None and response.findtext(".//D:getetag", namespaces=NS)
        got = await client("GET", link)
        assert got.status == 200 and got.header("Content-Type").startswith("application/xml")
        body = xml(got)
        assert body.tag == f"{{{CS}}}notification"
        assert re.fullmatch(r"\d{8}T\d{6}Z", body.findtext("CS:dtstamp", namespaces=NS) or "")
        assert body[1].tag == kind.tag  # the type property mirrors the body
        result.append((link, body[1]))
    return result


async def test_apple_calendar_share_accept_use_leave(sharing_pair: Pair) -> None:
    pair = sharing_pair
    name = f"apple-{uuid.uuid4().hex[:6]}"
    owner_cal = f"{pair.calendar_home}{name}/"
    bob_home = pair.calendar_home.replace("alice", "bob")
    async with raw_session() as session:
        alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
        await bob.hello()
        assert (await alice("MKCALENDAR", owner_cal)).status == 201
        assert (
            await alice("PUT", owner_cal + "a.ics", event("a"), Content_Type="text/calendar")
        ).status == 201
        options = await alice("OPTIONS", owner_cal)
        assert "calendarserver-sharing" in (options.header("DAV") or "")

        # an unknown user in any CS:set: 207, 403 for it, 424 for the rest, nothing applied
        partial = await alice(
            "POST",
            owner_cal,
            cs_share(
                ("mailto:bob@example.org", "read-write"), ("mailto:ghost@example.org", "read")
            ),
            **TEXT_XML,
        )
        assert partial.status == 207
        codes = {
            r.findtext("D:href", namespaces=NS): r.findtext("D:status", namespaces=NS)
            for r in xml(partial).findall("D:response", NS)
        }
        assert (
            "403" in codes["mailto:ghost@example.org"] and "424" in codes["mailto:bob@example.org"]
        )
        untouched = await alice("PROPFIND", owner_cal, propfind("CS:invite"), Depth="0")
        assert xml(untouched).find(".//CS:invite/CS:user", NS) is None
        incomplete = await alice(
            "POST",
            owner_cal,
            f'<CS:share xmlns:D="DAV:" xmlns:CS="{CS}"><CS:set><D:href>/bob/</D:href></CS:set></CS:share>',
            **TEXT_XML,
        )
        assert incomplete.status == 403 and b"valid-request" in incomplete.body
        garbage = await alice(
            "POST", owner_cal, "<CS:share xmlns:CS='x'><", Content_Type="application/xml"
        )
        assert garbage.status == 403 and b"valid-request" in garbage.body

        shared = await alice(
            "POST",
            owner_cal,
            cs_share(("mailto:bob@example.org", "read-write")),
            Content_Type="application/xml",
        )
        assert shared.status == 200

        home = await bob("PROPFIND", bob_home, propfind("D:resourcetype"), Depth="1")
        kinds = {
            r.findtext("D:href", namespaces=NS): r for r in xml(home).findall("D:response", NS)
        }
        assert any(
            r.find(".//D:resourcetype/CS:notification", NS) is not None for r in kinds.values()
        )

        notes = await apple_notifications(bob)
        link, invite = notes[-1]
        assert (
            invite.tag == f"{{{CS}}}invite-notification" and invite.get("shared-type") == "calendar"
        )
        uid = invite.findtext("CS:uid", namespaces=NS)
        assert invite.find("CS:invite-noresponse", NS) is not None
        assert invite.find("CS:access/CS:read-write", NS) is not None
        assert invite.findtext("CS:hosturl/D:href", namespaces=NS) == owner_cal
        assert invite.findtext("CS:organizer/D:href", namespaces=NS) == "/alice/"
        assert invite.findtext("CS:summary", namespaces=NS) == "Work"
        assert invite.find("C:supported-calendar-component-set", NS) is not None

        bad = await bob("POST", bob_home, cs_reply("", owner_cal), **TEXT_XML)
        assert bad.status == 403 and b"valid-request" in bad.body
        unknown = await bob("POST", bob_home, cs_reply("no-such-uid", owner_cal), **TEXT_XML)
        assert unknown.status == 403 and b"invalid-share" in unknown.body

        accepted = await bob(
            "POST", bob_home, cs_reply(uid, owner_cal, summary="Alice's work"), **TEXT_XML
        )
        assert accepted.status == 200 and accepted.header("Content-Type").startswith("text/xml")
        shared_as = xml(accepted).findtext("D:href", namespaces=NS)
        assert xml(accepted).tag == f"{{{CS}}}shared-as" and shared_as.startswith(bob_home)
        # as CalendarServer writes it: no trailing slash; clients append "/" and names
        assert not shared_as.endswith("/")
        copy = shared_as + "/"
        # handled: the client deletes it (davproxy already removed it on reply: 404 is fine)
        assert (await bob("DELETE", link)).status in (204, 404)

        listing = await bob(
            "PROPFIND",
            bob_home,
            propfind(
                "D:resourcetype",
                "D:displayname",
                "CS:invite",
                "CS:shared-url",
                "D:owner",
                "C:schedule-calendar-transp",
            ),
            Depth="1",
        )
        from davproxy.dav.paths import canonical

        entry = {
            canonical(r.findtext("D:href", namespaces=NS)): r
            for r in xml(listing).findall("D:response", NS)
        }[canonical(copy)]
        assert entry.find(".//D:resourcetype/CS:shared", NS) is not None, etree.tostring(entry)
        assert entry.findtext(".//D:displayname", namespaces=NS) == "Alice's work"
        assert entry.findtext(".//CS:invite/CS:organizer/D:href", namespaces=NS) == "/alice/"
        assert entry.findtext(".//CS:shared-url/D:href", namespaces=NS) == owner_cal
        assert entry.findtext(".//D:owner/D:href", namespaces=NS) == "/alice/"
        assert entry.find(".//C:schedule-calendar-transp/C:transparent", NS) is not None

        assert (
            await bob("PUT", copy + "b.ics", event("b", "From Bob"), Content_Type="text/calendar")
        ).status == 201
        assert b"From Bob" in (await alice("GET", owner_cal + "b.ics")).body

        owner = xml(
            await alice(
                "PROPFIND",
                owner_cal,
                propfind("D:resourcetype", "CS:invite", "CS:allowed-sharing-modes", "D:invite"),
                Depth="0",
            )
        )
        assert owner.find(".//D:resourcetype/CS:shared-owner", NS) is not None
        assert owner.find(".//CS:allowed-sharing-modes/CS:can-be-shared", NS) is not None
        user = owner.find(".//CS:invite/CS:user", NS)
        assert user.findtext("CS:uid", namespaces=NS) == uid
        assert (
            user.find("CS:invite-accepted", NS) is not None
            and user.find("CS:access/CS:read-write", NS) is not None
        )
        # one record, both forms: the IETF view says the same
        assert owner.find(".//D:invite/D:sharee/D:invite-accepted", NS) is not None

        replies = [
            body
            for _, body in await apple_notifications(alice)
            if body.findtext("CS:in-reply-to", namespaces=NS) == uid
        ]
        assert replies and replies[-1].find("CS:invite-accepted", NS) is not None

        # bob leaves: 204, declined, alice is told
        assert (await bob("DELETE", copy)).status == 204
        owner = xml(await alice("PROPFIND", owner_cal, propfind("CS:invite"), Depth="0"))
        assert owner.find(".//CS:invite/CS:user/CS:invite-declined", NS) is not None
        replies = [
            body
            for _, body in await apple_notifications(alice)
            if body.findtext("CS:in-reply-to", namespaces=NS) == uid
        ]
        assert replies[-1].find("CS:invite-declined", NS) is not None

        # re-invited, accepted through the IETF reply (cross-flavour), then CS:remove
        assert (
            await alice("POST", owner_cal, cs_share(("mailto:bob@example.org", "read")), **TEXT_XML)
        ).status == 200
        link, invite = (await apple_notifications(bob))[-1]
        assert (await bob("POST", link, reply_body(True), **SHARING)).status == 201
        assert (
            await alice(
                "POST", owner_cal, cs_share(removes=("mailto:bob@example.org",)), **TEXT_XML
            )
        ).status == 200
        link, invite = (await apple_notifications(bob))[-1]
        assert invite.find("CS:invite-deleted", NS) is not None


async def test_ietf_share_answered_the_apple_way_and_address_books(sharing_pair: Pair) -> None:
    pair = sharing_pair
    name = f"mix-{uuid.uuid4().hex[:6]}"
    book = f"{pair.addressbook_home}{name}/"
    carol_books = pair.addressbook_home.replace("alice", "carol")
    mkcol = '<D:mkcol xmlns:D="DAV:" xmlns:CR="urn:ietf:params:xml:ns:carddav"><D:set><D:prop><D:resourcetype><D:collection/><CR:addressbook/></D:resourcetype></D:prop></D:set></D:mkcol>'
    async with raw_session() as session:
        alice, carol = Client(session, pair, "alice"), Client(session, pair, "carol")
        await carol.hello()
        assert (await alice("MKCOL", book, mkcol, Content_Type="application/xml")).status == 201
        body = ('<D:share-resource xmlns:D="DAV:"><D:sharee><D:href>mailto:carol@example.org</D:href>'
                "<D:share-access><D:read/></D:share-access></D:sharee></D:share-resource>")  # fmt: skip
        assert (await alice("POST", book, body, **SHARING)).status == 204
        _, invite = (await apple_notifications(carol))[-1]
        assert invite.get("shared-type") == "addressbook"
        assert invite.find("C:supported-calendar-component-set", NS) is None
        uid = invite.findtext("CS:uid", namespaces=NS)
        # the reply goes to the address-book home; the calendar home would do for Radicale
        accepted = await carol("POST", carol_books, cs_reply(uid, book), **TEXT_XML)
        assert accepted.status == 200
        copy = xml(accepted).findtext("D:href", namespaces=NS)
        assert copy.startswith(carol_books)
        listing = await carol("PROPFIND", copy, propfind("D:resourcetype"), Depth="0")
        assert xml(listing).find(".//D:resourcetype/CS:shared", NS) is not None
        # the answer is recorded once: replying again names the same copy
        again = await carol("POST", carol_books, cs_reply(uid, book), **TEXT_XML)
        assert again.status == 200 and again.body == accepted.body
        assert (
            await fetch(
                session, "GET", pair.proxy.url(copy), {"Authorization": "Basic Ym9ndXM6eA=="}
            )
        ).status == 401
