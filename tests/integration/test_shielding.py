"""davproxy shields its upstream: hostile XML never reaches it (issue 13).

Each hostile body goes to a user's own calendar and to a sharee's copy, in front of every
set-up (both upstreams, both access backends, both identity modes).  davproxy must answer
400 with a ``D:error`` itself: the upstream's answer count in davproxy's own metrics does
not move, and nothing is stored.  Valid bodies still pass byte for byte (the passthrough
fidelity tests run unchanged).
"""

from __future__ import annotations

import re
import uuid

import pytest

from tests.helpers import basic, fetch, raw_session

from .conftest import Pair
from .test_sharing import SHARING, Client, accept_latest, propfind, share_body

DTD_FILE = (
    b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b'<D:propfind xmlns:D="DAV:"><D:prop><D:displayname>&x;</D:displayname></D:prop></D:propfind>'
)
PARAMETER_ENTITY = (
    b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x.dtd"> %p;]>'
    b'<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
)
LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "ha"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;">]>'
    b'<D:propfind xmlns:D="DAV:"><D:prop><D:displayname>&d;</D:displayname></D:prop></D:propfind>'
)
QUADRATIC = (
    b'<?xml version="1.0"?><!DOCTYPE q [<!ENTITY a "' + b"x" * 20000 + b'">]>'
    b'<D:propfind xmlns:D="DAV:"><D:prop><D:displayname>' + b"&a;" * 200
    + b"</D:displayname></D:prop></D:propfind>"
)  # fmt: skip
DEEP = b'<D:propfind xmlns:D="DAV:">' + b"<D:x>" * 5000 + b"</D:x>" * 5000 + b"</D:propfind>"
UNKNOWN_ENCODING = (
    b'<?xml version="1.0" encoding="x-no-such-charset"?>'
    b'<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
)
INVALID_UTF8 = (
    b'<?xml version="1.0" encoding="utf-8"?><D:propertyupdate xmlns:D="DAV:"><D:set><D:prop>'
    b"<D:displayname>caf\xe9 \xff\xfe</D:displayname></D:prop></D:set></D:propertyupdate>"
)
LYING_ENCODING = (
    b'<?xml version="1.0" encoding="utf-16"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
)
HOSTILE = {
    "external-entity": DTD_FILE,
    "parameter-entity": PARAMETER_ENTITY,
    "billion-laughs": LAUGHS,
    "quadratic-blowup": QUADRATIC,
    "5000-deep": DEEP,
    "unknown-encoding": UNKNOWN_ENCODING,
    "invalid-utf-8": INVALID_UTF8,
    "lying-encoding": LYING_ENCODING,
}
METHODS = ("PROPFIND", "REPORT", "PROPPATCH", "MKCOL", "MKCALENDAR")


async def upstream_answers(client: Client) -> float:
    """How many answers davproxy has had from its upstream (its own metrics)."""
    async with raw_session() as session:
        metrics = await fetch(session, "GET", client.pair.proxy.url("/.davproxy/metrics"))
    assert metrics.status == 200, metrics.body
    found = re.findall(
        rb"^davproxy_upstream_duration_seconds_count\{[^}]*\} ([0-9.e+]+)$", metrics.body, re.M
    )
    return sum(float(v) for v in found)


async def test_hostile_xml_never_reaches_the_upstream(sharing_pair: Pair) -> None:
    pair = sharing_pair
    name = f"shield-{uuid.uuid4().hex[:6]}"
    owner_cal = f"{pair.calendar_home}{name}/"
    async with raw_session() as session:
        alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
        await bob.hello()
        assert (await alice("MKCALENDAR", owner_cal)).status == 201
        shared = await alice("POST", owner_cal, share_body(("bob", "read-write")), **SHARING)
        assert shared.status == 204
        copy = await accept_latest(bob)
        before_name = await alice("PROPFIND", owner_cal, propfind("D:displayname"), Depth="0")

        targets = [(alice, owner_cal), (alice, f"{pair.calendar_home}new-{name}/"), (bob, copy)]
        before = await upstream_answers(alice)
        refused: list[tuple[str, str, int]] = []
        for label, body in HOSTILE.items():
            for method in METHODS:
                for client, path in targets:
                    answer = await client(
                        method, path, body, Content_Type="application/xml", Depth="0"
                    )
                    # nothing may replace a copy: refused before its body is even read
                    expected = 403 if path == copy and method.startswith("MK") else 400
                    if answer.status != expected or b"error" not in answer.body:
                        refused.append((label, method, answer.status))
        after = await upstream_answers(alice)
        assert refused == [], refused[:10]
        assert after == before, f"{after - before} request(s) reached the upstream"

        # nothing stored: alice's calendar has its old name, the new one does not exist
        after_name = await alice("PROPFIND", owner_cal, propfind("D:displayname"), Depth="0")
        assert after_name.body == before_name.body
        missing = await alice("PROPFIND", f"{pair.calendar_home}new-{name}/", Depth="0")
        assert missing.status == 404 or b"404" in missing.body


