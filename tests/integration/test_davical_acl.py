"""The acl access backend on a real DAViCal: DAViCal itself enforces each share.

* A sharee reaching DAViCal directly (not through davproxy) has exactly the share's
  privileges, follows a change of access, and loses them on revoke.
* ACEs an administrator wrote survive every davproxy change, and a sharee already
  holding one cannot accept over it (DAV:no-ace-conflict, nothing recorded).
* A revocation committed to the store while DAViCal did not get the ACL request (the
  process died, or DAViCal was unreachable) is shown by ``admin reconcile --dry-run``
  and repaired when davproxy starts, also for an owner with no share left.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from lxml import etree

from davproxy.ops import davical
from davproxy.ops.embedded import free_port, start_davproxy
from tests.helpers import Endpoint, basic, fetch, open_store, raw_session, write_config

from .conftest import DAVICAL_ADMIN_PASSWORD, Pair
from .test_native_reconcile import admin
from .test_sharing import (
    SHARING,
    Client,
    accept_latest,
    event,
    notifications_of,
    reply_body,
    share_body,
)

D = "DAV:"
ACL_PROPFIND = '<D:propfind xmlns:D="DAV:"><D:prop><D:acl/></D:prop></D:propfind>'
XML = {"Content-Type": "application/xml; charset=utf-8"}
ADMIN = basic("admin", DAVICAL_ADMIN_PASSWORD)


async def aces(session: object, pair: Pair, collection: str) -> dict[str, set[str]]:
    """DAViCal's ACL of a collection as its owner reads it: principal -> privileges."""
    got = await fetch(
        session,  # type: ignore[arg-type]
        "PROPFIND", pair.direct.url(collection), {**ADMIN, **XML, "Depth": "0"}, ACL_PROPFIND,
    )  # fmt: skip
    assert got.status == 207, got.body
    found = {}
    for ace in etree.fromstring(got.body).iter(f"{{{D}}}ace"):
        who = ace.find(f"{{{D}}}principal")[0]
        key = who.text if who.tag == f"{{{D}}}href" else etree.QName(who).localname
        found[key] = {etree.QName(p[0]).localname for p in ace.iter(f"{{{D}}}privilege")}
    return found


async def direct(session: object, pair: Pair, user: str, method: str, path: str) -> int:
    """One request straight to DAViCal as ``user``: its status."""
    body = event("direct", "Direct") if method == "PUT" else None
    headers = {"Content-Type": "text/calendar"} if method == "PUT" else {"Depth": "1"}
    got = await fetch(
        session,
        method,
        pair.direct.url(path),
        {**pair.direct.headers(user), **headers},
        body,  # type: ignore[arg-type]
    )
    return got.status


async def reads_in_full(session: object, pair: Pair, user: str, item: str) -> bool:
    """Whether ``user`` reads the event itself at DAViCal (not its "busy" placeholder)."""
    got = await fetch(session, "GET", pair.direct.url(item), pair.direct.headers(user))  # type: ignore[arg-type]
    return got.status == 200 and b"SUMMARY:Alice's secret" in got.body


async def share(alice: Client, collection: str, access: str) -> None:
    answer = await alice(
        "POST", collection, share_body(("mailto:bob@example.org", access)), **SHARING
    )
    assert answer.status == 204, answer.body


