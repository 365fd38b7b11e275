"""Per-user alarms and transparency on a shared calendar (issue 14), end to end.

alice owns a calendar holding a daily event with an overridden instance; bob has it
read-write, carol read-only.  Each sets their own alarms; each sees only their own,
through GET, multiget, calendar-query (with expand and on alarms) and sync-collection,
in front of Radicale and Xandikos, with both access backends."""

from __future__ import annotations

import re
import uuid

from lxml import etree

from tests.helpers import Answer, raw_session

from .conftest import Pair
from .test_sharing import NS, SHARING, Client, accept_latest, share_body, xml

CAL = {"Content-Type": "text/calendar; charset=utf-8"}


def recurring(uid: str, summary: str, master: str = "", instance: str = "", extra: str = "") -> str:
    """A daily event of five with its third instance moved; ``master`` and ``instance``
    are personal lines for the master and the override, ``extra`` more components."""
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\n"
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20300101T000000Z\r\n"
        "DTSTART:20300101T090000Z\r\nDTEND:20300101T100000Z\r\nRRULE:FREQ=DAILY;COUNT=5\r\n"
        f"SUMMARY:{summary}\r\n{master}END:VEVENT\r\n"
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20300101T000000Z\r\n"
        "RECURRENCE-ID:20300103T090000Z\r\nDTSTART:20300103T140000Z\r\n"
        f"DTEND:20300103T150000Z\r\nSUMMARY:{summary} (moved)\r\n{instance}END:VEVENT\r\n"
        f"{extra}END:VCALENDAR\r\n"
    )


def alarm(who: str, trigger: str) -> str:
    return (
        f"BEGIN:VALARM\r\nACTION:DISPLAY\r\nTRIGGER:{trigger}\r\n"
        f"DESCRIPTION:{who}\r\nEND:VALARM\r\n"
    )


def alone(uid: str, summary: str, when: str, personal: str) -> str:
    """An instance that differs from the master only in personal data."""
    return (
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20300102T000000Z\r\n"
        f"RECURRENCE-ID:{when}\r\nDTSTART:{when}\r\nDTEND:{when[:9]}100000Z\r\n"
        f"SUMMARY:{summary}\r\n{personal}END:VEVENT\r\n"
    )


def alarms(text: str) -> list[str]:
    return re.findall(r"DESCRIPTION:(\w+)", text.replace("\r\n ", ""))


def etag_of(answer: Answer) -> str:
    etag = answer.header("ETag")
    assert etag, answer.headers
    return etag


def multiget(*hrefs: str) -> str:
    links = "".join(f"<D:href>{h}</D:href>" for h in hrefs)
    return (
        '<C:calendar-multiget xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
        f"<D:prop><D:getetag/><C:calendar-data/></D:prop>{links}</C:calendar-multiget>"
    )


def query(filter_: str, data: str = "<C:calendar-data/>") -> str:
    return (
        '<C:calendar-query xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
        f'<D:prop><D:getetag/>{data}</D:prop><C:filter><C:comp-filter name="VCALENDAR">'
        f"{filter_}</C:comp-filter></C:filter></C:calendar-query>"
    )


def sync(token: str) -> str:
    return (
        '<D:sync-collection xmlns:D="DAV:"><D:sync-token>'
        f"{token}</D:sync-token><D:sync-level>1</D:sync-level>"
        "<D:prop><D:getetag/></D:prop></D:sync-collection>"
    )


def synced(answer: Answer) -> tuple[str, dict[str, str]]:
    """(new token, {member name: getetag}) of a sync-collection answer."""
    assert answer.status == 207, answer.body
    doc = xml(answer)
    found = {}
    for node in doc.findall("D:response", NS):
        name = node.findtext("D:href", namespaces=NS).rstrip("/").rsplit("/", 1)[-1]
        found[name] = node.findtext(".//D:getetag", namespaces=NS) or "gone"
    return doc.findtext("D:sync-token", namespaces=NS), found


