"""Sharing with a group (issue 15), end to end on both upstreams and in both flavours.

Each test runs its own davproxy in front of the session's upstream, with a mapping file
it edits: family = {bob, kids}, kids = {carol, dave@corp} (nested), erin joins later.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from lxml import etree

from davproxy.ops.embedded import start_radicale
from davproxy.upstream.identity import hash_password
from tests.helpers import (
    Answer,
    Endpoint,
    basic,
    fetch,
    raw_session,
    start_proxy,
    write_htpasswd,
)

from .conftest import Pair
from .test_cs_sharing import TEXT_XML, cs_share
from .test_sharing import NS, SHARING, XML, Client, absent, event, propfind, reply_body, share_body

ERIN = ("erin", "erin-pw")
GROUPS = """
[[groups]]
id = "family"
display_name = "The Family"
emails = ["family@example.org"]
members = ["bob", "kids"]

[[groups]]
id = "kids"
display_name = "Kids"
members = [{kids}]
"""
MKBOOK = (
    '<D:mkcol xmlns:D="DAV:" xmlns:CR="urn:ietf:params:xml:ns:carddav"><D:set><D:prop>'
    "<D:resourcetype><D:collection/><CR:addressbook/></D:resourcetype></D:prop></D:set></D:mkcol>"
)
CARD = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:c1\r\nFN:Dora\r\nN:Dora;;;;\r\nEND:VCARD\r\n"


class Member(Client):
    """A user with their own password (erin is not one of the session's users)."""

    password: str | None = None

    async def __call__(
        self, method: str, path: str, body: str | None = None, **headers: str
    ) -> Answer:
        extra = {k.replace("_", "-"): v for k, v in headers.items()}
        if body is not None and method in ("PROPFIND", "PROPPATCH", "REPORT", "MKCOL"):
            extra.setdefault("Content-Type", "application/xml; charset=utf-8")
        url = path if path.startswith("http") else self.pair.proxy.url(path)
        auth = basic(self.user, self.password)
        return await fetch(self.session, method, url, {**auth, **extra}, body)  # type: ignore[arg-type]


class Family:
    """davproxy with the groups above in front of one upstream."""

    def __init__(self, pair: Pair, folder: Path, mapping_extra: str = "") -> None:
        htpasswd = write_htpasswd(folder / "users.htpasswd")
        with htpasswd.open("a") as handle:
            handle.write(f"{ERIN[0]}:{hash_password(ERIN[1], 'sha512_crypt')}\n")
        self.folder = folder / "davproxy"
        self.kind = "xandikos" if pair.flavour == "xandikos" else "radicale"
        self.proxy = start_proxy(
            self.folder, upstream_url=pair.upstream.url, kind=self.kind, mode="proxy-auth",
            htpasswd=htpasswd,
            mapping_extra=mapping_extra + GROUPS.format(kids='"carol", "dave@corp"'),
        )  # fmt: skip
        self.pair = Pair(
            pair.flavour, pair.direct, type(pair.proxy)(self.proxy.url, {}),
            pair.calendar_home, pair.addressbook_home, pair.upstream, self.proxy,
        )  # fmt: skip

    def set_kids(self, *members: str) -> None:
        mapping = self.folder / "mapping.toml"
        text = mapping.read_text(encoding="utf-8")
        head, _, tail = text.partition('id = "kids"')
        lines = tail.split("\n")
        lines = [
            f"members = [{', '.join(json.dumps(m) for m in members)}]"
            if line.startswith("members") else line
            for line in lines
        ]  # fmt: skip
        mapping.write_text(head + 'id = "kids"' + "\n".join(lines), encoding="utf-8")

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "davproxy", "admin", "-c", str(self.folder / "davproxy.toml"),
             *args],
            capture_output=True, text=True, timeout=60, cwd=self.folder,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )  # fmt: skip

    def client(self, session: object, user: str) -> Client:
        client = Member(session, self.pair, user)
        client.password = ERIN[1] if user == ERIN[0] else None
        return client


