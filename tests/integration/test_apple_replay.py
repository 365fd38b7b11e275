"""Sharing sequences as Apple Calendar and Contacts send them, replayed through davproxy
in front of every upstream and access backend (``sharing_pair``).

Modelled on what CalendarServer's own scenarios exercise (caldavtester's sharing-invites,
sharing-replies "Update reply", sharing-notification-sync, sharing-unshare and CardDAV
sharing-addressbooks; the OS X request captures of its load-test client): share with a
CS:share POST, find the invitation by syncing the notification collection (with and
without properties), answer with CS:invite-reply at the home, use the copy with hrefs
built the way those clients build them — the CS:shared-as href plus "/" and a member
name, or a listed href (which already ends in "/") plus "/" again — then re-accept,
decline after accepting, accept after declining, read-only, unshare.  Written for
davproxy; nothing is copied from those suites.
"""

from __future__ import annotations

import uuid

from lxml import etree

from davproxy.dav.paths import canonical
from tests.helpers import Answer, fetch, raw_session

from .conftest import Pair
from .test_sharing import NS, SHARING, Client, event, propfind, reply_body, share_body, xml

CS = "http://calendarserver.org/ns/"
TEXT_XML = {"Content-Type": "text/xml; charset=utf-8"}  # what Calendar.app sends
CARD = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:{uid}\r\nFN:{name}\r\nN:{name};;;;\r\nEND:VCARD\r\n"
MKADDRESSBOOK = (
    '<D:mkcol xmlns:D="DAV:" xmlns:CR="urn:ietf:params:xml:ns:carddav"><D:set><D:prop>'
    "<D:resourcetype><D:collection/><CR:addressbook/></D:resourcetype>"
    "<D:displayname>Friends</D:displayname></D:prop></D:set></D:mkcol>"
)


def cs_share(*sets: tuple[str, str], removes: tuple[str, ...] = ()) -> str:
    items = "".join(
        f"<CS:set><D:href>{h}</D:href><CS:summary>Team</CS:summary><CS:{access}/></CS:set>"
        for h, access in sets
    ) + "".join(f"<CS:remove><D:href>{h}</D:href></CS:remove>" for h in removes)
    return f'<?xml version="1.0" encoding="UTF-8"?><CS:share xmlns:D="DAV:" xmlns:CS="{CS}">{items}</CS:share>'


def cs_reply(user: str, uid: str, hosturl: str, accept: bool, summary: str) -> str:
    """As the clients send it: their address, the status, hosturl and in-reply-to echoed
    from the invitation, its summary, and the names CalendarServer's suites add."""
    status = "invite-accepted" if accept else "invite-declined"
    return (
        f"<?xml version='1.0' encoding='UTF-8'?><invite-reply xmlns='{CS}'>"
        f"<href xmlns='DAV:'>mailto:{user}@example.org</href><{status}/>"
        f"<hosturl><href xmlns='DAV:'>{hosturl}</href></hosturl>"
        f"<in-reply-to>{uid}</in-reply-to><summary>{summary}</summary>"
        f"<common-name>{user.title()}</common-name><first-name>{user.title()}</first-name>"
        "<last-name>Example</last-name></invite-reply>"
    )


def sync_body(token: str, props: str) -> str:
    prop = f"<D:prop>{props}</D:prop>" if props else "<D:prop/>"
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><D:sync-collection xmlns:D="DAV:" '
        f'xmlns:CS="{CS}"><D:sync-token>{token}</D:sync-token><D:sync-level>1</D:sync-level>'
        f"{prop}</D:sync-collection>"
    )