@pytest.mark.parametrize("encoding", ["utf-8", "iso-8859-1"])
async def test_valid_bodies_in_a_declared_encoding_still_pass(pair: Pair, encoding: str) -> None:
    """The gate parses, it does not rewrite: a valid PROPPATCH in another encoding reaches
    the upstream as sent and takes effect."""
    name = f"enc-{uuid.uuid4().hex[:6]}"
    cal = f"{pair.calendar_home}{name}/"
    text = (
        f'<?xml version="1.0" encoding="{encoding}"?><D:propertyupdate xmlns:D="DAV:"><D:set>'
        "<D:prop><D:displayname>Café</D:displayname></D:prop></D:set></D:propertyupdate>"
    )
    async with raw_session() as session:
        alice = Client(session, pair, "alice")
        assert (await alice("MKCALENDAR", cal)).status == 201
        patched = await alice("PROPPATCH", cal, text.encode(encoding))  # type: ignore[arg-type]
        assert patched.status == 207, patched.body
        shown = await alice("PROPFIND", cal, propfind("D:displayname"), Depth="0")
        assert "Café" in shown.body.decode("utf-8")


async def test_foreign_homes_are_refused_before_the_upstream(sharing_pair: Pair) -> None:
    """Another user's principal and homes, and Destinations there, are davproxy's to
    refuse (403 need-privileges), in both identity modes; a wrong password is still 401."""
    pair = sharing_pair
    name = f"own-{uuid.uuid4().hex[:6]}"
    own_cal = f"{pair.calendar_home}{name}/"
    bob_home = pair.calendar_home.replace("/alice/", "/bob/")
    async with raw_session() as session:
        alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
        await bob.hello()
        assert (await alice("MKCALENDAR", own_cal)).status == 201
        event = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:f@x\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20260101T100000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"  # noqa: E501
        assert (
            await alice("PUT", own_cal + "f.ics", event, Content_Type="text/calendar")
        ).status == 201
        # upstream-basic proves a password at the upstream once (then caches the verdict):
        # done here, so what follows is counted without it
        assert (await alice("GET", "/.davproxy/whoami")).status == 200
        before = await upstream_answers(alice)
        attempts = [
            await alice("PROPFIND", "/bob/", propfind("D:displayname"), Depth="0"),
            await alice("PROPFIND", bob_home, propfind("D:displayname"), Depth="1"),
            await alice("PUT", bob_home + "planted.ics", event, Content_Type="text/calendar"),
            await alice("MKCALENDAR", bob_home + f"planted-{name}/"),
            await alice(
                "MOVE", own_cal + "f.ics", Destination=pair.proxy.url(bob_home + "moved.ics")
            ),
        ]
        after = await upstream_answers(alice)
        assert [a.status for a in attempts] == [403] * len(attempts)
        assert all(b"need-privileges" in a.body for a in attempts)
        assert after == before, f"{after - before} request(s) reached the upstream"
        wrong = await fetch(
            session, "PROPFIND", pair.proxy.url("/bob/"), {**basic("alice", "wrong"), "Depth": "0"}
        )
        assert wrong.status == 401
        # the user's own space is untouched by the rule
        assert (
            await alice("PROPFIND", own_cal, propfind("D:displayname"), Depth="0")
        ).status == 207
        assert (await bob("PROPFIND", bob_home, propfind("D:displayname"), Depth="0")).status == 207


async def test_ended_copies_answer_404_from_davproxy(sharing_pair: Pair) -> None:
    """After a revoke or an unbind, the former copy path is davproxy's clean 404 on every
    set-up (never the upstream's multistatus about a path it never had), until the sharee
    makes something of their own there."""
    pair = sharing_pair
    tag = uuid.uuid4().hex[:6]
    async with raw_session() as session:
        alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
        await bob.hello()
        copies = []
        for n in (1, 2):
            cal = f"{pair.calendar_home}ended-{tag}-{n}/"
            assert (await alice("MKCALENDAR", cal)).status == 201
            assert (await alice("POST", cal, share_body(("bob", "read")), **SHARING)).status == 204
            copies.append((cal, await accept_latest(bob)))
        (revoked_cal, revoked), (_, unbound) = copies
        assert (
            await alice("POST", revoked_cal, share_body(("bob", "no-access")), **SHARING)
        ).status == 204
        assert (await bob("DELETE", unbound)).status == 204
        for path in (revoked, unbound):
            for method, body in (("PROPFIND", propfind("D:displayname")), ("GET", None)):
                gone = await bob(method, path, body, Depth="0")
                assert gone.status == 404 and b"error" in gone.body, (path, method, gone.status)
            inside = await bob("GET", path + "x.ics")
            assert inside.status == 404, inside.status
        # bob makes a calendar of his own where the revoked copy was: it is his again
        assert (await bob("MKCALENDAR", revoked)).status == 201
        mine = await bob("PROPFIND", revoked, propfind("D:displayname"), Depth="0")
        assert mine.status == 207