def data_by_member(answer: Answer) -> dict[str, tuple[str, str]]:
    assert answer.status == 207, answer.body
    out = {}
    for node in xml(answer).findall("D:response", NS):
        name = node.findtext("D:href", namespaces=NS).rsplit("/", 1)[-1]
        out[name] = (
            node.findtext(".//D:getetag", namespaces=NS) or "",
            node.findtext(".//C:calendar-data", namespaces=NS) or "",
        )
    return out


async def share_three(
    pair: Pair, alice: Client, bob: Client, carol: Client
) -> tuple[str, str, str]:
    """alice's new calendar, bob's copy (read-write) and carol's (read-only)."""
    name = f"family-{uuid.uuid4().hex[:6]}"
    owner_cal = f"{pair.calendar_home}{name}/"
    assert (await alice("MKCALENDAR", owner_cal)).status == 201
    for user in (bob, carol):
        await user.hello()
    body = share_body(
        ("mailto:bob@example.org", "read-write"), ("mailto:carol@example.org", "read")
    )
    assert (await alice("POST", owner_cal, body, **SHARING)).status == 204
    return owner_cal, await accept_latest(bob), await accept_latest(carol)


async def test_three_people_each_hear_only_their_own_reminders(sharing_pair: Pair) -> None:
    pair = sharing_pair
    async with raw_session() as session:
        alice, bob, carol = (Client(session, pair, u) for u in ("alice", "bob", "carol"))
        owner_cal, bob_cal, carol_cal = await share_three(pair, alice, bob, carol)
        uid = f"standup-{uuid.uuid4().hex[:6]}"
        owner_text = recurring(
            uid,
            "Standup",
            "TRANSP:OPAQUE\r\n" + alarm("alice", "-PT10M"),
            alarm("alicemoved", "-PT1M"),
        )
        put = await alice("PUT", owner_cal + "ev.ics", owner_text, **CAL)
        assert put.status == 201, put.body

        # the sharees see the shared event and none of alice's alarms or transparency
        bob_first = await bob("GET", bob_cal + "ev.ics")
        carol_first = await carol("GET", carol_cal + "ev.ics")
        for seen in (bob_first, carol_first):
            assert seen.status == 200 and b"SUMMARY:Standup (moved)" in seen.body
            assert b"VALARM" not in seen.body and b"TRANSP" not in seen.body
            assert seen.header("ETag") != put.header("ETag")

        # bob (read-write) sets his alarm and transparency, and an alarm on one
        # occurrence that the shared event does not override
        bob_text = recurring(
            uid, "Standup", "TRANSP:TRANSPARENT\r\n" + alarm("bob", "-PT15M"), alarm("bobmoved", "-PT2M"),
            extra=alone(uid, "Standup", "20300105T090000Z", alarm("bobfifth", "-PT3M")),
        )  # fmt: skip
        bob_put = await bob("PUT", bob_cal + "ev.ics", bob_text, If_Match=etag_of(bob_first), **CAL)
        assert bob_put.status == 204, bob_put.body
        bob_seen = await bob("GET", bob_cal + "ev.ics")
        assert bob_seen.header("ETag") == bob_put.header("ETag")
        assert sorted(alarms(bob_seen.body.decode())) == ["bob", "bobfifth", "bobmoved"]
        assert b"TRANSP:TRANSPARENT" in bob_seen.body
        assert b"RECURRENCE-ID:20300105T090000Z" in bob_seen.body  # his occurrence alarm
        # upstream: alice's alarms as they were, nothing of bob's, no extra override
        direct = await alice("GET", owner_cal + "ev.ics")
        assert sorted(alarms(direct.body.decode())) == ["alice", "alicemoved"]
        assert b"TRANSP:OPAQUE" in direct.body and b"TRANSPARENT" not in direct.body
        assert b"20300105T090000Z" not in direct.body
        assert direct.header("ETag") == put.header("ETag")  # a personal-only change: not written
        assert alarms((await carol("GET", carol_cal + "ev.ics")).body.decode()) == []

        # carol (read-only) may set her own alarm, and nothing else
        carol_text = recurring(uid, "Standup", alarm("carol", "-PT5M"), alarm("carol", "-PT5M"))
        carol_put = await carol("PUT", carol_cal + "ev.ics", carol_text, **CAL)
        assert carol_put.status == 204, carol_put.body
        refused = await carol(
            "PUT", carol_cal + "ev.ics", carol_text.replace("Standup", "Mine"), **CAL
        )
        assert refused.status == 403 and b"need-privileges" in refused.body
        created = await carol("PUT", carol_cal + "new.ics", carol_text.replace(uid, "n1"), **CAL)
        assert created.status == 403
        carol_seen = await carol("GET", carol_cal + "ev.ics")
        assert carol_seen.header("ETag") == carol_put.header("ETag")
        assert alarms(carol_seen.body.decode()) == ["carol", "carol"]
        assert b"Mine" not in carol_seen.body
        assert sorted(alarms((await bob("GET", bob_cal + "ev.ics")).body.decode())) == [
            "bob", "bobfifth", "bobmoved",
        ]  # fmt: skip

        # bob changes shared content: everybody sees it, each with their own alarms
        stale = bob_put.header("ETag")
        changed = bob_text.replace("Standup", "Daily")
        bob_change = await bob("PUT", bob_cal + "ev.ics", changed, If_Match=stale, **CAL)
        assert bob_change.status == 204, bob_change.body
        again = await bob("PUT", bob_cal + "ev.ics", bob_text, If_Match=stale, **CAL)
        assert again.status == 412  # stale: nothing written on either side
        carol_stale = await carol(
            "PUT", carol_cal + "ev.ics", carol_text, If_Match=etag_of(carol_first), **CAL
        )
        assert carol_stale.status == 412
        owner_now = await alice("GET", owner_cal + "ev.ics")
        assert b"SUMMARY:Daily" in owner_now.body
        assert sorted(alarms(owner_now.body.decode())) == ["alice", "alicemoved"]
        carol_now = await carol("GET", carol_cal + "ev.ics")
        assert b"SUMMARY:Daily" in carol_now.body and alarms(carol_now.body.decode()) == [
            "carol", "carol",
        ]  # fmt: skip
        assert carol_now.header("ETag") != carol_put.header("ETag")
        bob_now = await bob("GET", bob_cal + "ev.ics")
        assert b"Standup" not in bob_now.body and "bobfifth" in alarms(bob_now.body.decode())
        assert bob_now.header("ETag") == bob_change.header("ETag")

        # alice edits as she always did; the sharees keep their alarms
        owner_edit = owner_now.body.decode().replace("SUMMARY:Daily", "SUMMARY:Team")
        assert (await alice("PUT", owner_cal + "ev.ics", owner_edit, **CAL)).status == 204
        assert alarms((await carol("GET", carol_cal + "ev.ics")).body.decode()) == [
            "carol",
            "carol",
        ]

        # REPORTs: each their own view and ETag
        for user, cal, mine in ((bob, bob_cal, "bob"), (carol, carol_cal, "carol")):
            got = data_by_member(await user("REPORT", cal, multiget(cal + "ev.ics"), Depth="1"))
            etag, data = got["ev.ics"]
            assert mine in alarms(data) and "alice" not in alarms(data) and "Team" in data
            assert etag == etag_of(await user("GET", cal + "ev.ics"))
            expanded = await user(
                "REPORT", cal,
                query(
                    '<C:comp-filter name="VEVENT"><C:time-range start="20300101T000000Z" end="20300110T000000Z"/></C:comp-filter>',
                    '<C:calendar-data><C:expand start="20300101T000000Z" end="20300110T000000Z"/></C:calendar-data>',
                ),
                Depth="1",
            )  # fmt: skip
            _, data = data_by_member(expanded)["ev.ics"]
            assert data.count("BEGIN:VEVENT") == 5
            assert "alice" not in alarms(data) and mine in alarms(data)
        # a query on alarms is decided on each sharee's own
        on_alarms = query(
            '<C:comp-filter name="VEVENT"><C:comp-filter name="VALARM"/></C:comp-filter>'
        )
        plain = f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:p-{uid}\r\nDTSTAMP:20300101T000000Z\r\nDTSTART:20300102T090000Z\r\nSUMMARY:Plain\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
        assert (await alice("PUT", owner_cal + "plain.ics", plain, **CAL)).status == 201
        assert set(data_by_member(await bob("REPORT", bob_cal, on_alarms, Depth="1"))) == {"ev.ics"}
        carol_plain = await carol("GET", carol_cal + "plain.ics")
        with_alarm = carol_plain.body.decode().replace(
            "END:VEVENT", alarm("carolplain", "-PT1M") + "END:VEVENT"
        )
        assert (await carol("PUT", carol_cal + "plain.ics", with_alarm, **CAL)).status == 204
        assert set(data_by_member(await carol("REPORT", carol_cal, on_alarms, Depth="1"))) == {
            "ev.ics", "plain.ics",
        }  # fmt: skip
        assert set(data_by_member(await bob("REPORT", bob_cal, on_alarms, Depth="1"))) == {"ev.ics"}

        # sync: a sharee's own change is reported to them only
        bob_token, _ = synced(await bob("REPORT", bob_cal, sync(""), Depth="1"))
        carol_token, _ = synced(await carol("REPORT", carol_cal, sync(""), Depth="1"))
        bob_view = (await bob("GET", bob_cal + "ev.ics")).body.decode()
        quieter = bob_view.replace("TRIGGER:-PT15M", "TRIGGER:-PT20M")
        assert (await bob("PUT", bob_cal + "ev.ics", quieter, **CAL)).status == 204
        bob_token, bob_changes = synced(await bob("REPORT", bob_cal, sync(bob_token), Depth="1"))
        assert bob_changes == {"ev.ics": etag_of(await bob("GET", bob_cal + "ev.ics"))}
        carol_token, carol_changes = synced(
            await carol("REPORT", carol_cal, sync(carol_token), Depth="1")
        )
        assert carol_changes == {}
        bad = await bob("REPORT", bob_cal, sync(carol_token), Depth="1")
        assert bad.status == 403 and b"valid-sync-token" in bad.body
        assert (await bob("REPORT", bob_cal, sync("urn:x:nope"), Depth="1")).status == 403
        listing = await bob(
            "PROPFIND", bob_cal,
            '<D:propfind xmlns:D="DAV:"><D:prop><D:getetag/><D:sync-token/></D:prop></D:propfind>',
            Depth="1",
        )  # fmt: skip
        assert data_by_member(listing)["ev.ics"][0] == etag_of(await bob("GET", bob_cal + "ev.ics"))
        listed_token = xml(listing).findtext(".//D:sync-token", namespaces=NS)
        assert synced(await bob("REPORT", bob_cal, sync(listed_token), Depth="1"))[1] == {}

        # the copy in bob's home listing: his token, and a ctag that moves with his alarms
        async def home_entry() -> tuple[str, str]:
            home = pair.calendar_home.replace("alice", "bob")
            listing = await bob(
                "PROPFIND", home,
                '<D:propfind xmlns:D="DAV:" xmlns:CS="http://calendarserver.org/ns/"><D:prop>'
                "<CS:getctag/><D:sync-token/><D:resourcetype/></D:prop></D:propfind>",
                Depth="1",
            )  # fmt: skip
            assert listing.status == 207, listing.body
            for node in xml(listing).findall("D:response", NS):
                if node.findtext("D:href", namespaces=NS).rstrip("/") == bob_cal.rstrip("/"):
                    return (
                        node.findtext(".//CS:getctag", namespaces=NS) or "",
                        node.findtext(".//D:sync-token", namespaces=NS) or "",
                    )
            raise AssertionError(f"{bob_cal} not listed")

        ctag, home_token = await home_entry()
        assert synced(await bob("REPORT", bob_cal, sync(home_token), Depth="1"))[1] == {}
        louder = quieter.replace("TRIGGER:-PT20M", "TRIGGER:-PT25M")
        assert (await bob("PUT", bob_cal + "ev.ics", louder, **CAL)).status == 204
        assert (await home_entry())[0] != ctag

        # the end of a share takes the sharee's data with it: re-invited, carol starts clean
        end = share_body(("mailto:carol@example.org", "no-access"))
        assert (await alice("POST", owner_cal, end, **SHARING)).status == 204
        assert (
            await alice(
                "POST", owner_cal, share_body(("mailto:carol@example.org", "read")), **SHARING
            )
        ).status == 204
        carol_cal = await accept_latest(carol)
        assert alarms((await carol("GET", carol_cal + "ev.ics")).body.decode()) == []
        # bob leaves and comes back: his data went with his copy
        assert "bob" in alarms((await bob("GET", bob_cal + "ev.ics")).body.decode())
        assert (await bob("DELETE", bob_cal)).status == 204
        again = share_body(("mailto:bob@example.org", "read-write"))
        assert (await alice("POST", owner_cal, again, **SHARING)).status == 204
        bob_cal = await accept_latest(bob)
        assert alarms((await bob("GET", bob_cal + "ev.ics")).body.decode()) == []
        assert alarms((await alice("GET", owner_cal + "ev.ics")).body.decode()) == [
            "alice", "alicemoved",
        ]  # fmt: skip