async def test_davical_enforces_the_share_and_revoke_removes_it(davical_acl_pair: Pair) -> None:
    pair = davical_acl_pair
    cal = f"/alice/acl-{uuid.uuid4().hex[:6]}/"
    bob_principal = "/caldav.php/bob/"
    async with raw_session() as session:
        alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
        await bob.hello()
        assert (await alice("MKCALENDAR", cal)).status == 201
        put = await alice("PUT", cal + "a.ics", event("a", "Alice's secret"),
                          Content_Type="text/calendar")  # fmt: skip
        assert put.status == 201
        # nothing shared: DAViCal gives bob only a busy placeholder, no listing, no write
        assert not await reads_in_full(session, pair, "bob", cal + "a.ics")
        assert await direct(session, pair, "bob", "PROPFIND", cal) == 403

        await share(alice, cal, "read")
        assert bob_principal not in await aces(session, pair, cal)  # invited, not accepted
        copy = await accept_latest(bob)
        assert bob_principal in await aces(session, pair, cal)
        assert await reads_in_full(session, pair, "bob", cal + "a.ics")
        assert await direct(session, pair, "bob", "PROPFIND", cal) == 207
        assert await direct(session, pair, "bob", "PUT", cal + "b.ics") == 403
        assert await direct(session, pair, "carol", "PROPFIND", cal) == 403
        # through the copy, DAViCal answers for bob himself: its own refusal
        refused = await bob("PUT", copy + "x.ics", event("x"), Content_Type="text/calendar")
        assert refused.status == 403

        await share(alice, cal, "read-write")
        assert {"write-content", "bind", "unbind"} <= (await aces(session, pair, cal))[
            bob_principal
        ]
        assert await direct(session, pair, "bob", "PUT", cal + "b.ics") == 201
        written = await bob("PUT", copy + "c.ics", event("c"), Content_Type="text/calendar")
        assert written.status == 201
        assert (await alice("GET", cal + "c.ics")).status == 200
        # downgraded: DAViCal refuses bob's writes directly as well
        await share(alice, cal, "read")
        assert await direct(session, pair, "bob", "PUT", cal + "d.ics") == 403

        await share(alice, cal, "no-access")
        assert not await reads_in_full(session, pair, "bob", cal + "a.ics")
        assert await direct(session, pair, "bob", "PROPFIND", cal) == 403
        assert await direct(session, pair, "bob", "PUT", cal + "e.ics") == 403
        # DAViCal cannot delete an ACE through ACL: what remains is what everyone has
        left = await aces(session, pair, cal)
        assert left[bob_principal] == left["authenticated"]

        # shared again (davproxy's own reduced ACE is no conflict), then bob unbinds
        await share(alice, cal, "read")
        copy = await accept_latest(bob)
        assert await reads_in_full(session, pair, "bob", cal + "a.ics")
        assert (await bob("DELETE", copy)).status == 204
        assert not await reads_in_full(session, pair, "bob", cal + "a.ics")
        assert (await alice("GET", cal + "a.ics")).status == 200  # only the binding went


async def test_administrators_aces_survive_and_block_a_conflicting_accept(
    davical_acl_pair: Pair,
) -> None:
    pair = davical_acl_pair
    cal = f"/alice/admin-{uuid.uuid4().hex[:6]}/"
    carol, bob_principal = "/caldav.php/carol/", "/caldav.php/bob/"
    grant_carol = (
        '<D:acl xmlns:D="DAV:"><D:ace><D:principal><D:href>/caldav.php/carol/</D:href>'
        "</D:principal><D:grant><D:privilege><D:read/></D:privilege><D:privilege>"
        "<D:read-acl/></D:privilege></D:grant></D:ace></D:acl>"
    )
    async with raw_session() as session:
        alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
        await bob.hello()
        assert (await alice("MKCALENDAR", cal)).status == 201
        assert (await alice("PUT", cal + "a.ics", event("a", "Alice's secret"),
                            Content_Type="text/calendar")).status == 201  # fmt: skip
        written = await fetch(session, "ACL", pair.direct.url(cal), {**ADMIN, **XML}, grant_carol)
        assert written.status == 200, written.body
        admins = (await aces(session, pair, cal))[carol]
        assert admins == {"read", "read-acl"}

        await share(alice, cal, "read-write")
        await accept_latest(bob)
        await share(alice, cal, "read")
        assert (await aces(session, pair, cal))[carol] == admins
        await share(alice, cal, "no-access")
        after = await aces(session, pair, cal)
        assert after[carol] == admins and await reads_in_full(session, pair, "carol", cal + "a.ics")

        # an ACE for bob davproxy did not write: bob cannot accept over it
        other = f"/alice/admin2-{uuid.uuid4().hex[:6]}/"
        assert (await alice("MKCALENDAR", other)).status == 201
        grant_bob = grant_carol.replace("/caldav.php/carol/", bob_principal)
        assert (await fetch(session, "ACL", pair.direct.url(other), {**ADMIN, **XML},
                            grant_bob)).status == 200  # fmt: skip
        await share(alice, other, "read-write")
        _, notes = await notifications_of(bob)
        refused = await bob("POST", notes[-1][0], reply_body(True), **SHARING)
        assert refused.status == 409 and b"no-ace-conflict" in refused.body
        assert (await aces(session, pair, other))[bob_principal] == {"read", "read-acl"}
        state = await alice("PROPFIND", other, '<D:propfind xmlns:D="DAV:"><D:prop><D:invite/>'
                            "</D:prop></D:propfind>", Depth="0", **XML)  # fmt: skip
        assert b"invite-noresponse" in state.body  # the acceptance was not recorded


