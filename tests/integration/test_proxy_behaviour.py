"""What davproxy does to headers, prefixes and failures, seen by a real echo upstream.

The upstream here is a small aiohttp server on loopback that reports what it
received, so the tests can check exactly what davproxy forwards.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from lxml import etree

from davproxy import config as config_mod
from davproxy.edge.app import create_app
from davproxy.ops.embedded import free_port
from tests.helpers import basic, fetch, raw_session, write_config, write_htpasswd

LAYOUT = (
    '[layout]\nprincipal = "{user}/"\ncalendar_home = "{user}/"\naddressbook_home = "{user}/"\n'
)
MULTISTATUS = (
    '<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:">'
    "<D:response><D:href>{base}alice/cal/</D:href>"
    "<D:propstat><D:prop/><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>"
    "<D:response><D:href>http://{host}{base}alice/cal/a%20b.ics</D:href>"
    "<D:propstat><D:prop/><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>"
    "<D:response><D:href>/elsewhere/x</D:href>"
    "<D:propstat><D:prop/><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>"
    "</D:multistatus>"
)


def echo_app(base: str = "/") -> web.Application:
    in_flight = {"now": 0, "max": 0}

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?")[0]
        tail = path[len(base) :] if path.startswith(base) else ""
        body = await request.read()
        if tail == "stall":
            await asyncio.sleep(30)
        if tail == "drip":  # a long streamed answer: holds its connection ~1.5 s
            drip = web.StreamResponse()
            await drip.prepare(request)
            for _ in range(15):
                await drip.write(b"x" * 1000)
                await asyncio.sleep(0.1)
            await drip.write_eof()
            return drip
        if tail == "slow":
            in_flight["now"] += 1
            in_flight["max"] = max(in_flight["max"], in_flight["now"])
            await asyncio.sleep(0.1)
            in_flight["now"] -= 1
            return web.json_response(in_flight)
        if tail == "gzip":
            return web.Response(
                body=gzip.compress(b"calendar data " * 100, mtime=0),
                headers={
                    "Content-Encoding": "gzip",
                    "Content-Type": "text/calendar",
                    "ETag": '"gz"',
                },
            )
        if tail == "hop":
            response = web.Response(text="hop", headers={
                "X-Custom-Hop": "secret", "Keep-Alive": "timeout=5", "Proxy-Thing": "x",
                "ETag": '"e1"', "Set-Cookie": "a=1",
            })  # fmt: skip
            response.headers.add("Set-Cookie", "b=2")
            response.headers["Connection"] = "X-Custom-Hop"
            return response
        if tail == "created":
            host = request.headers.get("X-Test-Upstream-Host", "")
            return web.Response(
                status=201,
                headers={
                    "Location": f"http://{request.host}{base}alice/cal/new.ics",
                    "Content-Location": f"{base}alice/cal/new.ics",
                    "X-Seen-Host": host,
                },
            )
        if tail.endswith("multistatus"):
            text = MULTISTATUS.format(base=base, host=request.host)
            return web.Response(status=207, text=text, content_type="application/xml")
        if tail == "unauthorized":
            return web.Response(
                status=401, text="nope", headers={"WWW-Authenticate": 'Basic realm="Up"'}
            )
        report = {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode("utf-8", "replace"),
        }
        return web.json_response(report, status=299 if tail == "odd" else 200)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


Proxy = Callable[..., Awaitable[str]]


@pytest.fixture
async def upstream_server() -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    servers: list[TestServer] = []

    async def start(base: str = "/") -> str:
        server = TestServer(echo_app(base), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}{base}"

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[Proxy]:
    """Start davproxy in-process on a real loopback port; returns its base URL."""
    servers: list[TestServer] = []

    async def start(upstream_url: str, **kwargs: object) -> str:
        kwargs.setdefault("kind", "generic")
        kwargs.setdefault("mode", "proxy-auth")
        if kwargs["mode"] == "proxy-auth":
            kwargs.setdefault("htpasswd", write_htpasswd(tmp_path / "users.htpasswd"))
        if kwargs["kind"] == "generic":
            kwargs["mapping_extra"] = str(kwargs.get("mapping_extra", "")) + LAYOUT
        main, _ = write_config(
            tmp_path / f"proxy{len(servers)}", upstream_url=upstream_url, **kwargs
        )  # type: ignore[arg-type]
        server = TestServer(create_app(config_mod.load(main)), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        await server.close()


def seen(answer_body: bytes) -> dict[str, object]:
    return json.loads(answer_body)


def header(report: dict[str, object], name: str) -> list[str]:
    return [v for k, v in report["headers"] if k.lower() == name.lower()]  # type: ignore[union-attr]


async def test_hop_by_hop_and_identity_headers_are_not_forwarded(upstream_server, proxy) -> None:
    base = await proxy(await upstream_server())
    async with raw_session() as session:
        answer = await fetch(session, "PROPFIND", base + "/alice/cal/", {
            **basic("alice"),
            "Connection": "keep-alive, X-Private",
            "X-Private": "drop me",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Upgrade": "h2c",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "X-Remote-User": "bob",
            "X_Remote_User": "bob",
            "X-Script-Name": "/evil",
            "X-Forwarded-For": "10.9.9.9",
            "Depth": "1",
            "X-Custom": "kept",
        }, "<x/>")  # fmt: skip
    assert answer.status == 200
    report = seen(answer.body)
    for name in ("X-Private", "Keep-Alive", "TE", "Upgrade", "Proxy-Authorization",
                 "X-Script-Name", "X_Remote_User", "Authorization"):  # fmt: skip
        assert header(report, name) == [], name
    # The trusted header carries the verified user, never the client's claim.
    assert header(report, "X-Remote-User") == ["alice"]
    assert header(report, "Depth") == ["1"] and header(report, "X-Custom") == ["kept"]
    # An untrusted client's X-Forwarded-For is replaced, not extended.
    assert header(report, "X-Forwarded-For") == ["127.0.0.1"]
    assert header(report, "X-Forwarded-Proto") == ["http"]
    assert header(report, "X-Forwarded-Host") == [base.removeprefix("http://")]
    assert header(report, "Host") == [base.removeprefix("http://")]
    # Nothing added that the client did not send.
    for name in ("User-Agent", "Accept", "Accept-Encoding", "Content-Type"):
        assert header(report, name) == [], name
    assert report["method"] == "PROPFIND" and report["body"] == "<x/>"


async def test_response_hop_by_hop_removed_rest_kept(upstream_server, proxy) -> None:
    base = await proxy(await upstream_server())
    async with raw_session() as session:
        answer = await fetch(session, "GET", base + "/hop", basic("alice"))
    assert answer.status == 200 and answer.body == b"hop"
    assert answer.header("X-Custom-Hop") is None and answer.header("Proxy-Thing") is None
    assert answer.header("Keep-Alive") is None
    assert answer.header("ETag") == '"e1"'
    assert answer.headers["set-cookie"] == ["a=1", "b=2"]


async def test_gzip_passes_encoded_with_etag(upstream_server, proxy) -> None:
    base = await proxy(await upstream_server())
    async with raw_session() as session:
        answer = await fetch(
            session, "GET", base + "/gzip", {**basic("alice"), "Accept-Encoding": "gzip"}
        )
    assert answer.header("Content-Encoding") == "gzip" and answer.header("ETag") == '"gz"'
    assert answer.body == gzip.compress(b"calendar data " * 100, mtime=0)


async def test_unusual_status_and_extension_method_pass(upstream_server, proxy) -> None:
    base = await proxy(await upstream_server())
    async with raw_session() as session:
        answer = await fetch(session, "ORDERPATCH", base + "/odd?x=%2F&y=1", basic("alice"), "b")
    assert answer.status == 299
    report = seen(answer.body)
    assert report["method"] == "ORDERPATCH" and report["raw_path"] == "/odd?x=%2F&y=1"


async def _raw_exchange(port: int, *requests: bytes, together: bool = False) -> list[bytes]:
    """Requests on one keep-alive connection (all in one write when ``together``); the
    answers' bodies, read by Content-Length."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    bodies = []
    try:
        if together:
            writer.write(b"".join(requests))
        for request in requests:
            if not together:
                writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status = int(head.split(b" ", 2)[1])
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            bodies.append(str(status).encode() + b" " + await reader.readexactly(length))
    finally:
        writer.close()
    return bodies