async def test_hostile_and_deleted(sharing_pair: Pair) -> None:
    pair = sharing_pair
    async with raw_session() as session:
        alice, bob, carol = (Client(session, pair, u) for u in ("alice", "bob", "carol"))
        owner_cal, bob_cal, _ = await share_three(pair, alice, bob, carol)
        uid = f"h-{uuid.uuid4().hex[:6]}"
        assert (await alice("PUT", owner_cal + "h.ics", recurring(uid, "H"), **CAL)).status == 201
        injected = recurring(
            uid, "H", extra="BEGIN:X-CALENDARSERVER-PERUSER\r\nUID:x\r\nX-CALENDARSERVER-PERUSER-UID:alice\r\n"
            + alarm("forged", "-PT1M") + "END:X-CALENDARSERVER-PERUSER\r\n",
        )  # fmt: skip
        for name in ("h.ics", "fresh.ics"):
            answer = await bob("PUT", bob_cal + name, injected, **CAL)
            assert answer.status == 403 and b"valid-calendar-data" in answer.body
        assert b"forged" not in (await alice("GET", owner_cal + "h.ics")).body
        # deleted behind davproxy's back: the sharee's next sync reports it, and the
        # data goes, so the same object made again (same UID) starts without alarms
        h_view = (await bob("GET", bob_cal + "h.ics")).body.decode()
        with_alarm = h_view.replace("SUMMARY:H\r\n", "SUMMARY:H\r\n" + alarm("bobh", "-PT1M"), 1)
        assert (await bob("PUT", bob_cal + "h.ics", with_alarm, **CAL)).status == 204
        token, _ = synced(await bob("REPORT", bob_cal, sync(""), Depth="1"))
        direct = pair.direct.url(owner_cal + "h.ics")
        async with session.delete(direct, headers=pair.direct.headers("alice")) as gone:
            assert gone.status in (200, 204)
        _, changes = synced(await bob("REPORT", bob_cal, sync(token), Depth="1"))
        assert changes == {"h.ics": "gone"}
        again = {**pair.direct.headers("alice"), **CAL}
        async with session.put(direct, data=recurring(uid, "H"), headers=again) as made:
            assert made.status == 201
        assert alarms((await bob("GET", bob_cal + "h.ics")).body.decode()) == []
        # a new object by bob: his alarm stays his
        mine = recurring(f"b-{uid}", "Bob's", alarm("bob", "-PT1M"))
        assert (await bob("PUT", bob_cal + "b.ics", mine, If_None_Match="*", **CAL)).status == 201
        assert (await bob("PUT", bob_cal + "b.ics", mine, If_None_Match="*", **CAL)).status == 412
        assert alarms((await alice("GET", owner_cal + "b.ics")).body.decode()) == []
        assert alarms((await bob("GET", bob_cal + "b.ics")).body.decode()) == ["bob"]
        # deleted and made again under the same name: no alarm survives
        stale = etag_of(await bob("GET", bob_cal + "b.ics"))
        assert (await alice("DELETE", owner_cal + "b.ics")).status in (200, 204)
        assert (await bob("DELETE", bob_cal + "b.ics", If_Match=stale)).status in (404, 412)
        assert (
            await alice("PUT", owner_cal + "b.ics", recurring(f"b-{uid}", "Again"), **CAL)
        ).status == 201
        assert alarms((await bob("GET", bob_cal + "b.ics")).body.decode()) == []
        conditional = await bob("GET", bob_cal + "b.ics")
        unchanged = await bob("GET", bob_cal + "b.ics", If_None_Match=etag_of(conditional))
        assert unchanged.status == 304
        head = await bob("HEAD", bob_cal + "b.ics")
        assert (
            head.status == 200 and head.body == b"" and head.header("ETag") == etag_of(conditional)
        )
        assert head.header("Content-Length") == str(len(conditional.body))
        assert (await bob("DELETE", bob_cal + "b.ics", If_Match=etag_of(conditional))).status in (
            200,
            204,
        )
        assert (await bob("GET", bob_cal + "b.ics")).status == 404
        assert etree  # (lxml used through xml())