class Notifications:
    """One user's notification collection, followed as Calendar.app follows it: the
    principal's CS:notification-URL, then sync-collection reports from the last token."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.url = ""
        self.token = ""

    async def start(self) -> None:
        found = await self.client(
            "PROPFIND", f"/{self.client.user}/", propfind("CS:notification-URL"), Depth="0",
            **TEXT_XML,
        )  # fmt: skip
        self.url = xml(found).findtext(".//CS:notification-URL/D:href", namespaces=NS) or ""
        assert self.url, found.body
        first = await self.sync(with_props=True)
        assert first is not None

    async def sync(self, with_props: bool) -> dict[str, etree._Element | None]:
        """What changed since the last token: href -> the response (None when removed).
        ``with_props`` asks for CS:notificationtype and getetag; without, an empty
        D:prop (RFC 6578 allows it; each changed member still comes with a propstat)."""
        props = "<CS:notificationtype/><D:getetag/>" if with_props else ""
        answer = await self.client("REPORT", self.url, sync_body(self.token, props), **TEXT_XML)
        assert answer.status == 207, answer.body
        root = xml(answer)
        self.token = root.findtext("D:sync-token", namespaces=NS) or ""
        changed: dict[str, etree._Element | None] = {}
        for response in root.findall("D:response", NS):
            link = response.findtext("D:href", namespaces=NS) or ""
            status = response.findtext("D:status", namespaces=NS) or ""
            if "404" in status:
                changed[link] = None
                continue
            assert response.find("D:propstat", NS) is not None  # also for an empty D:prop
            kind = response.find(".//CS:notificationtype/*", NS)
            assert (kind is not None) == with_props, etree.tostring(response)
            changed[link] = response
        return changed

    async def get(self, link: str) -> etree._Element:
        """GET without Accept, as Apple clients do: the CalendarServer form."""
        got = await self.client("GET", link)
        assert got.status == 200 and got.header("Content-Type").startswith("application/xml")
        body = xml(got)
        assert body.tag == f"{{{CS}}}notification", got.body
        return body[1]

    async def newest(self, tag: str, with_props: bool = True) -> tuple[str, etree._Element]:
        """The newest changed notification of that type (CS local name)."""
        changed = await self.sync(with_props)
        for link in reversed(list(changed)):
            if changed[link] is None:
                continue
            body = await self.get(link)
            if body.tag == f"{{{CS}}}{tag}":
                return link, body
        raise AssertionError(f"no new {tag} in {list(changed)}")


def shared_as(answer: Answer) -> str:
    assert answer.status == 200 and answer.header("Content-Type").startswith("text/xml")
    root = xml(answer)
    assert root.tag == f"{{{CS}}}shared-as", answer.body
    return root.findtext("D:href", namespaces=NS) or ""


def statuses(answer: Answer) -> dict[str, int]:
    return {
        r.findtext("D:href", namespaces=NS) or "": int(
            (r.findtext("D:status", namespaces=NS) or "x 0").split()[1]
        )
        for r in xml(answer).findall("D:response", NS)
    }


def cs_user_status(owner_view: Answer, sharee: str) -> str | None:
    for user in xml(owner_view).iterfind(".//CS:invite/CS:user", NS):
        if user.findtext("D:href", namespaces=NS) == f"mailto:{sharee}@example.org":
            found = [etree.QName(c).localname for c in user if "invite-" in str(c.tag)]
            return found[0] if found else None
    return None


async def radicale_grants(pair: Pair, session: object, path: str) -> bool | None:
    """radicale-native: whether Radicale itself serves bob ``path`` (asked directly, as
    bob); None for the other set-ups, where the upstream knows nothing of copies."""
    if pair.flavour != "radicale-native":
        return None
    answer = await fetch(session, "GET", pair.direct.url(path), pair.direct.headers("bob"))  # type: ignore[arg-type]
    return answer.status == 200


def ended(answer: Answer) -> bool:
    """What a sharee gets where their copy was: 404 (Xandikos: inside a 207)."""
    if answer.status == 207:
        return b"404" in answer.body and b"200 OK" not in answer.body
    return answer.status == 404


async def test_apple_calendar_sharing_replayed(sharing_pair: Pair) -> None:
    pair = sharing_pair
    name = f"team-{uuid.uuid4().hex[:6]}"
    owner_cal = f"{pair.calendar_home}{name}/"
    bob_home = pair.calendar_home.replace("alice", "bob")
    async with raw_session() as session:
        alice, bob, carol = (Client(session, pair, u) for u in ("alice", "bob", "carol"))
        await bob.hello()
        await carol.hello()
        assert (await alice("MKCALENDAR", owner_cal)).status == 201
        put = await alice("PUT", owner_cal + "a.ics", event("a", "Alice's"),
                          Content_Type="text/calendar")  # fmt: skip
        assert put.status == 201
        bob_notes, alice_notes = Notifications(bob), Notifications(alice)
        await bob_notes.start()
        await alice_notes.start()

        # -- share: bob read-write; the owner herself (refused for her href only); a
        # remove of carol, never invited (fine)
        shared = await alice(
            "POST", owner_cal,
            cs_share(("mailto:bob@example.org", "read-write"), ("mailto:alice@example.org",
                     "read"), removes=("mailto:carol@example.org",)),
            **TEXT_XML,
        )  # fmt: skip
        assert shared.status == 207, shared.body
        assert statuses(shared) == {
            "mailto:bob@example.org": 200,
            "mailto:alice@example.org": 403,
            "mailto:carol@example.org": 200,
        }
        owner_view = await alice("PROPFIND", owner_cal, propfind("CS:invite"), Depth="0",
                                 **TEXT_XML)  # fmt: skip
        assert cs_user_status(owner_view, "bob") == "invite-noresponse"
        assert cs_user_status(owner_view, "alice") is None  # nothing recorded for her

        # -- bob finds the invitation by syncing without properties, then with them
        changed = await bob_notes.sync(with_props=False)
        assert len(changed) == 1
        bob_notes.token = ""  # an initial sync again, now asking for the type
        link, invite = await bob_notes.newest("invite-notification")
        assert link in changed and invite.get("shared-type") == "calendar"
        uid = invite.findtext("CS:uid", namespaces=NS) or ""
        hosturl = invite.findtext("CS:hosturl/D:href", namespaces=NS) or ""
        summary = invite.findtext("CS:summary", namespaces=NS) or ""
        assert invite.find("CS:invite-noresponse", NS) is not None and canonical(
            hosturl
        ) == canonical(owner_cal)

        # -- accept at his calendar home; the same answer again names the same copy
        accepted = await bob("POST", bob_home, cs_reply("bob", uid, hosturl, True, summary),
                             **TEXT_XML)  # fmt: skip
        copy = shared_as(accepted)
        assert copy.startswith(bob_home) and not copy.endswith("/")  # as CalendarServer
        again = await bob("POST", bob_home, cs_reply("bob", uid, hosturl, True, summary),
                          **TEXT_XML)  # fmt: skip
        assert again.status == 200 and again.body == accepted.body
        assert (await bob("DELETE", link)).status in (204, 404)  # handled, as the client does
        _, reply = await alice_notes.newest("invite-reply")
        assert reply.find("CS:invite-accepted", NS) is not None
        assert reply.findtext("CS:in-reply-to", namespaces=NS) == uid
        assert await alice_notes.sync(with_props=True) == {}  # the repeat told nobody

        # -- bob uses the copy with hrefs built as clients build them
        listing = await bob("PROPFIND", copy + "/", propfind("D:getetag", "D:resourcetype"),
                            Depth="1", **TEXT_XML)  # fmt: skip
        assert listing.status == 207, listing.body
        hrefs = [r.findtext("D:href", namespaces=NS) or "" for r in
                 xml(listing).findall("D:response", NS)]  # fmt: skip
        listed = next(h for h in hrefs if canonical(h).rstrip("/") == canonical(copy))
        assert listed.endswith("/") and canonical(copy + "/a.ics") in map(canonical, hrefs)
        doubled = listed + "/"  # the listed href, "/" appended again: '//'
        put = await bob("PUT", doubled + "b.ics", event("b", "From Bob"),
                        Content_Type="text/calendar")  # fmt: skip
        assert put.status == 201, put.body
        assert b"From Bob" in (await alice("GET", owner_cal + "b.ics")).body
        got = await bob("GET", copy + "//a.ics")
        assert got.status == 200 and b"Alice's" in got.body
        multiget = (
            '<C:calendar-multiget xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
            f"<D:prop><D:getetag/><C:calendar-data/></D:prop><D:href>{doubled}a.ics</D:href>"
            f"<D:href>{copy}//b.ics</D:href></C:calendar-multiget>"
        )
        report = await bob("REPORT", doubled, multiget, Depth="1", **TEXT_XML)
        assert report.status == 207 and b"Alice's" in report.body and b"From Bob" in report.body
        reported = {canonical(h.text or "") for h in xml(report).iterfind(".//D:href", NS)}
        assert reported == {canonical(copy + "/a.ics"), canonical(copy + "/b.ics")}
        moved = await bob("MOVE", doubled + "b.ics", Destination=pair.proxy.url(doubled + "c.ics"))
        # Xandikos: 412 no-uid-conflict; DAViCal: 200
        assert moved.status in (200, 201, 204, 412), moved.body
        assert (await bob("DELETE", copy + "//" + ("c.ics" if moved.status < 300 else "b.ics"))
                ).status in (200, 204)  # fmt: skip
        escape = await bob("GET", copy + "//..//" + name + "/a.ics")
        assert escape.status == 400  # '..' stays refused, '//' or not

        # -- decline after accepting: the copy goes, alice is told; declining again is quiet
        declined = await bob("POST", bob_home, cs_reply("bob", uid, hosturl, False, summary),
                             **TEXT_XML)  # fmt: skip
        assert declined.status == 204, declined.body
        assert ended(await bob("GET", copy + "/a.ics"))
        assert ended(await bob("PROPFIND", copy + "//", propfind("D:getetag"), Depth="0"))
        assert await radicale_grants(pair, session, copy + "/a.ics") in (None, False)
        owner_view = await alice("PROPFIND", owner_cal, propfind("CS:invite"), Depth="0")
        assert cs_user_status(owner_view, "bob") == "invite-declined"
        _, reply = await alice_notes.newest("invite-reply")
        assert reply.find("CS:invite-declined", NS) is not None
        again = await bob("POST", bob_home, cs_reply("bob", uid, hosturl, False, summary),
                          **TEXT_XML)  # fmt: skip
        assert again.status == 204
        assert await alice_notes.sync(with_props=False) == {}

        # -- accept after declining: the copy comes back where it was
        back = await bob("POST", bob_home, cs_reply("bob", uid, hosturl, True, summary),
                         **TEXT_XML)  # fmt: skip
        assert shared_as(back) == copy
        got = await bob("GET", copy + "/a.ics")
        assert got.status == 200 and b"Alice's" in got.body
        assert await radicale_grants(pair, session, copy + "/a.ics") in (None, True)
        owner_view = await alice("PROPFIND", owner_cal, propfind("CS:invite"), Depth="0")
        assert cs_user_status(owner_view, "bob") == "invite-accepted"
        _, reply = await alice_notes.newest("invite-reply", with_props=False)
        assert reply.find("CS:invite-accepted", NS) is not None

        # -- read-only: alice downgrades; bob's writes are refused, reads go on
        assert (await alice("POST", owner_cal, cs_share(("mailto:bob@example.org", "read")),
                            **TEXT_XML)).status == 200  # fmt: skip
        _, update = await bob_notes.newest("invite-notification")
        assert update.find("CS:invite-accepted", NS) is not None
        assert update.find("CS:access/CS:read", NS) is not None
        refused = await bob("PUT", copy + "//d.ics", event("d"), Content_Type="text/calendar")
        assert refused.status == 403 and b"need-privileges" in refused.body
        assert (await alice("GET", owner_cal + "d.ics")).status == 404
        assert (await bob("DELETE", copy + "/a.ics")).status == 403
        assert (await bob("GET", copy + "//a.ics")).status == 200

        # -- a CS:remove of the owner herself is ignored; carol is invited by the rest
        mixed = await alice(
            "POST", owner_cal,
            cs_share(("mailto:carol@example.org", "read"), removes=("mailto:alice@example.org",)),
            **TEXT_XML,
        )  # fmt: skip
        assert mixed.status == 200, mixed.body
        owner_view = await alice("PROPFIND", owner_cal, propfind("CS:invite"), Depth="0")
        assert cs_user_status(owner_view, "carol") == "invite-noresponse"
        assert cs_user_status(owner_view, "bob") == "invite-accepted"

        # -- unshare: bob is told (invite-deleted), the copy is gone, the old uid is dead
        assert (await alice("POST", owner_cal, cs_share(removes=("mailto:bob@example.org",)),
                            **TEXT_XML)).status == 200  # fmt: skip
        _, deleted = await bob_notes.newest("invite-notification", with_props=False)
        assert deleted.find("CS:invite-deleted", NS) is not None
        assert ended(await bob("GET", copy + "//a.ics"))
        late = await bob("POST", bob_home, cs_reply("bob", uid, hosturl, True, summary),
                         **TEXT_XML)  # fmt: skip
        assert late.status == 403 and b"invalid-share" in late.body


async def test_apple_contacts_sharing_replayed(sharing_pair: Pair) -> None:
    pair = sharing_pair
    book = f"{pair.addressbook_home}book-{uuid.uuid4().hex[:6]}/"
    carol_books = pair.addressbook_home.replace("alice", "carol")
    async with raw_session() as session:
        alice, carol = Client(session, pair, "alice"), Client(session, pair, "carol")
        await carol.hello()
        assert (await alice("MKCOL", book, MKADDRESSBOOK, **TEXT_XML)).status == 201
        card = CARD.format(uid="c1", name="Dora")
        assert (await alice("PUT", book + "c1.vcf", card, Content_Type="text/vcard")).status == 201
        notes = Notifications(carol)
        await notes.start()
        modes = await alice("PROPFIND", book, propfind("CS:allowed-sharing-modes"), Depth="0")
        assert xml(modes).find(".//CS:allowed-sharing-modes/CS:can-be-shared", NS) is not None
        shared = await alice("POST", book, cs_share(("mailto:carol@example.org", "read")),
                             **TEXT_XML)  # fmt: skip
        assert shared.status == 200, shared.body

        _, invite = await notes.newest("invite-notification", with_props=False)
        assert invite.get("shared-type") == "addressbook"
        uid = invite.findtext("CS:uid", namespaces=NS) or ""
        hosturl = invite.findtext("CS:hosturl/D:href", namespaces=NS) or ""
        reply = cs_reply("carol", uid, hosturl, True, "Friends")
        copy = shared_as(await carol("POST", carol_books, reply, **TEXT_XML))
        assert copy.startswith(carol_books) and not copy.endswith("/")
        assert shared_as(await carol("POST", carol_books, reply, **TEXT_XML)) == copy

        got = await carol("GET", copy + "/c1.vcf")
        assert got.status == 200 and b"FN:Dora" in got.body
        assert (await carol("GET", copy + "//c1.vcf")).status == 200
        listing = await carol("PROPFIND", copy + "//", propfind("D:getetag"), Depth="1")
        assert listing.status == 207 and b"c1.vcf" in listing.body
        refused = await carol("PUT", copy + "//c2.vcf", CARD.format(uid="c2", name="Eve"),
                              Content_Type="text/vcard")  # fmt: skip
        assert refused.status == 403 and b"need-privileges" in refused.body

        # decline after accepting, accept again: the same copy comes back
        declined = await carol(
            "POST", carol_books, cs_reply("carol", uid, hosturl, False, "Friends"), **TEXT_XML
        )
        assert declined.status == 204
        assert ended(await carol("GET", copy + "/c1.vcf"))
        assert shared_as(await carol("POST", carol_books, reply, **TEXT_XML)) == copy
        assert (await carol("GET", copy + "/c1.vcf")).status == 200

        # unshare
        assert (await alice("POST", book, cs_share(removes=("mailto:carol@example.org",)),
                            **TEXT_XML)).status == 200  # fmt: skip
        _, deleted = await notes.newest("invite-notification")
        assert deleted.find("CS:invite-deleted", NS) is not None
        assert ended(await carol("GET", copy + "//c1.vcf"))
        assert (await alice("GET", book + "c1.vcf")).status == 200


async def test_ietf_sharee_changes_their_mind_at_the_reply_url(sharing_pair: Pair) -> None:
    """The same changes of mind in the IETF flavour: the invitation is removed once
    answered (the draft's SHOULD), its reply-url keeps taking answers."""
    pair = sharing_pair
    owner_cal = f"{pair.calendar_home}mind-{uuid.uuid4().hex[:6]}/"
    async with raw_session() as session:
        alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
        await bob.hello()
        assert (await alice("MKCALENDAR", owner_cal)).status == 201
        assert (await alice("PUT", owner_cal + "a.ics", event("a"), Content_Type="text/calendar")
                ).status == 201  # fmt: skip
        notes = Notifications(bob)
        await notes.start()
        # the owner among the sharees: ignored, the rest applies
        body = share_body(("mailto:alice@example.org", "read"), ("/bob/", "read-write"))
        assert (await alice("POST", owner_cal, body, **SHARING)).status == 204
        changed = await notes.sync(with_props=True)
        (link,) = changed
        invite = await bob("GET", link, Accept="application/davnotification+xml")
        reply_url = xml(invite).findtext(".//D:reply-url/D:href", namespaces=NS)
        assert reply_url == link

        accepted = await bob("POST", reply_url, reply_body(True), **SHARING)
        assert accepted.status == 201, accepted.body
        location = accepted.header("Location")
        assert (await bob("GET", link)).status == 404  # the invitation is gone ...
        again = await bob("POST", reply_url, reply_body(True), **SHARING)
        assert again.status == 201 and again.header("Location") == location  # ... not its url
        copy = "/" + location.split("://", 1)[1].split("/", 1)[1]
        assert (await bob("GET", copy + "/a.ics")).status == 200  # Location + "/": '//'

        assert (await bob("POST", reply_url, reply_body(False), **SHARING)).status == 204
        assert ended(await bob("GET", copy + "a.ics"))
        view = xml(await alice("PROPFIND", owner_cal, propfind("D:invite"), Depth="0"))
        assert view.find(".//D:invite/D:sharee/D:invite-declined", NS) is not None
        assert (await bob("POST", reply_url, reply_body(False), **SHARING)).status == 204
        back = await bob("POST", reply_url, reply_body(True), **SHARING)
        assert back.status == 201 and back.header("Location") == location
        assert (await bob("GET", copy + "a.ics")).status == 200

        # revoked: nobody is invited any more, and the reply-url is dead
        revoke = share_body(("/bob/", "no-access"))
        assert (await alice("POST", owner_cal, revoke, **SHARING)).status == 204
        late = await bob("POST", reply_url, reply_body(True), **SHARING)
        assert late.status in (403, 404), late.body
        assert ended(await bob("GET", copy + "a.ics"))
        view = xml(await alice("PROPFIND", owner_cal, propfind("D:invite"), Depth="0"))
        invite_prop = view.find(".//D:propstat/D:prop/D:invite", NS)
        assert invite_prop is not None and len(invite_prop) == 0  # there, and empty


SHARING_PROPS = propfind(
    "D:resourcetype", "CS:allowed-sharing-modes", "D:current-user-privilege-set",
    "D:supported-privilege-set", "D:invite", "D:share-access",
)  # fmt: skip


def sharing_state(response: etree._Element) -> dict[str, bool]:
    return {
        "can-be-shared": response.find(".//CS:allowed-sharing-modes/CS:can-be-shared", NS)
        is not None,
        "share": response.find(".//D:current-user-privilege-set/D:privilege/D:share", NS)
        is not None,
        "supported": response.find(".//D:supported-privilege-set//D:privilege/D:share", NS)
        is not None,
        "invite": response.find(".//D:propstat/D:prop/D:invite", NS) is not None
        and "200" in (response.findtext(".//D:invite/../../D:status", namespaces=NS) or ""),
    }


async def test_only_real_collections_can_be_shared(sharing_pair: Pair) -> None:
    """Calendars, address books and plain collections advertise sharing (CS:can-be-shared,
    D:share in both privilege sets, an empty D:invite); homes, principals and Xandikos's
    schedule inbox and outbox advertise nothing, refuse a share POST in either flavour
    and record nothing; a sharee's default calendar may not be a shared copy."""
    pair = sharing_pair
    calendar = f"{pair.calendar_home}real-{uuid.uuid4().hex[:6]}/"
    async with raw_session() as session:
        alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
        await bob.hello()
        assert (await alice("MKCALENDAR", calendar)).status == 201
        notes = Notifications(bob)
        await notes.start()

        listing = await alice("PROPFIND", "/alice/", SHARING_PROPS, Depth="1", **TEXT_XML)
        listing2 = await alice("PROPFIND", pair.calendar_home, SHARING_PROPS, Depth="1",
                               **TEXT_XML)  # fmt: skip
        seen = {
            canonical(r.findtext("D:href", namespaces=NS) or ""): r
            for answer in (listing, listing2)
            for r in xml(answer).findall("D:response", NS)
        }
        state = sharing_state(seen[canonical(calendar)])
        assert state == {"can-be-shared": True, "share": True, "supported": True, "invite": True}
        assert len(seen[canonical(calendar)].find(".//D:propstat/D:prop/D:invite", NS)) == 0
        not_shareable = {"/alice/", canonical(pair.calendar_home), canonical(pair.addressbook_home)}
        if pair.flavour == "xandikos":
            not_shareable |= {"/alice/inbox/", "/alice/outbox/"}
        for path in not_shareable:
            direct = await alice("PROPFIND", path, SHARING_PROPS, Depth="0", **TEXT_XML)
            assert direct.status == 207, (path, direct.body)
            if path.endswith(("/inbox/", "/outbox/")):  # Xandikos's, really there
                kind = "C:schedule-inbox" if "inbox" in path else "C:schedule-outbox"
                assert xml(direct).find(f".//D:resourcetype/{kind}", NS) is not None
            for response in [xml(direct).find("D:response", NS), seen.get(path)]:
                if response is None:
                    continue
                shown = sharing_state(response)
                assert not any(shown.values()), (path, shown, etree.tostring(response))
            cs = await alice("POST", path, cs_share(("mailto:bob@example.org", "read")),
                             **TEXT_XML)  # fmt: skip
            assert cs.status == 403 and b"valid-request" in cs.body, (path, cs.body)
            ietf = await alice("POST", path, share_body(("/bob/", "read")), **SHARING)
            assert ietf.status == 403 and b"need-privileges" in ietf.body, (path, ietf.body)
        assert await notes.sync(with_props=False) == {}  # nobody was invited

        # a copy is not a default calendar for scheduling
        assert (await alice("POST", calendar, cs_share(("mailto:bob@example.org", "read")),
                            **TEXT_XML)).status == 200  # fmt: skip
        _, invite = await notes.newest("invite-notification")
        uid = invite.findtext("CS:uid", namespaces=NS) or ""
        hosturl = invite.findtext("CS:hosturl/D:href", namespaces=NS) or ""
        bob_home = pair.calendar_home.replace("alice", "bob")
        copy = shared_as(
            await bob("POST", bob_home, cs_reply("bob", uid, hosturl, True, "x"), **TEXT_XML)
        )
        inbox = "/bob/inbox/" if pair.flavour == "xandikos" else "/bob/"
        own = f"{bob_home}own-{uuid.uuid4().hex[:6]}/"
        assert (await bob("MKCALENDAR", own)).status == 201

        def default_calendar(target: str) -> str:
            return (
                '<D:propertyupdate xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
                "<D:set><D:prop><C:schedule-default-calendar-URL>"
                f"<D:href>{target}</D:href></C:schedule-default-calendar-URL>"
                "</D:prop></D:set></D:propertyupdate>"
            )

        for target in (copy, copy + "/", copy + "//", pair.proxy.url(copy + "/")):
            refused = await bob("PROPPATCH", inbox, default_calendar(target), **TEXT_XML)
            assert refused.status == 403, (target, refused.status, refused.body)
            assert b"valid-schedule-default-calendar-URL" in refused.body
        allowed = await bob("PROPPATCH", inbox, default_calendar(own), **TEXT_XML)
        assert b"valid-schedule-default-calendar-URL" not in allowed.body, allowed.body


async def test_answers_from_several_devices_at_once(sharing_pair: Pair) -> None:
    """A sharee's devices answering one invitation at the same moment, accepting and
    declining: each answer is decided in turn (no 409, no 500), and what the owner sees,
    the copy and the answer decided last agree."""
    import asyncio

    pair = sharing_pair
    owner_cal = f"{pair.calendar_home}race-{uuid.uuid4().hex[:6]}/"
    bob_home = pair.calendar_home.replace("alice", "bob")
    async with raw_session() as session:
        alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
        await bob.hello()
        assert (await alice("MKCALENDAR", owner_cal)).status == 201
        assert (await alice("PUT", owner_cal + "a.ics", event("a"), Content_Type="text/calendar")
                ).status == 201  # fmt: skip
        notes = Notifications(bob)
        await notes.start()
        assert (await alice("POST", owner_cal, cs_share(("mailto:bob@example.org", "read")),
                            **TEXT_XML)).status == 200  # fmt: skip
        _, invite = await notes.newest("invite-notification")
        uid = invite.findtext("CS:uid", namespaces=NS) or ""
        hosturl = invite.findtext("CS:hosturl/D:href", namespaces=NS) or ""
        for _round in range(2):
            answers = await asyncio.gather(*(
                bob("POST", bob_home, cs_reply("bob", uid, hosturl, accept, "Team"), **TEXT_XML)
                for accept in (True, False, True, False, True)
            ))  # fmt: skip
            assert sorted({a.status for a in answers}) <= [200, 204], [a.body for a in answers]
            copies = {shared_as(a) for a in answers if a.status == 200}
            assert len(copies) == 1, copies  # one copy, whichever answers made it
            owner_view = await alice("PROPFIND", owner_cal, propfind("CS:invite"), Depth="0")
            status = cs_user_status(owner_view, "bob")
            got = await bob("GET", copies.pop() + "/a.ics")
            assert (status == "invite-accepted") == (got.status == 200), (status, got.status)
            assert status == "invite-accepted" or ended(got)
