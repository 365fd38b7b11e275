"""Streaming forward of one request to an upstream, and its answer back to the client.

Passthrough must be invisible (DESIGN.md): the upstream's status, reason, body bytes
and headers reach the client unchanged apart from hop-by-hop headers (RFC 9110 §7.6.1).
Bodies are streamed both ways; Content-Encoding is never undone.  Only when the public
prefix differs from the upstream's and the upstream cannot be told the public prefix
(``href_mapping = "rewrite"``) are hrefs in XML bodies and URL headers mapped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from lxml import etree
from multidict import CIMultiDict, CIMultiDictProxy

from davproxy.dav import davxml, textedit
from davproxy.dav.errors import DavError, PlainError
from davproxy.dav.http import CHUNK, read_body
from davproxy.upstream.client import Upstream

log = logging.getLogger("davproxy.proxy")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "expect",  # aiohttp answers 100-continue to the client itself
    }
)
# Names of the headers the upstream sent, so defaults aiohttp adds can be taken back.
UPSTREAM_HEADER_NAMES = web.RequestKey("upstream_header_names", frozenset)
UPSTREAM_SECONDS = web.RequestKey("upstream_seconds", float)
_DEFAULTED_BY_AIOHTTP = ("Content-Type", "Server")
# Answers up to this size are read whole and sent in one write.
SMALL_ANSWER = 256 * 1024
# XML answers are buffered for href mapping up to this size; larger ones pass as they are.
MAX_MAPPED_RESPONSE = 64 * 1024 * 1024
# Methods whose request bodies may carry hrefs (calendar-multiget, addressbook-multiget).
_HREF_BODY_METHODS = frozenset({"REPORT"})


def hop_by_hop_names(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    names = set(HOP_BY_HOP)
    for value in headers.getall("Connection", []):
        names.update(token.strip().lower() for token in value.split(",") if token.strip())
    return names


def end_to_end(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], also_drop: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """Copy headers without hop-by-hop ones (including Proxy-* and Connection-named)."""
    drop = hop_by_hop_names(headers) | also_drop
    result: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in drop or lower.startswith("proxy-"):
            continue
        result.add(name, value)
    return result


HrefMap = Callable[[str], str]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Forward:
    """What to send where: the decisions a route made before forwarding.

    Plain passthrough sets only the target.  Routes that change what the client sees
    add mappings (hrefs between URL spaces) and an XML edit (properties davproxy owns);
    the answer is then read whole (up to MAX_MAPPED_RESPONSE) instead of streamed.
    """

    upstream: Upstream
    path: str  # upstream path, percent-encoded, with query string
    set_headers: dict[str, str] = field(default_factory=dict)
    drop_headers: frozenset[str] = frozenset()  # lower-case names
    request_hrefs: HrefMap | None = None  # client href -> upstream (Destination, REPORT)
    response_hrefs: HrefMap | None = None  # upstream href -> client (Location, XML bodies)
    # on XML answers, after mapping; may await what it adds (fetched meanwhile)
    edit_xml: Callable[[bytes], bytes | Awaitable[bytes]] | None = None
    # an edit of a 207 answer as parsed, hrefs already mapped: parsed and written once
    edit_tree: Callable[[etree._Element], None] | None = None
    # the same edit, href mapping included, on the text of an answer the parser accepted
    # (dav/textedit.py); raises textedit.Unsupported outside its subset: then edit_tree
    edit_text: Callable[[etree._Element, bytes], bytes] | None = None
    body: bytes | None = None  # a request body the route has already read
    body_mapped: bool = False  # ... with its hrefs mapped already (request_hrefs)
    strict_bodies: bool = False  # a body whose hrefs cannot be mapped is refused (400)
    dav_tokens: tuple[str, ...] = ()  # feature tokens added to the DAV header
    #: headers to add, chosen from the upstream's status and headers (Link on .ics exports)
    add_headers: Callable[[int, Mapping[str, str]], dict[str, str]] | None = None

    @property
    def edits_answers(self) -> bool:
        return (
            self.response_hrefs is not None
            or self.edit_xml is not None
            or self.edit_tree is not None
        )


def _trusted_peer(request: web.Request, allowed: tuple[str, ...]) -> bool:
    peer = request.remote
    return bool(peer and allowed) and _in_networks(peer or "", allowed)


@functools.lru_cache(maxsize=64)
def _networks(
    allowed: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for entry in allowed:
        with contextlib.suppress(ValueError):
            networks.append(ipaddress.ip_network(entry, strict=False))
    return tuple(networks)


@functools.lru_cache(maxsize=4096)  # a handful of peers ask on every request
def _in_networks(address: str, allowed: tuple[str, ...]) -> bool:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in _networks(allowed))


def client_address(request: web.Request, allowed: tuple[str, ...]) -> str:
    """The address of the client, for logs and login throttling.

    The TCP peer, unless it is a trusted front (``forwarded_allow_ips``): then the
    ``X-Forwarded-For`` entries are read from the right, each written by the hop before,
    and the first one that is not itself a trusted front is the client.  An entry that is
    not an IP address ends the walk at the last address that was one: only trusted fronts
    can put anything to the right of the client, so a client cannot choose what is logged.
    """
    peer = request.remote or "-"
    if not _trusted_peer(request, allowed):
        return peer
    client = peer
    for value in reversed(request.headers.getall("X-Forwarded-For", [])):
        for entry in reversed(value.split(",")):
            candidate = entry.strip().strip("[]")
            try:
                client = str(ipaddress.ip_address(candidate))
            except ValueError:
                return client
            if not _in_networks(client, allowed):
                return client
    return client


def public_origin(request: web.Request, allowed: tuple[str, ...]) -> str:
    """Scheme and host as the client sees them (a trusted TLS front may tell us)."""
    scheme, host = request.scheme, request.host
    if _trusted_peer(request, allowed):
        scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip()
        host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
    return f"{scheme}://{host}"


def forwarded_headers(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    peer = request.remote or "unknown"
    trusted = _trusted_peer(request, allowed)
    prior = request.headers.get("X-Forwarded-For") if trusted else None
    headers = {
        "X-Forwarded-For": f"{prior}, {peer}" if prior else peer,
        "X-Forwarded-Host": request.host,
        "X-Forwarded-Proto": request.scheme,
    }
    if trusted:
        for name in ("X-Forwarded-Host", "X-Forwarded-Proto"):
            if name in request.headers:
                headers[name] = request.headers[name]
    return headers


async def _stream_request_body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(CHUNK):
        yield chunk


async def forward(
    request: web.Request, spec: Forward, max_body: int, allowed: tuple[str, ...]
) -> web.StreamResponse:
    upstream = spec.upstream
    # Host is kept as the client sent it: upstreams compare it with absolute
    # Destination URLs (Xandikos refuses a "cross-server" MOVE otherwise) and build
    # absolute URLs from it.
    drop = spec.drop_headers | {"content-length"}
    if spec.edits_answers:
        drop |= {"accept-encoding"}  # an answer davproxy edits must not come compressed
    headers = end_to_end(request.headers, frozenset(drop))
    headers.update(forwarded_headers(request, allowed))
    headers.update(spec.set_headers)

    if spec.request_hrefs is not None and "Destination" in headers:
        headers["Destination"] = spec.request_hrefs(headers["Destination"])

    data: bytes | AsyncIterator[bytes] | None = spec.body
    if data is None and request.body_exists:
        chunked = request.content_length is None
        if chunked or _maps_body(request, spec):
            # Radicale's HTTP/1.0 server cannot read chunked bodies, and a mapped body
            # changes length: both need the whole body (under the cap) first.
            data = await read_body(request, max_body)
        else:
            headers["Content-Length"] = str(request.content_length)
            data = _stream_request_body(request)
    elif data is None and request.content_length == 0 and "Content-Length" in request.headers:
        headers["Content-Length"] = "0"
    if isinstance(data, bytes):
        if spec.request_hrefs is not None and _maps_body(request, spec) and not spec.body_mapped:
            data = _map_body(data, spec.request_hrefs, spec.strict_bodies)
        headers["Content-Length"] = str(len(data))

    started = time.perf_counter()
    async with upstream.request(request.method, spec.path, headers, data) as answer:
        request[UPSTREAM_SECONDS] = time.perf_counter() - started  # for the access line
        relayed = await _relay(request, answer, spec)
    if isinstance(relayed, _Read):
        # edited with the upstream's connection slot given back: an edit may ask the
        # upstream again (a sharee's home lists its copies' owners), and waiting for a
        # slot while holding one deadlocks as soon as the slots are all so held
        return await _finish(relayed, spec)
    return relayed


@dataclass(slots=True)
class _Read:
    """An answer read whole inside the upstream's slot, to be finished outside it."""

    status: int
    reason: str | None
    headers: CIMultiDict[str]
    body: bytes
    edit: bool  # read to be edited (else: small, sent as one write)