@pytest.fixture(params=["radicale", "xandikos", "radicale_native"])
def family(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Family]:
    """Proxy-enforced on both upstreams (the session's servers), and Radicale's own
    sharing (radicale-native) on a Radicale of the test's own: its maps are per owner,
    and the session's davproxy keeps alice's maps in line with its own store."""
    with contextlib.ExitStack() as stack:
        if request.param == "radicale_native":
            upstream = stack.enter_context(
                start_radicale(tmp_path / "radicale", auth="x-remote-user", sharing=True)
            )
            pair = Pair("radicale", Endpoint(upstream.url), Endpoint(upstream.url), "/alice/",
                        "/alice/", upstream, upstream)  # fmt: skip
            made = Family(pair, tmp_path, '[access]\nbackend = "radicale-native"\n')
        else:
            made = Family(request.getfixturevalue(f"{request.param}_pair"), tmp_path)
        try:
            yield made
        finally:
            made.proxy.process.terminate()
            made.proxy.process.wait(timeout=20)


async def invite_for(client: Client, collection: str) -> tuple[str, etree._Element] | None:
    """The user's notification about ``collection`` (IETF rendering), if any."""
    found = await client("PROPFIND", f"/{client.user}/", propfind("D:notification-URL"), Depth="0")
    url = etree.fromstring(found.body).findtext(".//D:notification-URL/D:href", namespaces=NS)
    listing = await client("PROPFIND", url, propfind("D:getetag"), Depth="1")
    for response in etree.fromstring(listing.body).findall("D:response", NS):
        link = response.findtext("D:href", namespaces=NS)
        if link == url:
            continue
        got = await client("GET", link, Accept="application/davnotification+xml")
        body = etree.fromstring(got.body)
        if any((h.text or "").endswith(collection) for h in body.iterfind(".//D:href", NS)):
            return link, body
    return None


def status_of(note: etree._Element) -> tuple[str, str]:
    """(invite status, access) an IETF invitation states."""
    status = note.find(".//D:share-invite-notification/*", NS)
    invite = [c for c in note.iter() if etree.QName(c).localname.startswith("invite-")]
    access = note.find(".//D:share-access/*", NS)
    assert status is not None and invite and access is not None, etree.tostring(note)
    return etree.QName(invite[0]).localname, etree.QName(access).localname


async def answer(client: Client, collection: str, accept: bool, home: str) -> str | None:
    found = await invite_for(client, collection)
    assert found is not None, f"{client.user} has no invitation to {collection}"
    reply = await client("POST", found[0], reply_body(accept, home if accept else None), **SHARING)
    if not accept:
        assert reply.status in (200, 204), reply.body
        return None
    assert reply.status == 201, reply.body
    return "/" + (reply.header("Location") or "").split("://", 1)[1].split("/", 1)[1]


def invite_entries(answer: Answer, cs: bool) -> dict[str, tuple[str, str]]:
    """href -> (status, access) from ``D:invite`` or ``CS:invite``, in document order."""
    root = etree.fromstring(answer.body)
    entries: dict[str, tuple[str, str]] = {}
    path = ".//CS:invite/CS:user" if cs else ".//D:invite/D:sharee"
    for entry in root.iterfind(path, NS):
        status = [c for c in entry if etree.QName(c).localname.startswith("invite-")][0]
        access = entry.find("CS:access/*" if cs else "D:share-access/*", NS)
        assert access is not None
        href = entry.findtext("D:href", namespaces=NS) or ""
        entries[href] = (etree.QName(status).localname, etree.QName(access).localname)
    return entries


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 20
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await _sleep(0.2)


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


