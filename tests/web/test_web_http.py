"""The sharing web page with a plain HTTP client: login, sessions, CSRF, other users'
things, markup in names, and that the page and the protocol show one state."""

from __future__ import annotations

import html
import re
from pathlib import Path

import aiohttp
from yarl import URL

from davproxy.ops.embedded import start_radicale, start_xandikos
from tests.feed_origin import calendar, event
from tests.helpers import USERS, basic, fetch, start_proxy, write_htpasswd
from tests.web.conftest import (
    HOSTILE_CALENDAR,
    HOSTILE_FEED,
    HOSTILE_NAME,
    WebClient,
    WebSite,
)

SHARE_BODY = (
    '<D:share-resource xmlns:D="DAV:"><D:sharee><D:href>mailto:{who}@example.org</D:href>'
    "<D:comment>{comment}</D:comment><D:share-access><D:read/></D:share-access>"
    "</D:sharee></D:share-resource>"
)


async def test_login_sets_a_strict_session_cookie_and_logout_ends_it(web_site: WebSite) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(web_site.page, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"].endswith("/.davproxy/web/login")
        async with session.get(web_site.page + "login") as r:
            form = await r.text()
            login_cookie = [v for v in r.headers.getall("Set-Cookie") if "davproxy_login=" in v]
        token = re.search(r'name="csrf" value="([^"]+)"', form)
        assert token and login_cookie and "HttpOnly" in login_cookie[0]
        assert "SameSite=Strict" in login_cookie[0] and "Secure" not in login_cookie[0]
        fields = {"csrf": token.group(1), "user": "alice", "password": "wrong"}
        async with session.post(web_site.page + "login", data=fields, allow_redirects=False) as r:
            assert r.status == 401 and "Wrong user name or password" in await r.text()
        # a failed form login is a failed login for the guard, the access log and fail2ban
        log = web_site.proxy.log_path.read_text()
        assert re.search(r"route=web user=- status=401 \S+ upstream=\S+ login=failed", log), log[
            -2000:
        ]
        fields["password"] = USERS["alice"]
        async with session.post(web_site.page + "login", data=fields, allow_redirects=False) as r:
            assert r.status == 303
            cookie = next(v for v in r.headers.getall("Set-Cookie") if "davproxy_session=" in v)
        assert (
            "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/.davproxy/web/" in cookie
        )
        assert "Secure" not in cookie  # plain HTTP, and X-Forwarded-Proto is not trusted here
        async with session.get(web_site.page) as r:
            page = await r.text()
            assert r.status == 200 and "My calendars and address books" in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf
        stolen = session.cookie_jar.filter_cookies(URL(web_site.page))["davproxy_session"].value
        async with session.post(
            web_site.page + "logout", data={"csrf": csrf.group(1)}, allow_redirects=False
        ) as r:
            assert r.status == 303
    # the old cookie opens nothing any more
    async with aiohttp.ClientSession() as other:
        async with other.get(
            web_site.page, headers={"Cookie": f"davproxy_session={stolen}"}, allow_redirects=False
        ) as r:
            assert r.status == 303 and r.headers["Location"].endswith("/login")


async def test_login_form_needs_its_token_and_forwarded_proto_is_not_believed(client_for) -> None:  # type: ignore[no-untyped-def]
    client: WebClient = await client_for()
    status, text, _ = await client.post(
        "login", {"user": "alice", "password": USERS["alice"]}, csrf=""
    )
    assert status == 403 and "expired" in text
    await client.get("login", **{"X-Forwarded-Proto": "https"})
    status, _, headers = await client.post(
        "login", {"user": "alice", "password": USERS["alice"]}, **{"X-Forwarded-Proto": "https"}
    )
    assert status == 303 and "Secure" not in headers["Set-Cookie"]


async def test_every_answer_carries_the_strict_policy_and_no_outside_assets(client_for) -> None:  # type: ignore[no-untyped-def]
    client: WebClient = await client_for("alice")
    for page in (
        "",
        "invitations",
        "subscriptions",
        "help",
        "login",
        "collection?c=alice/calendar/",
    ):
        status, text, headers = await client.get(page)
        assert status in (200, 303), page
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers.get("Cache-Control") == "no-store"
        if status == 200:
            assert "style=" not in text and "onclick" not in text.lower()
            for script in re.findall(r"<script[^>]*>", text):
                assert 'src="/.davproxy/web/static/' in script, script
            for link in re.findall(r'(?:src|href)="([^"]+)"', text):
                assert link.startswith(("/", "#")), link  # nothing from another origin
    async with client.session.get(web_site_static(client), allow_redirects=False) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/css")
        assert "immutable" in r.headers["Cache-Control"]


def web_site_static(client: WebClient) -> str:
    link = re.search(r'href="(/.davproxy/web/static/app.css\?v=[0-9a-f]+)"', client.last)
    assert link
    return client.site.url(link.group(1))


async def test_state_changes_need_the_session_token_and_this_origin(
    client_for, web_site: WebSite
) -> None:  # type: ignore[no-untyped-def]
    alice: WebClient = await client_for("alice")
    fields = {"collection": "alice/calendar/", "sharee": "carol", "access": "read", "comment": ""}
    for csrf, headers in (
        ("", {}),
        ("forged", {}),
        (None, {"Origin": "http://evil.example"}),
        (None, {"Sec-Fetch-Site": "cross-site"}),
    ):
        status, text, _ = await alice.post("share", fields, csrf=csrf, **headers)
        assert status == 403 and "did not come from this page" in text, (csrf, headers)
    # another user's token does not do either
    bob: WebClient = await client_for("bob")
    status, _, _ = await alice.post("share", fields, csrf=bob.csrf)
    assert status == 403
    _, page, _ = await alice.get("collection?c=alice/calendar/")
    assert "Carol" not in page  # nothing was shared
    # a GET never changes anything
    status, _, _ = await alice.get("share?collection=alice/calendar/&sharee=carol")
    assert status == 404
    # without a session a POST does nothing and asks to log in
    anonymous: WebClient = await client_for()
    status, text, _ = await anonymous.post("share", fields, csrf="x")
    assert status == 403 and "log in again" in text


async def test_nobody_reaches_another_users_things(client_for, web_site: WebSite) -> None:  # type: ignore[no-untyped-def]
    alice: WebClient = await client_for("alice")
    answer = await alice.post(
        "share", {"collection": "alice/contacts/", "sharee": "bob@example.org", "access": "read"}
    )
    assert answer[0] == 303, answer[1]
    invitation = await web_site.dav("bob", "PROPFIND", "/.davproxy/notifications/bob/", Depth="1")
    uid = re.findall(r"/\.davproxy/notifications/bob/([0-9a-f]{32})\.xml", invitation.body.decode())
    assert uid
    carol: WebClient = await client_for("carol")
    # carol looks at, shares, changes and revokes alice's things: refused, nothing changes
    status, _, _ = await carol.get("collection?c=alice/contacts/")
    assert status == 404
    for action, fields in (
        ("share", {"collection": "alice/contacts/", "sharee": "carol", "access": "read-write"}),
        ("access", {"collection": "alice/contacts/", "sharee": "bob", "access": "read-write"}),
        ("revoke", {"collection": "alice/contacts/", "sharee": "bob"}),
        ("share", {"collection": "../alice/contacts/", "sharee": "dave@corp", "access": "read"}),
    ):
        status, text, _ = await carol.post(action, fields)
        assert status == 404 and "No such" in text, (action, text)
    # and answers bob's invitation for him: refused
    for uid_ in uid:
        status, text, _ = await carol.post("answer", {"invitation": uid_, "answer": "accept"})
        assert status == 404 and "No such invitation" in text
        status, _, _ = await carol.post("leave", {"invitation": uid_})
        assert status == 404
    _, page, _ = await alice.get("collection?c=alice/contacts/")
    assert page.count("invited, no answer yet") == 1 and "Carol" not in page
    bob: WebClient = await client_for("bob")
    _, page, _ = await bob.get("invitations")
    assert "Alice shares “Contacts”" in page
    # subscriptions are their owner's alone
    made = await alice.post(
        "subscribe", {"url": web_site.origin.url("/holidays.ics"), "name": "Holidays"}
    )
    assert made[0] == 303, made[1]
    status, text, _ = await carol.post("unsubscribe", {"subscription": "alice/holidays/"})
    assert status == 404
    status, text, _ = await carol.post("refresh", {"subscription": "alice/holidays/"})
    assert status == 404
    _, page, _ = await alice.get("subscriptions")
    assert "Holidays" in page
    done = await alice.follow(await alice.post("unsubscribe", {"subscription": "alice/holidays/"}))
    assert "Unsubscribed from “Holidays”" in done


async def test_markup_in_names_comments_and_feed_titles_stays_text(
    client_for, web_site: WebSite
) -> None:  # type: ignore[no-untyped-def]
    alice: WebClient = await client_for("alice")
    _, home, _ = await alice.get("")
    assert html.escape(HOSTILE_CALENDAR, quote=False) in home or "&lt;svg" in home
    assert "<svg" not in home
    shared = await alice.follow(
        await alice.post(
            "share", {"collection": "alice/work/", "sharee": "mallory", "access": "read"}
        )
    )
    assert "&lt;img src=x" in shared and "<img" not in shared
    # a comment sent through the protocol reaches bob's page as text
    comment = "<script>window.__xss=4</script>Bring &amp; share"
    sent = await web_site.dav(
        "alice", "POST", "/alice/work/",
        SHARE_BODY.format(who="bob", comment=comment.replace("<", "&lt;")),
        Content_Type="application/davsharing+xml; charset=utf-8",
    )  # fmt: skip
    assert sent.status == 204, sent.body
    bob: WebClient = await client_for("bob")
    _, page, _ = await bob.get("invitations")
    assert "&lt;script&gt;window.__xss=4" in page and "<script>window" not in page
    # a feed whose title is markup
    made = await alice.follow(
        await alice.post("subscribe", {"url": web_site.origin.url("/team.ics"), "name": ""})
    )
    assert "&lt;script&gt;window.__xss=3" in made and "<script>window" not in made
    assert HOSTILE_NAME not in made and HOSTILE_FEED not in made
    await alice.post("unsubscribe", {"subscription": "alice/script-window-xss-3-script-team-feed/"})
    # the people suggestions are JSON, never HTML
    async with alice.session.get(web_site.page + "people?q=mall") as r:
        assert r.headers["Content-Type"].startswith("application/json")
        assert (await r.json())[0]["id"] == "mallory"


async def test_page_and_protocol_see_one_state(client_for, web_site: WebSite) -> None:  # type: ignore[no-untyped-def]
    """Shared on the page, accepted with an IETF reply; shared with an Apple CS:share,
    answered on the page: each side sees what the other did, notifications included."""
    carol: WebClient = await client_for("carol")
    done = await carol.follow(
        await carol.post(
            "share",
            {
                "collection": "carol/calendar/",
                "sharee": "Bob",
                "access": "read-write",
                "comment": "From the page",
            },
        )
    )
    assert "Shared with Bob" in done and "invited, no answer yet" in done
    listing = await web_site.dav("bob", "PROPFIND", "/.davproxy/notifications/bob/", Depth="1")
    notes = re.findall(r"/\.davproxy/notifications/bob/[0-9a-f]{32}\.xml", listing.body.decode())
    bodies = [await web_site.dav("bob", "GET", n) for n in set(notes)]
    mine = [n for n, b in zip(set(notes), bodies, strict=True) if b"From the page" in b.body]
    assert len(mine) == 1
    reply = await web_site.dav(
        "bob", "POST", mine[0],
        '<D:invite-reply xmlns:D="DAV:"><D:invite-accepted/></D:invite-reply>',
        Content_Type="application/davsharing+xml; charset=utf-8",
    )  # fmt: skip
    assert reply.status == 201, reply.body
    _, page, _ = await carol.get("collection?c=carol/calendar/")
    assert "Read and write · accepted" in page
    # carol's reply notification exists for Apple clients too
    owner_notes = await web_site.dav(
        "carol", "PROPFIND", "/.davproxy/notifications/carol/", Depth="1"
    )
    assert b"-reply.xml" in owner_notes.body
    # the other way: an Apple client shares, bob declines on the page
    cs_share = (
        '<CS:share xmlns:D="DAV:" xmlns:CS="http://calendarserver.org/ns/"><CS:set>'
        "<D:href>mailto:carol@example.org</D:href><CS:summary>Apple</CS:summary><CS:read/>"
        "</CS:set></CS:share>"
    )
    sent = await web_site.dav(
        "bob", "POST", "/bob/calendar/", cs_share, Content_Type="text/xml; charset=utf-8"
    )
    assert sent.status == 200, sent.body
    _, page, _ = await carol.get("invitations")
    uid = re.search(r'name="invitation" value="([0-9a-f]{32})"', page)
    assert uid and "Bob shares “Calendar”" in page
    done = await carol.follow(
        await carol.post("answer", {"invitation": uid.group(1), "answer": "decline"})
    )
    assert "Declined the invitation from Bob" in done
    invite = await web_site.dav(
        "bob", "PROPFIND", "/bob/calendar/",
        '<D:propfind xmlns:D="DAV:" xmlns:CS="http://calendarserver.org/ns/"><D:prop><CS:invite/></D:prop></D:propfind>',
        Depth="0",
    )  # fmt: skip
    assert b"invite-declined" in invite.body


async def test_refresh_now_is_rate_limited_and_bad_addresses_are_refused(
    client_for, web_site: WebSite
) -> None:  # type: ignore[no-untyped-def]
    bob: WebClient = await client_for("bob")
    status, text, _ = await bob.post("subscribe", {"url": "ftp://example.org/x.ics", "name": "x"})
    assert status == 400 and "http://, https:// or webcal://" in text
    status, text, _ = await bob.post("subscribe", {"url": "http://10.1.2.3/x.ics", "name": "x"})
    assert status == 403 and "does not fetch from there" in text
    web_site.origin.serve("/days-off.ics", calendar(event("d@t", "Day off"), name="Days"))
    made = await bob.follow(
        await bob.post(
            "subscribe",
            {"url": "webcal" + web_site.origin.url("/days-off.ics")[4:], "name": "Days off"},
        )
    )
    assert "Subscribed: “Days off”" in made and "1 item" in made
    first = await bob.follow(await bob.post("refresh", {"subscription": "bob/days-off/"}))
    assert "Fetched" in first
    status, text, _ = await bob.post("refresh", {"subscription": "bob/days-off/"})
    assert status == 429 and "try again" in text
    assert "Days off" in await web_site.displaynames("bob")
    await bob.post("unsubscribe", {"subscription": "bob/days-off/"})
    assert "Days off" not in await web_site.displaynames("bob")


async def test_a_changed_password_ends_the_session(client_for, web_site: WebSite) -> None:  # type: ignore[no-untyped-def]
    dave: WebClient = await client_for("dave@corp")
    status, _, _ = await dave.get("")
    assert status == 200
    htpasswd = Path(web_site.proxy.folder) / ".." / "users.htpasswd"
    htpasswd = htpasswd.resolve()
    from davproxy.upstream.identity import hash_password

    original = htpasswd.read_text()
    lines = original.splitlines()
    lines = [
        f"dave@corp:{hash_password('new-pw')}" if line.startswith("dave@corp:") else line
        for line in lines
    ]
    htpasswd.write_text("\n".join(lines) + "\n")
    import asyncio

    for _ in range(40):  # davproxy looks at the file about once a second
        status, _, headers = await dave.get("")
        if status == 303:
            break
        await asyncio.sleep(0.25)
    assert status == 303 and headers["Location"].endswith("/login")
    assert await dave.login("dave@corp", "new-pw") == 303
    htpasswd.write_text(original)  # others log in as dave with the usual password


async def test_upstream_basic_mode_logs_in_with_the_upstreams_password(tmp_path: Path) -> None:
    """upstream-basic: the page checks the password as a Basic header would be (with the
    upstream) and reads the user's collections with the user's own credentials."""
    users = write_htpasswd(tmp_path / "radicale-users", plain=True)
    with (
        start_radicale(tmp_path / "radicale", auth="htpasswd", htpasswd=users) as radicale,
        start_proxy(
            tmp_path / "davproxy", upstream_url=radicale.url, kind="radicale", mode="upstream-basic"
        ) as proxy,
    ):
        async with aiohttp.ClientSession() as session:
            made = await fetch(
                session, "MKCALENDAR", proxy.url + "alice/basic-cal/", basic("alice")
            )
            assert made.status == 201
        site = WebSite(radicale, proxy, None)  # type: ignore[arg-type]
        client = WebClient(site)
        try:
            assert await client.login("alice", "wrong") == 401
            assert await client.login("alice") == 303
            assert "basic-cal" in client.last
        finally:
            await client.close()


async def test_xandikos_homes_share_and_accept(tmp_path: Path) -> None:
    """On Xandikos the homes are /<user>/calendars/ and /<user>/contacts/: the page lists
    both, and a share made and accepted on it becomes a copy in the sharee's calendar home."""
    with (
        start_xandikos(tmp_path / "xandikos") as xandikos,
        start_proxy(
            tmp_path / "davproxy", upstream_url=xandikos.url, kind="xandikos", mode="proxy-auth",
            htpasswd=write_htpasswd(tmp_path / "users.htpasswd"),
        ) as proxy,
    ):  # fmt: skip
        site = WebSite(xandikos, proxy, None)  # type: ignore[arg-type]
        for user in ("alice", "bob"):
            hello = await site.dav(user, "PROPFIND", f"/{user}/", Depth="0")
            assert hello.status == 207, hello.body
        alice, bob = WebClient(site), WebClient(site)
        try:
            assert await alice.login("alice") == 303
            listed = re.findall(r'collection\?c=([^"]+)"', alice.last)
            assert "alice/calendars/" not in listed  # the homes themselves are not listed
            assert "alice/calendars/calendar/" in listed and "alice/contacts/addressbook/" in listed
            done = await alice.follow(
                await alice.post(
                    "share",
                    {"collection": "alice/calendars/calendar/", "sharee": "bob", "access": "read"},
                )
            )
            assert "Shared with Bob" in done
            assert await bob.login("bob") == 303
            _, page, _ = await bob.get("invitations")
            uid = re.search(r'name="invitation" value="([0-9a-f]{32})"', page)
            assert uid
            done = await bob.follow(
                await bob.post(
                    "answer", {"invitation": uid.group(1), "answer": "accept", "name": "Alice's"}
                )
            )
            assert "Accepted" in done and "/bob/calendars/calendar-alice/" in done
            assert "Alice's" in await site.displaynames("bob", "/bob/calendars/")
        finally:
            await alice.close()
            await bob.close()