async def _finish(read: _Read, spec: Forward) -> web.Response:
    body = read.body
    if read.edit:
        if spec.edit_tree is not None and read.status == 207:
            body = _edit_tree(body, spec)
        elif spec.response_hrefs is not None:
            body = _map_body(body, spec.response_hrefs)
        if spec.edit_xml is not None and read.status == 207:
            edited = spec.edit_xml(body)
            body = await edited if inspect.isawaitable(edited) else edited
    if spec.upstream.on_bytes is not None:
        spec.upstream.on_bytes(len(body))
    return web.Response(status=read.status, reason=read.reason, headers=read.headers, body=body)


def _maps_body(request: web.Request, spec: Forward) -> bool:
    """REPORT bodies carry hrefs; whatever their declared type, they are mapped (a
    client must not slip an unmapped href past davproxy by mislabelling the body)."""
    return spec.request_hrefs is not None and request.method in _HREF_BODY_METHODS


def _map_body(body: bytes, mapper: HrefMap, strict: bool = False) -> bytes:
    try:
        return davxml.map_hrefs(body, mapper)
    except davxml.XmlError as exc:
        if strict:  # the request acts as someone else: unmapped hrefs must not pass
            raise DavError(400, None, f"Unusable XML body: {exc}") from None
        return body  # not ours to judge: the upstream answers malformed bodies itself