def _request(method: str, path: str, body: bytes = b"") -> bytes:
    auth = basic("alice")["Authorization"]
    return (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@pytest.mark.parametrize("together", [False, True], ids=["one-by-one", "pipelined"])
async def test_extension_method_after_known_ones_on_one_connection(
    upstream_server, proxy, together
) -> None:
    """The C parser refuses methods it does not know; the connection then switches to
    the tolerant parser without losing a request before or after."""
    base = await proxy(await upstream_server())
    port = int(base.rsplit(":", 1)[1])
    first, odd, after = await _raw_exchange(
        port,
        _request("PUT", "/alice/one", b"first"),
        _request("ORDERPATCH", "/odd", b"<x/>"),
        _request("GET", "/alice/two"),
        together=together,
    )
    assert first.startswith(b"200 ") and seen(first[4:])["body"] == "first"
    assert odd.startswith(b"299 ")
    assert seen(odd[4:])["method"] == "ORDERPATCH" and seen(odd[4:])["body"] == "<x/>"
    assert after.startswith(b"200 ") and seen(after[4:])["raw_path"] == "/alice/two"


async def test_bad_method_token_still_refused(upstream_server, proxy) -> None:
    base = await proxy(await upstream_server())
    port = int(base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GE(T / HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.read(100), 10)
    writer.close()
    assert head.split(b" ", 2)[1] == b"400"


async def test_upstream_401_reaches_client_unchanged_in_upstream_basic(
    upstream_server, proxy
) -> None:
    base = await proxy(await upstream_server(), mode="upstream-basic")
    async with raw_session() as session:
        answer = await fetch(session, "GET", base + "/unauthorized")
        forwarded = await fetch(session, "GET", base + "/alice/x", basic("alice", "whatever"))
    assert answer.status == 401 and answer.body == b"nope"
    assert answer.header("WWW-Authenticate") == 'Basic realm="Up"'
    # upstream-basic passthrough forwards the client's credentials for the upstream to judge.
    assert header(seen(forwarded.body), "Authorization") == [
        basic("alice", "whatever")["Authorization"]
    ]


async def test_proxy_auth_challenges_and_refuses_wrong_passwords(upstream_server, proxy) -> None:
    base = await proxy(await upstream_server())
    async with raw_session() as session:
        missing = await fetch(session, "PROPFIND", base + "/alice/")
        wrong = await fetch(session, "PROPFIND", base + "/alice/", basic("alice", "wrong"))
        unknown = await fetch(session, "PROPFIND", base + "/alice/", basic("mallory", "x"))
        bad_id = await fetch(session, "PROPFIND", base + "/alice/", basic("../alice", "alice-pw"))
        options = await fetch(session, "OPTIONS", base + "/alice/")
    for answer in (missing, wrong, unknown, bad_id):
        assert answer.status == 401
        assert answer.header("WWW-Authenticate") == 'Basic realm="davproxy", charset="UTF-8"'
    # Discovery before login still works, anonymously (no identity header).
    assert options.status == 200 and header(seen(options.body), "X-Remote-User") == []


async def test_rewrite_mode_maps_prefixes_both_ways(upstream_server, proxy) -> None:
    upstream = await upstream_server("/up/")
    base = await proxy(upstream, prefix="/dav/")
    async with raw_session() as session:
        report = seen(
            (await fetch(session, "GET", base + "/dav/alice/cal/?q=1", basic("alice"))).body
        )
        assert report["raw_path"] == "/up/alice/cal/?q=1"
        moved = await fetch(session, "MOVE", base + "/dav/alice/cal/a.ics", {
            **basic("alice"), "Destination": base + "/dav/alice/cal/b%20c.ics"})  # fmt: skip
        assert header(seen(moved.body), "Destination") == [base + "/up/alice/cal/b%20c.ics"]
        body = (
            '<C:calendar-multiget xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
            "<D:href>/dav/alice/cal/a.ics</D:href><D:href>/dav/alice/cal/b%40x.ics</D:href>"
            "</C:calendar-multiget>"
        )
        multiget = await fetch(session, "REPORT", base + "/dav/alice/cal/", {
            **basic("alice"), "Content-Type": "application/xml"}, body)  # fmt: skip
        sent = seen(multiget.body)["body"]
        assert "<D:href>/up/alice/cal/a.ics</D:href>" in sent  # type: ignore[operator]
        assert "<D:href>/up/alice/cal/b%40x.ics</D:href>" in sent  # type: ignore[operator]
        listing = await fetch(session, "PROPFIND", base + "/dav/alice/multistatus", basic("alice"))
        assert listing.status == 207
        assert b"<D:href>/dav/alice/cal/</D:href>" in listing.body
        assert f"<D:href>{base}/dav/alice/cal/a%20b.ics</D:href>".encode() in listing.body
        assert b"<D:href>/elsewhere/x</D:href>" in listing.body
        created = await fetch(session, "PUT", base + "/dav/created", basic("alice"), "x")
        assert created.status == 201
        assert created.header("Location") == base + "/dav/alice/cal/new.ics"
        assert created.header("Content-Location") == "/dav/alice/cal/new.ics"
        outside = await fetch(session, "GET", base + "/other/", basic("alice"))
        assert outside.status == 404
        well_known = await fetch(session, "GET", base + "/.well-known/caldav")
        assert well_known.status == 301 and well_known.header("Location") == "/dav/"


async def test_own_namespace_never_reaches_upstream(upstream_server, proxy) -> None:
    base = await proxy(await upstream_server())
    async with raw_session() as session:
        anonymous = await fetch(session, "GET", base + "/.davproxy/whoami")
        who = await fetch(session, "GET", base + "/.davproxy/whoami", basic("bob"))
        unknown = await fetch(session, "PROPFIND", base + "/.davproxy/anything", basic("bob"))
        wrong_method = await fetch(session, "DELETE", base + "/.davproxy/whoami", basic("bob"))
    assert anonymous.status == 401
    assert who.status == 200
    assert json.loads(who.body) == {
        "user": "bob", "upstream": "up", "identity_mode": "proxy-auth",
        "principal": "/bob/", "calendar_home": "/bob/", "addressbook_home": "/bob/",
    }  # fmt: skip
    assert unknown.status == 404 and b"davproxy" in unknown.body
    assert wrong_method.status == 405 and wrong_method.header("Allow") == "GET, HEAD"


async def test_upstream_down_gives_502_quickly(proxy) -> None:
    base = await proxy(f"http://127.0.0.1:{free_port()}/")
    async with raw_session() as session:
        started = time.monotonic()
        answer = await fetch(session, "GET", base + "/alice/cal/", basic("alice"))
    assert answer.status == 502
    assert answer.header(
        "Content-Type",
    ).startswith("text/plain")  # type: ignore[union-attr]
    assert b"unreachable" in answer.body
    assert time.monotonic() - started < 5


async def test_upstream_stalled_gives_504_in_bounded_time(upstream_server, proxy) -> None:
    base = await proxy(await upstream_server(), server_extra="upstream_timeout = 0.5")
    async with raw_session() as session:
        started = time.monotonic()
        answer = await fetch(session, "GET", base + "/stall", basic("alice"))
        elapsed = time.monotonic() - started
    assert answer.status == 504 and b"did not answer in time" in answer.body
    assert 0.4 < elapsed < 5


async def test_upstream_garbage_gives_502(proxy) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"this is not HTTP at all\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        base = await proxy(f"http://127.0.0.1:{port}/")
        async with raw_session() as session:
            answer = await fetch(session, "GET", base + "/alice/", basic("alice"))
    finally:
        server.close()
        await server.wait_closed()
    assert answer.status == 502 and b"invalid or broken" in answer.body


async def test_chunked_request_body_is_sent_with_length(upstream_server, proxy) -> None:
    """Radicale's HTTP/1.0 server cannot read chunked bodies: davproxy sends a length."""
    base = await proxy(await upstream_server())

    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"BEGIN:", b"VCALENDAR", b"\r\n"):
            yield part

    async with (
        raw_session() as session,
        session.put(base + "/alice/cal/x.ics", data=chunks(), headers=basic("alice")) as r,
    ):
        report = json.loads(await r.read())
    assert header(report, "Transfer-Encoding") == []
    assert header(report, "Content-Length") == ["17"] and report["body"] == "BEGIN:VCALENDAR\r\n"


@pytest.mark.parametrize("length", [2_000_000, 100_000])
async def test_upstream_breaking_off_mid_body_is_never_a_complete_answer(
    proxy, caplog, length
) -> None:
    """Large answers stream: the head is already sent, so the client sees a cut answer.
    Small answers are read whole first: the client gets a clean 502."""

    async def truncating(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = f'HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nETag: "t"\r\n\r\n'
        writer.write(head.encode() + b"x" * 5000)
        await writer.drain()
        writer.transport.abort()

    server = await asyncio.start_server(truncating, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        base = await proxy(f"http://127.0.0.1:{port}/")
        async with raw_session() as session:
            async with session.get(base + "/alice/cal/big.ics", headers=basic("alice")) as r:
                if length > 256 * 1024:
                    assert r.status == 200 and r.headers["ETag"] == '"t"'
                    with pytest.raises(aiohttp.ClientPayloadError):
                        await r.read()
                else:
                    assert r.status == 502 and b"broke off" in await r.read()
            # davproxy itself is unharmed and serves the next request
            who = await fetch(session, "GET", base + "/.davproxy/whoami", basic("alice"))
            assert who.status == 200
    finally:
        server.close()
        await server.wait_closed()
    assert "broke off" in caplog.text
    assert "Traceback" not in caplog.text and "unhandled" not in caplog.text


async def test_upstream_concurrency_is_capped_and_queued(upstream_server, proxy) -> None:
    base = await proxy(await upstream_server(), upstream_extra="max_connections = 2")
    async with raw_session() as session:
        answers = await asyncio.gather(
            *(fetch(session, "GET", base + "/slow", basic("alice")) for _ in range(8))
        )
    assert [a.status for a in answers] == [200] * 8
    assert max(json.loads(a.body)["max"] for a in answers) == 2


async def test_saturated_upstream_gives_504_not_a_hang(upstream_server, proxy) -> None:
    base = await proxy(
        await upstream_server(),
        upstream_extra="max_connections = 1",
        server_extra="upstream_timeout = 0.5",
    )
    async with raw_session() as session:
        dripping = asyncio.create_task(fetch(session, "GET", base + "/drip", basic("alice")))
        await asyncio.sleep(0.2)  # the drip holds the only upstream connection now
        started = time.monotonic()
        queued = await fetch(session, "GET", base + "/alice/", basic("alice"))
        waited = time.monotonic() - started
        drip = await dripping
    assert queued.status == 504 and b"saturated" in queued.body
    assert 0.4 < waited < 1.4
    assert drip.status == 200 and len(drip.body) == 15_000


@pytest.mark.parametrize(
    "path",
    [
        "/alice/cal/../private/e.ics",
        "/alice/cal/%2e%2e/private/e.ics",
        "/alice/cal/%2E%2e/private/e.ics",
        "/alice/cal/..%2fprivate/e.ics",
        "/alice/cal/..%5Cprivate/e.ics",
        "/alice/.//cal/",
        "/alice/./cal/",
        "/x/../.davproxy/whoami",
        "/alice/cal/%00.ics",
        "/alice/cal/%ff.ics",
        "/alice/cal/a%0ab.ics",
    ],
)
async def test_paths_the_upstream_could_reinterpret_are_refused(
    upstream_server, proxy, path
) -> None:
    base = await proxy(await upstream_server())
    async with raw_session() as session:
        answer = await fetch(session, "GET", base + path, basic("alice"))
        moved = await fetch(session, "MOVE", base + "/alice/cal/a.ics", {
            **basic("alice"), "Destination": base + path})  # fmt: skip
    assert answer.status == 400 and b"Path not accepted" in answer.body
    assert moved.status == 400 and b"Path not accepted" in moved.body


@pytest.mark.parametrize(
    "path, forwarded",
    [
        ("/alice/cal//e.ics", "/alice/cal/e.ics"),
        ("/alice/cal//", "/alice/cal/"),
        ("//alice///cal/e.ics?x=1", "/alice/cal/e.ics?x=1"),
        ("/alice/cal/e.ics//", "/alice/cal/e.ics/"),
        ("/alice%40x//caf%C3%A9/", "/alice%40x/caf%C3%A9/"),
    ],
)
async def test_empty_segments_are_forwarded_collapsed(
    upstream_server, proxy, path: str, forwarded: str
) -> None:
    """'//' is tolerated as Radicale and Xandikos tolerate it: the upstream receives the
    path (and Destination) in the one form both resolve it to, encoding kept."""
    base = await proxy(await upstream_server())
    async with raw_session() as session:
        answer = await fetch(session, "GET", base + path, basic("alice"))
        moved = await fetch(session, "MOVE", base + "/alice/cal/a.ics", {
            **basic("alice"), "Destination": base + path})  # fmt: skip
    assert answer.status == 200 and seen(answer.body)["raw_path"] == forwarded
    assert header(seen(moved.body), "Destination") == [base + forwarded]


async def test_odd_passwords_are_wrong_passwords_not_errors(upstream_server, proxy) -> None:
    base = await proxy(await upstream_server())
    async with raw_session() as session:
        for password in ("a\0b", "x" * 5000, "ü" * 80):
            answer = await fetch(session, "GET", base + "/alice/", basic("alice", password))
            assert answer.status == 401, password


async def test_nothing_added_to_an_answer_without_content_type(proxy) -> None:
    async def bare(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbare")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(bare, "127.0.0.1", 0)
    try:
        base = await proxy(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/")
        async with raw_session() as session:
            answer = await fetch(session, "GET", base + "/bare", basic("alice"))
    finally:
        server.close()
        await server.wait_closed()
    assert answer.status == 200 and answer.body == b"bare"
    assert answer.header("Content-Type") is None and answer.header("Server") is None


async def test_malformed_host_is_no_server_error(upstream_server, proxy) -> None:
    base = await proxy(await upstream_server("/up/"), prefix="/dav/")
    async with raw_session() as session:
        answer = await fetch(
            session, "PUT", base + "/dav/created", {**basic("alice"), "Host": "a:b:c"}, "x"
        )
    assert answer.status < 500


async def test_health_readiness_and_metrics(upstream_server, proxy, tmp_path) -> None:
    base = await proxy(await upstream_server())
    async with raw_session() as session:
        await fetch(session, "GET", base + "/alice/cal/x.ics", basic("alice"))
        health = await fetch(session, "GET", base + "/.davproxy/healthz")
        ready = await fetch(session, "GET", base + "/.davproxy/readyz")
        metrics = await fetch(session, "GET", base + "/.davproxy/metrics")
    assert health.status == 200 and health.body.startswith(b"ok (single process, pid ")
    assert ready.status == 200 and b"store ok" in ready.body and b"upstream up ok" in ready.body
    assert metrics.status == 200 and metrics.header("Content-Type").startswith("text/plain")
    text = metrics.body.decode()
    assert 'davproxy_requests_total{method="GET",route="passthrough",status="200"} 1.0' in text
    assert 'davproxy_upstream_duration_seconds_count{upstream="up"}' in text
    assert 'davproxy_relayed_bytes_total{upstream="up"}' in text
    assert "# TYPE davproxy_shares gauge" in text


async def test_readiness_fails_when_the_upstream_is_down(proxy) -> None:
    base = await proxy(f"http://127.0.0.1:{free_port()}/")
    async with raw_session() as session:
        ready = await fetch(session, "GET", base + "/.davproxy/readyz")
        health = await fetch(session, "GET", base + "/.davproxy/healthz")
    assert ready.status == 503 and b"upstream up FAILED" in ready.body
    assert health.status == 200


async def test_metrics_limited_to_networks_or_token(upstream_server, proxy, tmp_path) -> None:
    token = tmp_path / "metrics.token"
    token.write_text("s3cret\n")
    extra = f'[monitoring]\nallow = ["10.99.0.0/16"]\ntoken_file = "{token}"\n'
    base = await proxy(await upstream_server(), server_extra=extra)
    async with raw_session() as session:
        refused = await fetch(session, "GET", base + "/.davproxy/metrics")
        wrong = await fetch(
            session, "GET", base + "/.davproxy/metrics", {"Authorization": "Bearer nope"}
        )
        allowed = await fetch(
            session, "GET", base + "/.davproxy/metrics", {"Authorization": "Bearer s3cret"}
        )
    assert refused.status == wrong.status == 403
    assert allowed.status == 200 and b"davproxy_requests_total" in allowed.body


def privileges_app() -> web.Application:
    """An upstream that lists supported privileges and has a scheduling inbox inside the
    calendar home (as CalendarServer lays homes out)."""
    kinds = {
        "/alice/cal/": "<D:collection/><C:calendar/>",
        "/alice/inbox/": "<D:collection/><C:schedule-inbox/>",
    }

    async def handle(request: web.Request) -> web.Response:
        rows = "".join(
            f"<D:response><D:href>{path}</D:href><D:propstat><D:prop>"
            f"<D:resourcetype>{kind}</D:resourcetype>"
            "<D:current-user-privilege-set><D:privilege><D:all/></D:privilege>"
            "</D:current-user-privilege-set><D:supported-privilege-set><D:supported-privilege>"
            "<D:privilege><D:all/></D:privilege><D:description>All</D:description>"
            "<D:supported-privilege><D:privilege><D:read/></D:privilege><D:description>Read"
            "</D:description></D:supported-privilege></D:supported-privilege>"
            "</D:supported-privilege-set></D:prop><D:status>HTTP/1.1 200 OK</D:status>"
            "</D:propstat></D:response>"
            for path, kind in kinds.items()
            if path == request.path or request.headers.get("Depth") == "1"
        )
        body = (
            '<D:multistatus xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
            f"{rows}</D:multistatus>"
        )
        return web.Response(status=207, text=body, content_type="application/xml")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def test_sharing_privileges_join_an_upstreams_own_and_skip_what_is_no_collection(
    proxy,
) -> None:
    """D:share joins the supported-privilege-set an upstream lists itself (once, the
    upstream's entries kept); a schedule inbox inside the calendar home, known by its
    resourcetype, is offered no sharing at all."""
    server = TestServer(privileges_app(), host="127.0.0.1")
    await server.start_server()
    try:
        base = await proxy(f"http://127.0.0.1:{server.port}/")
        body = (
            '<D:propfind xmlns:D="DAV:" xmlns:CS="http://calendarserver.org/ns/"><D:prop>'
            "<D:resourcetype/><D:current-user-privilege-set/><D:supported-privilege-set/>"
            "<CS:allowed-sharing-modes/></D:prop></D:propfind>"
        )
        async with raw_session() as session:
            answer = await fetch(session, "PROPFIND", base + "/alice/",
                                 {**basic("alice"), "Depth": "1"}, body)  # fmt: skip
    finally:
        await server.close()
    ns = {"D": "DAV:", "CS": "http://calendarserver.org/ns/"}
    responses = {
        r.findtext("D:href", namespaces=ns): r
        for r in etree.fromstring(answer.body).findall("D:response", ns)
    }
    cal, inbox = responses["/alice/cal/"], responses["/alice/inbox/"]
    supported = cal.findall(".//D:supported-privilege-set//D:privilege/*", ns)
    assert [etree.QName(p).localname for p in supported] == ["all", "read", "share"]
    assert cal.find(".//D:current-user-privilege-set/D:privilege/D:share", ns) is not None
    assert cal.find(".//CS:allowed-sharing-modes/CS:can-be-shared", ns) is not None
    assert inbox.find(".//D:privilege/D:share", ns) is None
    assert inbox.find(".//CS:allowed-sharing-modes/CS:can-be-shared", ns) is None