async def test_revocation_the_acl_request_missed_is_repaired_at_start(
    tmp_path: Path, davical_server: davical.DavicalServer
) -> None:
    """davproxy stopped dead after committing a revocation it never sent to DAViCal."""
    server = davical_server
    folder = tmp_path / "davproxy"
    (tmp_path / "service.pw").write_text(DAVICAL_ADMIN_PASSWORD + "\n")
    access = (
        '[access]\nbackend = "acl"\nservice_user = "admin"\n'
        f'service_password_file = "{tmp_path / "service.pw"}"\n'
    )
    main, port = write_config(
        folder, upstream_url=server.url, kind="davical", mode="upstream-basic",
        mapping_extra=access, server_extra="upstream_timeout = 3",
    )  # fmt: skip
    # the same store and configuration, but DAViCal out of reach
    down = folder / "davproxy-down.toml"
    down.write_text(main.read_text().replace(server.url, f"http://127.0.0.1:{free_port()}/"))
    cal = f"/alice/kill-{uuid.uuid4().hex[:6]}/"
    bob_principal = "/caldav.php/bob/"
    users = {u: basic(u) for u in ("alice", "bob", "carol")}
    proxy = start_davproxy(main, port=port)
    pair = Pair(
        "davical-acl", Endpoint(server.url, users), Endpoint(proxy.url, users), "/alice/",
        "/alice/", proxy, proxy,
    )  # fmt: skip
    async with raw_session() as session:
        try:
            alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
            await bob.hello()
            assert (await alice("MKCALENDAR", cal)).status == 201
            assert (await alice("PUT", cal + "a.ics", event("a", "Alice's secret"),
                                Content_Type="text/calendar")).status == 201  # fmt: skip
            await share(alice, cal, "read")
            await accept_latest(bob)
            assert await reads_in_full(session, pair, "bob", cal + "a.ics")
        finally:
            proxy.process.kill()  # no shutdown: whatever was in flight is lost
            proxy.process.wait()

        revoked = admin(down, "revoke", "--collection", cal, "--sharee", "bob")
        assert revoked.returncode == 1 and "ended in the store" in revoked.stderr
        store = open_store(down)
        assert (
            store.execute("SELECT count(*) FROM shares WHERE status = 'accepted'").fetchone()[0]
            == 0
        )
        store.close()
        assert await reads_in_full(session, pair, "bob", cal + "a.ics")  # DAViCal not told

        dry = admin(main, "reconcile", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"would remove bob's ACE on {cal}" in dry.stdout
        assert await reads_in_full(session, pair, "bob", cal + "a.ics")  # a dry run changes nothing

        proxy = start_davproxy(main, port=port)  # start-up reconciles
        try:
            for _ in range(50):
                if not await reads_in_full(session, pair, "bob", cal + "a.ics"):
                    break
                await asyncio.sleep(0.1)
            assert not await reads_in_full(session, pair, "bob", cal + "a.ics")
            left = await aces(session, pair, cal)
            assert left[bob_principal] == left["authenticated"]
            again = admin(main, "reconcile")
            assert again.returncode == 0 and "match the store" in again.stdout, again.stdout
        finally:
            proxy.stop()


async def test_an_acl_the_upstream_refuses_records_nothing(
    tmp_path: Path, davical_server: davical.DavicalServer
) -> None:
    """davproxy's account may read the ACL but not write it: DAViCal's need-privileges
    is named in the answer and the log, and the acceptance is not recorded."""
    server = davical_server
    folder = tmp_path / "davproxy"
    (tmp_path / "carol.pw").write_text("carol-pw\n")
    access = (  # carol is no administrator: she cannot change alice's ACL
        '[access]\nbackend = "acl"\nservice_user = "carol"\n'
        f'service_password_file = "{tmp_path / "carol.pw"}"\n'
    )
    main, port = write_config(
        folder, upstream_url=server.url, kind="davical", mode="upstream-basic",
        mapping_extra=access,
    )  # fmt: skip
    users = {u: basic(u) for u in ("alice", "bob", "carol")}
    cal = f"/alice/refused-{uuid.uuid4().hex[:6]}/"
    with start_davproxy(main, port=port) as proxy:
        pair = Pair(
            "davical-acl", Endpoint(server.url, users), Endpoint(proxy.url, users), "/alice/",
            "/alice/", proxy, proxy,
        )  # fmt: skip
        async with raw_session() as session:
            alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
            await bob.hello()
            assert (await alice("MKCALENDAR", cal)).status == 201
            readable = (
                '<D:acl xmlns:D="DAV:"><D:ace><D:principal><D:href>/caldav.php/carol/</D:href>'
                "</D:principal><D:grant><D:privilege><D:read/></D:privilege><D:privilege>"
                "<D:read-acl/></D:privilege></D:grant></D:ace></D:acl>"
            )
            written = await fetch(session, "ACL", pair.direct.url(cal), {**ADMIN, **XML}, readable)
            assert written.status == 200
            await share(alice, cal, "read")
            _, notes = await notifications_of(bob)
            refused = await bob("POST", notes[-1][0], reply_body(True), **SHARING)
            assert refused.status == 502 and b"need-privileges" in refused.body, refused.body
            assert "/caldav.php/bob/" not in await aces(session, pair, cal)
        log = proxy.log_tail(200)
    assert "refused the ACL" in log and "need-privileges" in log
    store = open_store(main)
    try:
        assert store.execute("SELECT status FROM shares").fetchall() == [("noresponse",)]
        assert store.execute("SELECT count(*) FROM acl_entries").fetchone() == (0,)
    finally:
        store.close()


async def test_whole_acl_requests_on_a_merging_server_are_reported(
    tmp_path: Path, davical_server: davical.DavicalServer
) -> None:
    """acl_request = "whole" (RFC 3744's replace) against DAViCal, which merges: the
    grant works, but a revocation DAViCal does not carry out is reported, not believed,
    and stays owed (reconcile still lists it)."""
    server = davical_server
    folder = tmp_path / "davproxy"
    (tmp_path / "service.pw").write_text(DAVICAL_ADMIN_PASSWORD + "\n")
    access = (
        '[access]\nbackend = "acl"\nacl_request = "whole"\nservice_user = "admin"\n'
        f'service_password_file = "{tmp_path / "service.pw"}"\n'
    )
    main, port = write_config(
        folder, upstream_url=server.url, kind="davical", mode="upstream-basic",
        mapping_extra=access,
    )  # fmt: skip
    users = {u: basic(u) for u in ("alice", "bob", "carol")}
    cal = f"/alice/whole-{uuid.uuid4().hex[:6]}/"
    with start_davproxy(main, port=port) as proxy:
        pair = Pair(
            "davical-acl", Endpoint(server.url, users), Endpoint(proxy.url, users), "/alice/",
            "/alice/", proxy, proxy,
        )  # fmt: skip
        async with raw_session() as session:
            alice, bob = Client(session, pair, "alice"), Client(session, pair, "bob")
            await bob.hello()
            assert (await alice("MKCALENDAR", cal)).status == 201
            assert (await alice("PUT", cal + "a.ics", event("a", "Alice's secret"),
                                Content_Type="text/calendar")).status == 201  # fmt: skip
            await share(alice, cal, "read")
            await accept_latest(bob)
            assert await reads_in_full(session, pair, "bob", cal + "a.ics")
            revoked = await alice(
                "POST", cal, share_body(("mailto:bob@example.org", "no-access")), **SHARING
            )
            assert revoked.status == 502 and b"own-aces" in revoked.body, revoked.body
        log = proxy.log_tail(200)
    assert 'acl_request = "own-aces"' in log
    dry = admin(main, "reconcile", "--dry-run")
    assert f"would remove bob's ACE on {cal}" in dry.stdout, dry.stdout + dry.stderr