async def _relay(
    request: web.Request, answer: aiohttp.ClientResponse, spec: Forward
) -> web.StreamResponse | _Read:
    headers = end_to_end(answer.headers, frozenset({"content-length"}))
    request[UPSTREAM_HEADER_NAMES] = frozenset(name.lower() for name in headers)
    if spec.dav_tokens and "DAV" in headers:
        headers["DAV"] = ", ".join([headers["DAV"], *spec.dav_tokens])
    if spec.add_headers is not None:
        headers.update(spec.add_headers(answer.status, headers))
    body: bytes | None = None
    if spec.response_hrefs is not None:
        for name in ("Location", "Content-Location"):
            if name in headers:
                headers[name] = spec.response_hrefs(headers[name])
    prefix = b""
    if (
        spec.edits_answers
        and davxml.is_xml_content_type(answer.headers.get("Content-Type", ""))
        and "Content-Encoding" not in answer.headers
        and request.method != "HEAD"
    ):
        prefix, complete = await _read_capped(answer, MAX_MAPPED_RESPONSE)
        if complete:
            body, prefix = prefix, b""
        else:
            log.warning(
                "answer to %s %s is over %d bytes: passed on without href mapping",
                request.method,
                request.path,
                MAX_MAPPED_RESPONSE,
            )
    if body is not None:
        return _Read(answer.status, answer.reason, headers, body, edit=True)

    has_body = request.method != "HEAD" and answer.status not in (204, 304)
    counted = spec.upstream.on_bytes
    if has_body and answer.content_length is not None and answer.content_length <= SMALL_ANSWER:
        # Small answers go out as one write (head and body together): fewer syscalls,
        # and a body the upstream breaks off still becomes a clean 502.
        return _Read(answer.status, answer.reason, headers, await _read_answer(answer), False)

    response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
    if answer.content_length is not None:
        response.content_length = answer.content_length
    await response.prepare(request)
    if prefix:
        await response.write(prefix)
    if has_body and not await _pump(
        request, answer, response, spec.upstream.name, spec.upstream.read_timeout, counted
    ):
        _abort(request)
        return response
    await response.write_eof()
    return response