async def test_python_caldav_sharee_in_the_apple_flavour(sharing_pair: Pair) -> None:
    """Shared the CalendarServer way (CS:share, CS:invite-reply); bob's and alice's real
    client (python caldav) each add their own alarm; each reads back only their own,
    through GET, time-range search and sync tokens."""
    import datetime as dt

    import caldav
    import icalendar

    from tests.helpers import USERS

    from .test_cs_sharing import TEXT_XML, apple_notifications, cs_reply, cs_share

    pair = sharing_pair
    name = f"apple-pu-{uuid.uuid4().hex[:6]}"
    owner_cal = f"{pair.calendar_home}{name}/"
    bob_home = pair.calendar_home.replace("alice", "bob")
    async with raw_session() as session:
        alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
        await bob.hello()
        assert (await alice("MKCALENDAR", owner_cal)).status == 201
        share = cs_share(("mailto:bob@example.org", "read-write"))
        assert (await alice("POST", owner_cal, share, **TEXT_XML)).status == 200
        _, invite = (await apple_notifications(bob))[-1]
        uid = invite.findtext("CS:uid", namespaces=NS)
        accepted = await bob("POST", bob_home, cs_reply(uid, owner_cal), **TEXT_XML)
        assert accepted.status == 200, accepted.body
        bob_cal = xml(accepted).findtext("D:href", namespaces=NS) + "/"

    def with_alarm(event: caldav.CalendarObjectResource, who: str, minutes: int) -> None:
        component = event.icalendar_component
        for old in list(component.subcomponents):
            component.subcomponents.remove(old)
        found = icalendar.Alarm()
        found.add("action", "DISPLAY")
        found.add("description", who)
        found.add("trigger", dt.timedelta(minutes=-minutes))
        component.add_component(found)
        event.save()

    url = pair.proxy.url("/")
    with (
        caldav.DAVClient(url=url, username="alice", password=USERS["alice"]) as alice_client,
        caldav.DAVClient(url=url, username="bob", password=USERS["bob"]) as bob_client,
    ):
        owner = alice_client.calendar(url=pair.proxy.url(owner_cal))
        owner.save_event(recurring("lib-1", "Library"))
        copy = bob_client.calendar(url=pair.proxy.url(bob_cal))
        with_alarm(owner.event_by_uid("lib-1"), "alice", 10)
        assert alarms(copy.event_by_uid("lib-1").data) == []
        token_before = copy.objects_by_sync_token(
            load_objects=False, disable_fallback=True
        ).sync_token
        with_alarm(copy.event_by_uid("lib-1"), "bob", 30)
        assert alarms(copy.event_by_uid("lib-1").data) == ["bob"]
        assert alarms(owner.event_by_uid("lib-1").data) == ["alice"]
        found = copy.search(
            start=dt.datetime(2030, 1, 2, tzinfo=dt.UTC),
            end=dt.datetime(2030, 1, 3, tzinfo=dt.UTC),
            event=True,
        )
        assert [alarms(e.data) for e in found] == [["bob"]]
        changed = copy.objects_by_sync_token(
            sync_token=token_before, load_objects=True, disable_fallback=True
        )
        assert [alarms(o.data) for o in changed] == [["bob"]]
        quiet = copy.objects_by_sync_token(
            sync_token=changed.sync_token, load_objects=False, disable_fallback=True
        )
        assert list(quiet) == []