@pytest.mark.parametrize("flavour", ["ietf", "cs"])
async def test_family_calendar_and_address_book(family: Family, flavour: str) -> None:
    pair = family.pair
    cs = flavour == "cs"
    name = f"fam-{uuid.uuid4().hex[:6]}"
    cal, book = f"{pair.calendar_home}{name}/", f"{pair.addressbook_home}{name}-book/"
    home = {
        u: pair.calendar_home.replace("alice", u) for u in ("bob", "carol", "dave@corp", "erin")
    }
    books = {u: pair.addressbook_home.replace("alice", u) for u in home}
    group_href = "mailto:family@example.org" if cs else "/.davproxy/groups/family/"

    def share(access: str, href: str = group_href) -> tuple[str, dict[str, str]]:
        if cs:
            if access == "no-access":
                return cs_share(removes=(href,)), TEXT_XML
            return cs_share((href, access)), TEXT_XML
        return share_body((href, access)), SHARING

    async with raw_session() as session:
        alice, bob, carol, dave, erin = (
            family.client(session, u) for u in ("alice", "bob", "carol", "dave@corp", "erin")
        )
        for member in (bob, carol, dave, erin):
            await member.hello()
        assert (await alice("MKCALENDAR", cal)).status == 201
        assert (
            await alice("PUT", cal + "a.ics", event("a"), Content_Type="text/calendar")
        ).status == 201
        assert (await alice("MKCOL", book, MKBOOK, **XML)).status == 201
        assert (await alice("PUT", book + "c1.vcf", CARD, Content_Type="text/vcard")).status == 201

        # -- share both with the family (nested: bob + kids{carol, dave}), read
        for collection in (cal, book):
            body, headers = share("read")
            shared = await alice("POST", collection, body, **headers)
            assert shared.status == (200 if cs else 204), shared.body
        for member in (bob, carol, dave):
            for collection in (cal, book):
                found = await invite_for(member, collection)
                assert found is not None and status_of(found[1]) == ("invite-noresponse", "read")
        assert await invite_for(erin, cal) is None  # not a member (yet)

        # two accept, one declines, each answering for themselves
        bob_cal = await answer(bob, cal, True, home["bob"])
        carol_cal = await answer(carol, cal, True, home["carol"])
        await answer(dave, cal, False, home["dave@corp"])
        carol_book = await answer(carol, book, True, books["carol"])
        bob_book = await answer(bob, book, True, books["bob"])
        await answer(dave, book, False, books["dave@corp"])
        assert bob_cal and carol_cal and carol_book and bob_book
        got = await bob("GET", bob_cal + "a.ics")
        assert got.status == 200 and b"UID:a" in got.body
        assert (await carol("GET", carol_book + "c1.vcf")).status == 200
        denied = await bob("PUT", bob_cal + "b.ics", event("b"), Content_Type="text/calendar")
        assert denied.status == 403  # read through the group
        # each member keeps their own per-user properties on their copy
        patch = (
            '<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop><D:displayname>Bob sees</D:displayname>'
            "</D:prop></D:set></D:propertyupdate>"
        )
        assert (await bob("PROPPATCH", bob_cal, patch)).status == 207
        names = await carol("PROPFIND", carol_cal, propfind("D:displayname"), Depth="0")
        assert b"Bob sees" not in names.body

        # the owner's invite lists the group first, then each member's own state
        props = await alice("PROPFIND", cal, propfind("CS:invite" if cs else "D:invite"), Depth="0")
        entries = invite_entries(props, cs)
        assert list(entries)[0] == group_href and entries[group_href] == ("invite-accepted", "read")
        by_user = {h.strip("/").split("/")[-1]: v for h, v in list(entries.items())[1:]}
        assert by_user == {
            "bob": ("invite-accepted", "read"),
            "carol": ("invite-accepted", "read"),
            "dave@corp": ("invite-declined", "read"),
        }

        # -- bob also gets read-write by name: the higher access wins
        body, headers = share("read-write", "mailto:bob@example.org")
        assert (await alice("POST", cal, body, **headers)).status in (200, 204)
        wrote = await bob("PUT", bob_cal + "b.ics", event("b"), Content_Type="text/calendar")
        assert wrote.status == 201
        assert (
            await carol("PUT", carol_cal + "c.ics", event("c"), Content_Type="text/calendar")
        ).status == 403

        # -- erin joins the kids, carol leaves; applied on reload, with notifications
        family.set_kids("dave@corp", "erin")
        if cs:
            family.proxy.process.send_signal(signal.SIGHUP)
        else:
            done = family.admin("reload")
            assert done.returncode == 0, done.stderr
            assert "2 group(s) changed" in done.stdout or "1 group(s) changed" in done.stdout

        async def erin_invited() -> bool:
            return await invite_for(erin, cal) is not None

        await eventually(erin_invited, "erin's invitation")
        found = await invite_for(erin, cal)
        assert found is not None and status_of(found[1]) == ("invite-noresponse", "read")
        assert await invite_for(erin, book) is not None
        # carol's copy is gone, and she was told; dave stays declined (not asked again)
        assert absent(await carol("PROPFIND", carol_cal, propfind("D:displayname"), Depth="0"))
        told = await invite_for(carol, cal)
        assert told is not None and status_of(told[1])[1] == "no-access"
        dave_note = await invite_for(dave, cal)
        assert dave_note is None or status_of(dave_note[1])[0] != "invite-noresponse"
        erin_cal = await answer(erin, cal, True, home["erin"])
        assert erin_cal and (await erin("GET", erin_cal + "a.ics")).status == 200

        # a new share of the group (read-write) asks every member again, dave too
        body, headers = share("read-write")
        assert (await alice("POST", book, body, **headers)).status in (200, 204)
        card2 = CARD.replace("c1", "c2")
        put = await bob("PUT", bob_book + "c2.vcf", card2, Content_Type="text/vcard")
        assert put.status == 201
        dave_book = await invite_for(dave, book)
        assert dave_book is not None
        assert status_of(dave_book[1]) == ("invite-noresponse", "read-write")

        # admin shares: the group's own row, and how each member has theirs
        listed = family.admin("shares", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = [r for r in json.loads(listed.stdout) if r["collection"] == cal.lstrip("/")]
        assert {r["sharee"]: r["via"] for r in rows} == {
            "group:family": "3 member(s)",
            "bob": "group:family+direct",
            "dave@corp": "group:family",
            "erin": "group:family",
        }

        only = family.admin("shares", "--json", "--sharee", "group:family")
        assert only.returncode == 0, only.stderr
        shared = sorted(r["collection"] for r in json.loads(only.stdout))
        assert shared == sorted([cal.lstrip("/"), book.lstrip("/")])

        # -- bob's individual share ends: the group share keeps him in, read-only again
        body, headers = share("no-access", "mailto:bob@example.org")
        assert (await alice("POST", cal, body, **headers)).status in (200, 204)
        assert (await bob("GET", bob_cal + "a.ics")).status == 200
        again = await bob("PUT", bob_cal + "d.ics", event("d"), Content_Type="text/calendar")
        assert again.status == 403

        # -- revoking the group ends every member's copy at once
        body, headers = share("no-access")
        assert (await alice("POST", cal, body, **headers)).status in (200, 204)
        for member, copy in ((bob, bob_cal), (erin, erin_cal)):
            assert absent(await member("GET", copy + "a.ics"))
        after = invite_entries(
            await alice("PROPFIND", cal, propfind("CS:invite" if cs else "D:invite"), Depth="0"), cs
        )
        assert after == {}
        # the address book is still shared with the family
        assert (await bob("GET", bob_book + "c1.vcf")).status == 200

        # -- bob deletes his copy: that ends nothing for the others
        assert (await bob("DELETE", bob_book)).status in (200, 204)
        assert absent(await bob("GET", bob_book + "c1.vcf"))
        erin_book = await answer(erin, book, True, books["erin"])
        assert erin_book and (await erin("GET", erin_book + "c1.vcf")).status == 200
        # erin is also shared with by name (read); revoking the group leaves her that
        body, headers = share("read", "erin")
        assert (await alice("POST", book, body, **headers)).status in (200, 204)
        body, headers = share("no-access")
        assert (await alice("POST", book, body, **headers)).status in (200, 204)
        assert (await erin("GET", erin_book + "c1.vcf")).status == 200
        kept = await erin(
            "PUT", erin_book + "c3.vcf", CARD.replace("c1", "c3"), Content_Type="text/vcard"
        )
        assert kept.status == 403  # back to what she was given by name
        told = await invite_for(erin, book)
        assert told is not None and status_of(told[1]) == ("invite-accepted", "read")
        left = invite_entries(
            await alice("PROPFIND", book, propfind("CS:invite" if cs else "D:invite"), Depth="0"),
            cs,
        )
        assert list(left.values()) == [("invite-accepted", "read")]  # erin only
        assert (await alice("GET", book + "c2.vcf")).status == 200  # the owner's data stays


def search(
    *conditions: tuple[str, str, str], test: str = "allof", kind: str = "", limit: int = 0
) -> str:
    """A principal-property-search: (property, match-type, text) conditions."""
    parts = "".join(
        f'<D:property-search><D:prop><{prop}/></D:prop><D:match match-type="{how}">{text}'
        "</D:match></D:property-search>"
        for prop, how, text in conditions
    )
    extra = f' type="{kind}"' if kind else ""
    cut = f"<CS:limit><CS:nresults>{limit}</CS:nresults></CS:limit>" if limit else ""
    return (
        f'<D:principal-property-search xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav" '
        f'xmlns:CS="http://calendarserver.org/ns/" test="{test}"{extra}>{parts}{cut}'
        "<D:prop><D:displayname/><C:calendar-user-type/><D:principal-URL/></D:prop>"
        "</D:principal-property-search>"
    )


def found_urls(answer: Answer) -> list[str]:
    root = etree.fromstring(answer.body)
    return [
        r.findtext(".//D:principal-URL/D:href", namespaces=NS) or ""
        for r in root.findall("D:response", NS)
        if r.find(".//D:principal-URL", NS) is not None
    ]


async def test_group_principals_and_search(family: Family) -> None:
    pair = family.pair
    async with raw_session() as session:
        alice, carol = family.client(session, "alice"), family.client(session, "carol")
        wanted = propfind(
            "D:displayname", "D:resourcetype", "D:group-member-set", "D:group-membership",
            "C:calendar-user-address-set", "C:calendar-user-type", "CS:record-type",
            "CS:expanded-group-member-set", "C:calendar-home-set",
        )  # fmt: skip
        got = await alice("PROPFIND", "/.davproxy/groups/family/", wanted, Depth="0")
        assert got.status == 207, got.body
        root = etree.fromstring(got.body)
        assert root.findtext(".//D:displayname", namespaces=NS) == "The Family"
        assert root.find(".//D:resourcetype/D:principal", NS) is not None
        assert root.findtext(".//C:calendar-user-type", namespaces=NS) == "GROUP"
        assert root.findtext(".//CS:record-type", namespaces=NS) == "groups"
        direct = [h.text for h in root.iterfind(".//D:group-member-set/D:href", NS)]
        assert direct == ["/bob/", "/.davproxy/groups/kids/"]  # direct members only
        expanded = {h.text for h in root.iterfind(".//CS:expanded-group-member-set/D:href", NS)}
        assert expanded == {"/bob/", "/carol/", "/dave@corp/", "/.davproxy/groups/kids/"}
        addresses = {h.text for h in root.iterfind(".//C:calendar-user-address-set/D:href", NS)}
        assert {"mailto:family@example.org", "urn:x-uid:family"} <= addresses
        # groups have no home (DAVx5 would list shared collections twice, digest §2.4)
        missing = root.find(".//D:propstat[D:status='HTTP/1.1 404 Not Found']", NS)
        assert missing is not None and missing.find(".//C:calendar-home-set", NS) is not None
        kids = await alice("PROPFIND", "/.davproxy/groups/kids/", wanted, Depth="0")
        member_of = etree.fromstring(kids.body).iterfind(".//D:group-membership/D:href", NS)
        assert [h.text for h in member_of] == ["/.davproxy/groups/family/"]
        listing = await alice(
            "PROPFIND", "/.davproxy/groups/", propfind("D:displayname"), Depth="1"
        )
        hrefs = [r.text for r in etree.fromstring(listing.body).iterfind("D:response/D:href", NS)]
        assert hrefs == [
            "/.davproxy/groups/",
            "/.davproxy/groups/family/",
            "/.davproxy/groups/kids/",
        ]
        assert (
            await alice("PROPFIND", "/.davproxy/groups/nobody/", wanted, Depth="0")
        ).status == 404
        refused = await alice(
            "PROPPATCH", "/.davproxy/groups/family/",
            '<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop><D:displayname>x</D:displayname>'
            "</D:prop></D:set></D:propertyupdate>",
        )  # fmt: skip
        assert refused.status == 403 and b"cannot-modify-protected-property" in refused.body
        anonymous = await fetch(session, "PROPFIND", pair.proxy.url("/.davproxy/groups/family/"),
                                {"Depth": "0"}, wanted)  # fmt: skip
        assert anonymous.status == 401

        # principal-property-search where clients send it: the principal collection set
        where = "/"
        hits = await carol("REPORT", where, search(("D:displayname", "contains", "fam")), Depth="0")
        assert hits.status == 207, hits.body
        assert found_urls(hits) == ["/.davproxy/groups/family/"]
        either = await carol(
            "REPORT", where,
            search(("D:displayname", "starts-with", "kid"), ("CS:email-address-set", "starts-with", "bob@"),
                   test="anyof"),
            Depth="0",
        )  # fmt: skip
        assert sorted(found_urls(either)) == ["/.davproxy/groups/kids/", "/bob/"]
        both = await carol(
            "REPORT", where,
            search(("D:displayname", "starts-with", "kid"), ("CS:email-address-set", "starts-with", "bob@")),
            Depth="0",
        )  # fmt: skip
        assert found_urls(both) == []
        groups_only = await carol(
            "REPORT", where, search(("D:displayname", "contains", "a"), kind="GROUP"), Depth="0"
        )
        assert found_urls(groups_only) == ["/.davproxy/groups/family/"]
        cut = await carol(
            "REPORT", where, search(("D:displayname", "contains", "a"), limit=1), Depth="0"
        )
        statuses = [s.text for s in etree.fromstring(cut.body).iterfind("D:response/D:status", NS)]
        assert len(found_urls(cut)) == 1 and statuses == ["HTTP/1.1 507 Insufficient Storage"]
        deep = await carol("REPORT", where, search(("D:displayname", "contains", "a")), Depth="1")
        assert deep.status == 400
        bogus = await carol(
            "REPORT", where, search(("D:displayname", "contains", "a"), test="x"), Depth="0"
        )
        assert bogus.status == 400
        props = await carol(
            "REPORT", where, '<D:principal-search-property-set xmlns:D="DAV:"/>', Depth="0"
        )
        assert props.status == 200 and b"displayname" in props.body
        apple = await carol(
            "REPORT", where,
            '<CS:calendarserver-principal-search xmlns:CS="http://calendarserver.org/ns/" '
            'xmlns:D="DAV:" context="attendee"><CS:search-token>kid</CS:search-token>'
            "<D:prop><D:principal-URL/></D:prop></CS:calendarserver-principal-search>",
            Depth="0",
        )  # fmt: skip
        assert found_urls(apple) == ["/.davproxy/groups/kids/"]
        mine = await carol("PROPFIND", "/carol/", propfind("D:group-membership"), Depth="0")
        groups_of = etree.fromstring(mine.body).iterfind(".//D:group-membership/D:href", NS)
        assert [h.text for h in groups_of] == ["/.davproxy/groups/kids/"]  # direct only
        options = await alice("OPTIONS", pair.calendar_home)
        assert "calendarserver-group-sharee" in (options.header("DAV") or "")

        # Nextcloud's and CalendarServer's group hrefs name the same group
        for href in ("principal:principals/groups/kids", "urn:x-uid:kids"):
            name = f"kids-{uuid.uuid4().hex[:6]}"
            cal = f"{pair.calendar_home}{name}/"
            assert (await alice("MKCALENDAR", cal)).status == 201
            assert (await alice("POST", cal, share_body((href, "read")), **SHARING)).status == 204
            note = await invite_for(carol, cal)
            assert note is not None and status_of(note[1]) == ("invite-noresponse", "read")

        # a cycle in the edited mapping file is refused; nothing changes
        family.set_kids("carol", "family")
        refused_reload = family.admin("reload")
        assert refused_reload.returncode != 0 and "cycle" in refused_reload.stderr
        family.proxy.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        still = await alice("PROPFIND", "/.davproxy/groups/kids/", wanted, Depth="0")
        members = [
            h.text
            for h in etree.fromstring(still.body).iterfind(".//D:group-member-set/D:href", NS)
        ]
        assert members == ["/carol/", "/dave@corp/"]
        assert "reload refused" in family.proxy.log_tail(50)