def _edit_tree(body: bytes, spec: Forward) -> bytes:
    """Map hrefs and edit in one parse of the answer (not XML: passed on as it is); on
    the text when the edit can be done there (no elements walked)."""
    assert spec.edit_tree is not None
    try:
        root = davxml.parse(body)
    except davxml.XmlError:
        return body  # not ours to judge: the upstream's answer as it is
    if spec.edit_text is not None:
        with contextlib.suppress(textedit.Unsupported):
            return spec.edit_text(root, body)
    if spec.response_hrefs is not None:
        davxml.map_tree_hrefs(root, spec.response_hrefs)
    spec.edit_tree(root)
    declaration = body.lstrip().startswith(b"<?xml")
    return etree.tostring(root, xml_declaration=declaration, encoding="utf-8")


async def _read_capped(answer: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bool]:
    """Up to ``cap`` bytes of the answer, and whether that was all of it."""
    if answer.content_length is not None and answer.content_length > cap:
        return b"", False
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in answer.content.iter_any():
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                return b"".join(chunks), answer.content.at_eof()
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("upstream at %s broke off its answer: %s", answer.url.origin(), exc)
        raise PlainError(502, "Upstream broke off its answer") from exc
    return b"".join(chunks), True


async def _read_answer(answer: aiohttp.ClientResponse) -> bytes:
    try:
        return await answer.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        log.warning("upstream at %s broke off its answer: %s", answer.url.origin(), exc)
        raise PlainError(502, "Upstream broke off its answer") from exc


async def _pump(
    request: web.Request,
    answer: aiohttp.ClientResponse,
    response: web.StreamResponse,
    upstream_name: str,
    write_timeout: float,
    on_bytes: Callable[[int], None] | None = None,
) -> bool:
    """Copy the body chunk by chunk; False when either side broke off."""
    chunks = answer.content.iter_any()
    while True:
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            return True
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The head is already sent: all we can do is cut the connection so the
            # client sees a truncated answer, never a complete-looking wrong one.
            log.warning(
                "upstream %s broke off the body of %s %s: %s",
                upstream_name,
                request.method,
                request.path,
                exc.__class__.__name__,
            )
            return False
        if on_bytes is not None:
            on_bytes(len(chunk))
        try:
            # A client that stops reading must not hold the upstream slot forever.
            async with asyncio.timeout(write_timeout):
                await response.write(chunk)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            log.info("client went away during %s %s", request.method, request.path)
            return False
        except TimeoutError:
            log.warning(
                "client read nothing for %.0f s during %s %s; connection closed",
                write_timeout,
                request.method,
                request.path,
            )
            return False


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


async def keep_upstream_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: drop the Content-Type/Server defaults aiohttp adds to a
    relayed answer whose upstream sent none (passthrough adds nothing)."""
    sent = request.get(UPSTREAM_HEADER_NAMES)
    if sent is None:
        return
    for name in _DEFAULTED_BY_AIOHTTP:
        if name.lower() not in sent and name in response.headers:
            del response.headers[name]