FREE_BUSY = (
    '<C:free-busy-query xmlns:C="urn:ietf:params:xml:ns:caldav">'
    '<C:time-range start="20300101T000000Z" end="20300104T000000Z"/></C:free-busy-query>'
)


def busy_periods(answer: Answer) -> list[str]:
    assert answer.status == 200 and answer.header("Content-Type").startswith("text/calendar")
    text = answer.body.decode().replace("\r\n ", "")
    lines = re.findall(r"^FREEBUSY[^:\r\n]*:([^\r\n]*)", text, re.MULTILINE)
    return sorted(period for line in lines for period in line.split(","))


async def test_free_busy_follows_each_users_own_transparency(sharing_pair: Pair) -> None:
    pair = sharing_pair
    async with raw_session() as session:
        alice, bob, carol = (Client(session, pair, u) for u in ("alice", "bob", "carol"))
        owner_cal, bob_cal, carol_cal = await share_three(pair, alice, bob, carol)
        uid = f"fb-{uuid.uuid4().hex[:6]}"
        daily = recurring(uid, "Standup", "TRANSP:OPAQUE\r\n")  # 09-10 daily, 3rd at 14-15
        assert (await alice("PUT", owner_cal + "d.ics", daily, **CAL)).status == 201
        lunch = event_at(f"l-{uid}", "20300102T120000Z", "TRANSP:TRANSPARENT\r\n")
        assert (await alice("PUT", owner_cal + "l.ics", lunch, **CAL)).status == 201
        # bob is free during the stand-ups but busy at lunch; carol follows the default
        mine = recurring(uid, "Standup", "TRANSP:TRANSPARENT\r\n", "TRANSP:TRANSPARENT\r\n")
        assert (await bob("PUT", bob_cal + "d.ics", mine, **CAL)).status == 204
        busy_lunch = event_at(f"l-{uid}", "20300102T120000Z", "TRANSP:OPAQUE\r\n")
        assert (await bob("PUT", bob_cal + "l.ics", busy_lunch, **CAL)).status == 204
        depth = {"Depth": "1"}
        assert busy_periods(await bob("REPORT", bob_cal, FREE_BUSY, **depth)) == [
            "20300102T120000Z/20300102T130000Z"
        ]
        # carol set nothing: alice's transparency is alice's, so lunch is busy for carol
        assert busy_periods(await carol("REPORT", carol_cal, FREE_BUSY, **depth)) == [
            "20300101T090000Z/20300101T100000Z", "20300102T090000Z/20300102T100000Z",
            "20300102T120000Z/20300102T130000Z", "20300103T140000Z/20300103T150000Z",
        ]  # fmt: skip
        # a VALARM time-range is when the sharee's own alarm rings (lunch at 12:00, -PT30M)
        ringing = await bob("GET", bob_cal + "l.ics")
        with_alarm = ringing.body.decode().replace(
            "END:VEVENT", alarm("bob", "-PT30M") + "END:VEVENT"
        )
        assert (await bob("PUT", bob_cal + "l.ics", with_alarm, **CAL)).status == 204

        def rings(start: str, end: str) -> str:
            return query(
                '<C:comp-filter name="VEVENT"><C:comp-filter name="VALARM">'
                f'<C:time-range start="{start}" end="{end}"/></C:comp-filter></C:comp-filter>'
            )

        at_1130 = rings("20300102T110000Z", "20300102T115959Z")
        assert set(data_by_member(await bob("REPORT", bob_cal, at_1130, **depth))) == {"l.ics"}
        at_noon = rings("20300102T120000Z", "20300102T130000Z")
        assert set(data_by_member(await bob("REPORT", bob_cal, at_noon, **depth))) == set()
        assert set(data_by_member(await carol("REPORT", carol_cal, at_1130, **depth))) == set()
        owner = await alice("REPORT", owner_cal, FREE_BUSY, **depth)
        if owner.status == 200:  # the upstream's own answer, with alice's transparency
            assert "20300102T120000Z" not in owner.body.decode()


