"""The edge's fast lane (edge/fastlane.py) answers plain passthrough GETs byte for byte
as aiohttp's path does: the same request is sent once on the fast lane and once handed
to aiohttp (a Connection token the lane leaves to aiohttp), and the two answers, head
and body, are compared (the Date header aside)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from davproxy import config as config_mod
from davproxy.edge import fastlane
from davproxy.edge.app import create_app
from tests.helpers import basic, write_config, write_htpasswd
from tests.integration.test_proxy_behaviour import LAYOUT, echo_app

AUTH = basic("alice")["Authorization"]


async def _exchange(port: int, request: bytes) -> bytes:
    """One request on a fresh connection; the whole answer as received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = re.search(rb"\r\nContent-Length: (\d+)", head)
        if length is not None:
            body = await reader.readexactly(int(length.group(1)))
        elif b"Transfer-Encoding: chunked" in head:
            body = await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), 10)
        else:
            body = b""
    finally:
        writer.close()
    return re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: -", head + body)


async def _proxy(tmp_path: Path, upstream: TestServer) -> TestServer:
    """davproxy in proxy-auth mode in front of ``upstream``, on a loopback port."""
    main, _ = write_config(
        tmp_path,
        upstream_url=f"http://127.0.0.1:{upstream.port}/",
        kind="generic",
        mode="proxy-auth",
        htpasswd=write_htpasswd(tmp_path / "users.htpasswd"),
        mapping_extra=LAYOUT,
    )
    proxy = TestServer(create_app(config_mod.load(main)), host="127.0.0.1")
    await proxy.start_server()
    return proxy


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[tuple[int, TestServer]]:
    upstream = TestServer(echo_app(), host="127.0.0.1")
    await upstream.start_server()
    proxy = await _proxy(tmp_path, upstream)
    yield proxy.port or 0, proxy
    await proxy.close()
    await upstream.close()


def _get(path: str, *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: proxy.test", f"Authorization: {AUTH}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    "path",
    ["/alice/cal/x.ics?q=1", "/hop", "/gzip", "/created", "/unauthorized", "/drip", "/odd"],
)
async def test_fast_lane_answers_as_aiohttp_does(servers, path: str) -> None:
    port, proxy = servers
    # warm: the credential verdict is remembered, so the next GET takes the fast lane
    await _exchange(port, _get("/alice/warm"))
    fast = await _exchange(port, _get(path, "X-Custom: kept"))
    handed = await _exchange(port, _get(path, "X-Custom: kept", "Connection: keep-alive, X-Hand"))
    assert fast == handed
    assert fast.startswith(b"HTTP/1.1 ")


async def test_fast_lane_takes_plain_gets_and_hands_the_rest_over(servers) -> None:
    port, proxy = servers
    server = proxy.runner.server
    assert isinstance(server, fastlane.EdgeServer)
    await _exchange(port, _get("/alice/warm"))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_get("/alice/a.ics"))
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        await asyncio.sleep(0.05)
        assert len(server.edges) == 1  # still the lane's
        writer.write(b"PROPFIND /alice/ HTTP/1.1\r\nHost: x\r\nAuthorization: " + AUTH.encode()
                     + b"\r\nContent-Length: 0\r\n\r\n")  # fmt: skip
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert len(server.edges) == 0 and len(server.connections) == 1  # aiohttp's now
    finally:
        writer.close()


async def test_answer_of_an_upstream_without_content_type(tmp_path: Path) -> None:
    """Nothing is added that the upstream did not send: no Content-Type, no Server."""

    async def bare(request: web.Request) -> web.StreamResponse:
        response = web.Response(body=b"bare")
        response.headers.popall("Content-Type", None)
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", bare)
    upstream = TestServer(app, host="127.0.0.1")
    await upstream.start_server()
    proxy = await _proxy(tmp_path, upstream)
    try:
        await _exchange(proxy.port or 0, _get("/alice/warm"))
        fast = await _exchange(proxy.port or 0, _get("/alice/b"))
        handed = await _exchange(proxy.port or 0, _get("/alice/b", "Connection: keep-alive, X"))
    finally:
        await proxy.close()
        await upstream.close()
    assert fast == handed and fast.endswith(b"\r\n\r\nbare")