def event_at(uid: str, start: str, personal: str) -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:{uid}\r\nDTSTAMP:20300101T000000Z\r\nDTSTART:{start}\r\nDURATION:PT1H\r\n"
        f"SUMMARY:Lunch\r\n{personal}END:VEVENT\r\nEND:VCALENDAR\r\n"
    )


async def race_owner_and_sharee(
    alice: Client, bobs: list[Client], owner_cal: str, bob_cal: str
) -> tuple[list[int], list[int]]:
    """8 PUTs of one recurring event by bob (through ``bobs`` in turn), each with his
    reminder, racing 8 by alice with hers: (bob's statuses, alice's)."""
    import asyncio

    uid = f"race-{uuid.uuid4().hex[:6]}"
    assert (await alice("PUT", owner_cal + "r.ics", recurring(uid, "v0"), **CAL)).status == 201

    async def owner_writes(n: int) -> int:
        body = recurring(uid, f"alice {n}", alarm("alice", "-PT5M"))
        return (await alice("PUT", owner_cal + "r.ics", body, **CAL)).status

    async def sharee_writes(n: int) -> int:
        body = recurring(uid, f"bob {n}", alarm("bob", "-PT10M"))
        return (await bobs[n % len(bobs)]("PUT", bob_cal + "r.ics", body, **CAL)).status

    sharee = asyncio.gather(*(sharee_writes(n) for n in range(8)))
    owner = asyncio.gather(*(owner_writes(n) for n in range(8)))
    statuses, owners = await asyncio.gather(sharee, owner)
    return list(statuses), list(owners)


async def test_concurrent_writers_without_preconditions_all_succeed(sharing_pair: Pair) -> None:
    """A sharee's PUT is davproxy's read, merge and conditional write: when the owner
    writes the same object in between, davproxy merges again instead of answering 412
    to a client that set no condition (the soak's load test found that 412)."""

    pair = sharing_pair
    async with raw_session() as session:
        alice, bob, carol = (Client(session, pair, u) for u in ("alice", "bob", "carol"))
        owner_cal, bob_cal, _ = await share_three(pair, alice, bob, carol)
        statuses, owners = await race_owner_and_sharee(alice, [bob], owner_cal, bob_cal)
        # davproxy's merges of bob's writes all land, never a 412 or 503 of davproxy's
        # own; Xandikos itself refuses concurrent writes to one collection (423, or 500),
        # to the owner's writes and davproxy's alike (Radicale queues them)
        refused = {423, 500} if pair.flavour == "xandikos" else set()
        assert all(200 <= s < 300 or s in refused for s in statuses), (statuses, owners)
        assert any(200 <= s < 300 for s in statuses), (statuses, owners)
        # whoever wrote last, bob still hears only his own reminder, alice only hers
        got = await bob("GET", bob_cal + "r.ics")
        mine = alarms(got.body.decode())
        assert got.status == 200 and mine and set(mine) == {"bob"}, (got.status, got.body[:600])
        # bob's reminder never reaches the owner's object (alice's is there if one of her
        # writes landed: Xandikos may have refused them all)
        theirs = alarms((await alice("GET", owner_cal + "r.ics")).body.decode())
        assert "bob" not in theirs and (set(theirs) == {"alice"}) == any(
            200 <= status < 300 for status in owners
        ), (theirs, owners)
