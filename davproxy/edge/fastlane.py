"""The edge's fast lane: plain passthrough GETs without aiohttp's request machinery.

Every connection to davproxy starts on ``Edge``, an asyncio Protocol.  It reads each
request head and decides, from the head alone and with no await, whether the request
is a *plain passthrough GET*: a strict HTTP/1.1 head without a body, a path the router
places under an upstream that needs no href mapping, not a collection (those carry
subscription links), a user whose credentials have a remembered verdict (proxy-auth)
or are sent for the upstream to judge (upstream-basic), and a path that is the user's
own space (``routes.place_of``: the same checks and store lookups every request gets,
after the same ``changes_noticed``).  Such a request is sent with the lean client
(``upstream/pool.py``) and its answer written straight to the socket, with the same
access line, metrics and login bookkeeping as ``app.error_middleware``.

Anything else (another method, a body, an odd header, a trusted front, a login that is
throttled or must be checked, a copy, a subscription, davproxy's own paths, a head the
strict reader does not take) is handed to aiohttp: the connection's protocol becomes
aiohttp's ``RequestHandler``, fed the bytes from the start of that request, for the
rest of the connection.  Such requests are answered exactly as before, so every
refusal and every route keeps its behaviour.

Answers: the common one (a body of known length up to ``SMALL_ANSWER``) is written in
one write, its head built as aiohttp builds it for ``proxy._relay`` (upstream headers
without hop-by-hop ones, then Content-Length, then Date if the upstream sent none).
Every other answer, and every error, goes through aiohttp's own response classes and
writer, so streaming, chunking, 204/304 and error pages are aiohttp's.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from aiohttp import hdrs, web, web_app, web_server
from aiohttp.base_protocol import BaseProtocol
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import HttpVersion11
from aiohttp.http_writer import StreamWriter
from multidict import istr
from yarl import URL

from davproxy.dav.errors import DavError, PlainError
from davproxy.dav.paths import PathRejected, resolve_path
from davproxy.edge.guard import LoginGuard
from davproxy.edge.logs import log_access
from davproxy.edge.monitoring import PATHS as MONITORING_PATHS
from davproxy.edge.monitoring import Metrics
from davproxy.edge.routes import OWN_SEGMENT, Place, Router, place_of
from davproxy.store import StoreError
from davproxy.upstream import pool as lean
from davproxy.upstream.client import Upstream
from davproxy.upstream.identity import Authenticator, Credentials, parse_basic
from davproxy.upstream.proxy import (
    HOP_BY_HOP,
    SMALL_ANSWER,
    UPSTREAM_HEADER_NAMES,
    _in_networks,
    keep_upstream_headers,
)

if TYPE_CHECKING:
    from davproxy.edge.sites import Site

log = logging.getLogger("davproxy.app")

_REQUEST_LINE = re.compile(rb"GET (/[!-~]*) HTTP/1\.1")
_HEADER = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([!-~](?:[ \t!-~]*[!-~])?)?[ \t]*")
# Request headers that send a request to aiohttp: a body, an expectation, a protocol
# switch, hop-by-hop names (Connection other than keep-alive), a Destination.
_HANDED = frozenset(
    {"content-length", "transfer-encoding", "expect", "upgrade", "destination", "te"}
)
# aiohttp's parsers (C and Python) spell every header name they know as ``hdrs`` does
# ("ETag" becomes "Etag"); so does the lane, in both directions, as aiohttp's path would.
CANONICAL = {str(v).lower(): str(v) for v in vars(hdrs).values() if isinstance(v, istr)}
MAX_HEAD = 8190  # aiohttp's limit for a request line; heads past it are aiohttp's
KEEPALIVE = 75.0  # aiohttp's keep-alive timeout: idle connections are closed after it


@dataclass(slots=True)
class Plan:
    """One request the fast lane answers: everything decided before it is sent."""

    look: Authenticator | None  # the htpasswd file is due a look before the verdict
    credentials: Credentials
    upstream: Upstream
    pool: lean.Pool
    head: bytes  # the request head for the upstream
    raw_path: str
    upstream_path: str
    user: str
    client: str
    password: str | None  # for the login guard (None: it does not count)
    started: float
    site: Site  # for the place check made again once the store's clock is read
    rest: str


class FastLane:
    """The fast lane of one application: its router, guard, metrics and pools."""

    def __init__(
        self, router: Router, guard: LoginGuard, metrics: Metrics | None, allowed: tuple[str, ...]
    ) -> None:
        self.router, self.guard, self.metrics, self.allowed = router, guard, metrics, allowed
        self.pools: dict[str, lean.Pool] = {}

    def pool(self, upstream: Upstream) -> lean.Pool:
        found = self.pools.get(upstream.name)
        if found is None:
            url = upstream.config.url
            found = lean.Pool(url.host or "127.0.0.1", url.port or 80, upstream.timeout.connect)
            self.pools[upstream.name] = found
        return found

    def close(self) -> None:
        for found in self.pools.values():
            found.close()

    # -- deciding ------------------------------------------------------------------------

    def plan(self, head: bytes, peer: str) -> Plan | None:
        """The plan for a request head (request line and header lines), or None: the
        request is aiohttp's.  Nothing here awaits or answers."""
        lines = head.split(b"\r\n")
        line = _REQUEST_LINE.fullmatch(lines[0])
        if line is None or lines[-1]:
            return None
        headers: list[tuple[str, str]] = []
        host = authorization = None
        for raw in lines[1:-1]:
            match = _HEADER.fullmatch(raw)
            if match is None:
                return None
            name = match.group(1).decode()
            value = (match.group(2) or b"").decode()
            lower = name.lower()
            name = CANONICAL.get(lower, name)
            if lower in _HANDED or lower.startswith("proxy-"):
                return None
            if lower == "connection" and value.lower() != "keep-alive":
                return None
            if lower == "host":
                if host is not None:
                    return None
                host = value
            elif lower == "authorization" and authorization is None:
                authorization = value
            headers.append((name, value))
        if host is None or (self.allowed and _in_networks(peer, self.allowed)):
            return None  # no Host: aiohttp's; a trusted front's X-Forwarded-*: aiohttp's
        raw_path = line.group(1).decode()
        path, sep, query = raw_path.partition("?")
        if path in MONITORING_PATHS:
            return None
        try:
            path = resolve_path(path)
        except PathRejected:
            return None
        found = self.router.site_for(path)
        if found is None:
            return None
        site, rest = found
        upstream, auth = site.upstream, site.auth
        if (
            rest.partition("/")[0] == OWN_SEGMENT
            or rest.endswith("/")  # a collection: its export carries subscription links
            or upstream.config.href_mapping == "rewrite"
        ):
            return None
        credentials = parse_basic(authorization)
        if credentials is None:
            return None  # a challenge, or anonymous passthrough: aiohttp's
        if self.guard.enabled and not self.guard.quiet:
            return None  # the login guard may delay or refuse it
        look = auth.proxy_auth and auth.look_due()
        if auth.proxy_auth and not look and auth.cache.get(credentials) is not True:
            return None  # to be checked (or refused): aiohttp's
        user = credentials.user
        try:  # on what the store said last; checked again when its clock is read (serve)
            if place_of(site, user, rest, None).place is not Place.UPSTREAM:
                return None
        except StoreError:
            return None  # aiohttp's path answers 503
        target, set_headers = upstream.target(rest)
        config = upstream.config
        drop = {"x-script-name", *HOP_BY_HOP}
        wanted = config.identity.trusted_header.lower().replace("_", "-")
        if auth.proxy_auth:
            drop.add("authorization")
            set_headers[config.identity.trusted_header] = user
        sent = [
            [name, value]
            for name, value in headers
            if (lower := name.lower()) not in drop and lower.replace("_", "-") != wanted
        ]
        for name, value in (
            ("X-Forwarded-For", peer),
            ("X-Forwarded-Host", host),
            ("X-Forwarded-Proto", "http"),
            *set_headers.items(),
        ):
            _update(sent, name, value)
        upstream_path = target + sep + query
        request_head = "".join(
            [f"GET {upstream_path} HTTP/1.1\r\n", *(f"{n}: {v}\r\n" for n, v in sent), "\r\n"]
        ).encode("utf-8")
        return Plan(
            site.auth if look else None,
            credentials,
            upstream,
            self.pool(upstream),
            request_head,
            raw_path,
            upstream_path,
            user,
            peer,
            credentials.password if self.guard.enabled else None,
            time.perf_counter(),
            site,
            rest,
        )

    # -- answering -----------------------------------------------------------------------

    async def serve(self, edge: Edge, plan: Plan) -> bool:
        """Answer one planned request, as ``app.error_middleware`` would have; False:
        declined before anything was sent (the request is aiohttp's after all)."""
        if plan.look is not None:
            # once a second: the htpasswd file may have changed (``verify`` does the same)
            try:
                await plan.look.notice_changes()
            except Exception:
                return False
            if plan.look.cache.get(plan.credentials) is not True:
                return False
        try:  # every commit made before this request arrived applies to it, so the
            # place is checked again once the clock is read, whoever noticed a change
            await plan.site.sharing.store.changes_noticed()
            if place_of(plan.site, plan.user, plan.rest, None).place is not Place.UPSTREAM:
                return False
        except StoreError:
            return False  # aiohttp's path answers 503
        exchange = _Exchange(edge, plan)
        status, upstream_seconds = 500, None
        try:
            status, upstream_seconds = await self._relay(edge, plan, exchange)
        except (DavError, PlainError) as exc:
            status = exc.status
            if exc.status >= 500:
                log.warning("%s %s -> %d: %s", "GET", exchange.path, exc.status, exc)
            await exchange.send(exc.to_response())
        except Exception:
            log.exception("unhandled error on %s %s", "GET", exchange.path)
            await exchange.send(
                PlainError(500, "Internal error in davproxy (see its log)").to_response()
            )
        finally:
            login = None
            if plan.password is not None:
                if status == 401:  # the upstream's verdict: a failed login
                    self.guard.failed(plan.client, plan.user)
                    login = "failed"
                elif status < 500 and status not in (400, 429):
                    self.guard.succeeded(plan.user, plan.password)
            seconds = time.perf_counter() - plan.started
            log_access(
                "GET", plan.raw_path, "passthrough", plan.user, status, seconds,
                upstream_seconds, plan.client, login,
            )  # fmt: skip
            if self.metrics is not None:
                self.metrics.observe_request("passthrough", "GET", status, seconds)
                if login is not None:
                    self.metrics.observe_login(login)
        return True

    async def _relay(self, edge: Edge, plan: Plan, exchange: _Exchange) -> tuple[int, float]:
        upstream = plan.upstream
        await upstream.acquire_slot("GET", plan.upstream_path)
        answer: lean.Answer | None = None
        try:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(upstream.read_timeout):
                    answer = await plan.pool.exchange(plan.head, "GET")
            except lean.ConnectTimeout:
                raise upstream.failure("connect-timeout", "GET", exchange.upstream_url) from None
            except TimeoutError:
                raise upstream.failure("timeout", "GET", exchange.upstream_url) from None
            except lean.BrokenAnswer as exc:
                raise upstream.failure("broken", "GET", exchange.upstream_url, exc) from None
            except OSError as exc:
                raise upstream.failure(
                    "unreachable", "GET", exchange.upstream_url, exc.strerror
                ) from None
            seconds = time.perf_counter() - started
            if upstream.on_answer is not None:
                upstream.on_answer(seconds)
            await self._answer(edge, plan, exchange, answer)
            return answer.status, seconds
        finally:
            if answer is not None:
                answer._conn.release()
            upstream.release_slot()

    async def _answer(
        self, edge: Edge, plan: Plan, exchange: _Exchange, answer: lean.Answer
    ) -> None:
        drop = set(HOP_BY_HOP)
        drop.add("content-length")
        for name, value in answer.headers:
            if name.lower() == "connection":
                drop.update(t.strip().lower() for t in value.split(",") if t.strip())
        headers = [
            (CANONICAL.get(lower, name), value)
            for name, value in answer.headers
            if (lower := name.lower()) not in drop and not lower.startswith("proxy-")
        ]
        names = frozenset(name.lower() for name, _ in headers)
        exchange.upstream_names = names
        counted = plan.upstream.on_bytes
        has_body = answer.status not in (204, 304)
        length = answer.content_length
        if has_body and length is not None and length <= SMALL_ANSWER:
            try:
                body = answer.received()  # mostly there with the head: no timer needed
                if body is None:
                    async with asyncio.timeout(plan.upstream.read_timeout):
                        body = await answer.read()
            except (lean.BrokenAnswer, TimeoutError) as exc:
                log.warning("upstream at %s broke off its answer: %s", plan.upstream.origin, exc)
                raise PlainError(502, "Upstream broke off its answer") from exc
            if counted is not None:
                counted(len(body))
            lines = [f"HTTP/1.1 {answer.status} {answer.reason}\r\n"]
            lines += [f"{name}: {value}\r\n" for name, value in headers]
            lines.append(f"Content-Length: {len(body)}\r\n")
            if "date" not in names:
                lines.append(f"Date: {rfc822_formatted_time()}\r\n")
            lines.append("\r\n")
            edge.write("".join(lines).encode("utf-8", "surrogateescape") + body)
            return
        response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
        if length is not None:
            response.content_length = length
        await exchange.prepare(response)
        if has_body and not await self._pump(edge, plan, exchange, answer, response):
            edge.abort()
            return
        await response.write_eof()

    async def _pump(
        self,
        edge: Edge,
        plan: Plan,
        exchange: _Exchange,
        answer: lean.Answer,
        response: web.StreamResponse,
    ) -> bool:
        """Copy the body chunk by chunk (``proxy._pump``); False when a side broke off."""
        upstream = plan.upstream
        while True:
            try:
                async with asyncio.timeout(upstream.read_timeout):
                    chunk = await answer.chunk()
            except (lean.BrokenAnswer, TimeoutError) as exc:
                log.warning(
                    "upstream %s broke off the body of %s %s: %s",
                    upstream.name, "GET", exchange.path, exc.__class__.__name__,
                )  # fmt: skip
                return False
            if not chunk:
                return True
            if upstream.on_bytes is not None:
                upstream.on_bytes(len(chunk))
            try:
                async with asyncio.timeout(upstream.read_timeout):
                    await response.write(chunk)
            except ConnectionError:
                log.info("client went away during %s %s", "GET", exchange.path)
                return False
            except TimeoutError:
                log.warning(
                    "client read nothing for %.0f s during %s %s; connection closed",
                    upstream.read_timeout, "GET", exchange.path,
                )  # fmt: skip
                return False


def _update(headers: list[list[str]], name: str, value: str) -> None:
    """``CIMultiDict.update`` of one name: the first of that name takes the new name
    and value in its place, later ones go; absent, it is added at the end."""
    lower = name.lower()
    found = [i for i, (key, _) in enumerate(headers) if key.lower() == lower]
    if not found:
        headers.append([name, value])
        return
    headers[found[0]] = [name, value]
    for index in reversed(found[1:]):
        del headers[index]


class _Exchange:
    """What aiohttp's response classes need of a request, for the answers the fast
    lane leaves to them (streamed, 204/304, errors)."""

    method = "GET"
    version = HttpVersion11
    keep_alive = True

    def __init__(self, edge: Edge, plan: Plan) -> None:
        self._payload_writer = StreamWriter(edge, edge._loop)
        self.plan = plan
        self.upstream_names: frozenset[str] | None = None

    @property
    def path(self) -> str:  # decoded, as aiohttp's request.path
        return URL.build(path=self.plan.raw_path.partition("?")[0], encoded=True).path

    @property
    def upstream_url(self) -> URL:
        return self.plan.upstream.url_for(self.plan.upstream_path)

    def get(self, key: object, default: Any = None) -> Any:
        return self.upstream_names if key is UPSTREAM_HEADER_NAMES else default

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        await keep_upstream_headers(cast(web.Request, self), response)

    async def prepare(self, response: web.StreamResponse) -> None:
        await response.prepare(cast(web.Request, self))

    async def send(self, response: web.StreamResponse) -> None:
        await self.prepare(response)
        await response.write_eof()


class Edge(BaseProtocol):
    """One client connection: fast-lane requests one at a time, until a request that
    is aiohttp's hands the connection over."""

    def __init__(self, server: EdgeServer, lane: FastLane) -> None:
        super().__init__(server._loop)
        self.server, self.lane = server, lane
        self._buffer = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._peer = "-"
        self.idle_since = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, (list, tuple)) else "-"
        self.server.edges.add(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self.server.edges.discard(self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._task is None:
            self._next()
        elif len(self._buffer) > 2 * MAX_HEAD and self.transport is not None:
            self._hold()  # pipelined requests wait for the one in flight

    def eof_received(self) -> bool:
        return self._task is not None  # keep the socket for the answer in flight

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _next(self) -> None:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                self._hand_over()
            return
        plan = self.lane.plan(bytes(buffer[: end + 2]), self._peer) if end < MAX_HEAD else None
        if plan is None or self.server.closing:
            self._hand_over()
            return
        head = bytes(buffer[: end + 4])
        del buffer[: end + 4]
        self._task = self._loop.create_task(self._serve(plan, head))

    async def _serve(self, plan: Plan, head: bytes) -> None:
        served: bool | None = None
        try:
            served = await self.lane.serve(self, plan)
        finally:
            self._task = None
            self.idle_since = time.monotonic()
            if served is False:  # nothing sent: aiohttp answers it, from its first byte
                self._buffer[:0] = head
                self._hand_over()
            elif self.transport is not None and not self.transport.is_closing():
                if self.server.closing:
                    self.close()
                elif self._buffer:
                    self._release()
                    self._next()

    def _hold(self) -> None:
        if not self._buffer_paused:
            self._pause_reading_for_buffer()

    def _release(self) -> None:
        if self._buffer_paused:
            self._buffer_paused = False
            self._resume_transport_reading()

    def _hand_over(self) -> None:
        """From this request on, the connection is aiohttp's."""
        transport = self.transport
        if transport is None:
            return
        self.server.edges.discard(self)
        handler = self.server.aiohttp_handler()
        transport.set_protocol(handler)
        self._release()
        self.transport = None
        handler.connection_made(transport)
        data, self._buffer = bytes(self._buffer), bytearray()
        if data:
            handler.data_received(data)


# The application's fast lane, set once it has its router (``app.py``).
FAST_LANE = web.AppKey("fast_lane", FastLane)


class EdgeServer(web_server.Server):
    """aiohttp's server, whose connections start on the fast lane when the application
    has one (the others' are aiohttp's ``RequestHandler`` as ever)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.edges: set[Edge] = set()
        self.closing = False
        self._sweeper: asyncio.TimerHandle | None = None

    def __call__(self) -> Any:
        app = getattr(self.request_handler, "__self__", None)
        lane = app.get(FAST_LANE) if isinstance(app, web.Application) else None
        if lane is None or self.closing:
            return super().__call__()
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(KEEPALIVE / 5, self._sweep)
        return Edge(self, lane)

    def aiohttp_handler(self) -> web_server.RequestHandler:
        return super().__call__()

    def _sweep(self) -> None:
        """Idle connections are closed after aiohttp's keep-alive timeout."""
        limit = time.monotonic() - KEEPALIVE
        for edge in list(self.edges):
            if edge._task is None and edge.idle_since < limit:
                edge.close()
        self._sweeper = self._loop.call_later(KEEPALIVE / 5, self._sweep)

    def pre_shutdown(self) -> None:
        self.closing = True
        for edge in list(self.edges):
            if edge._task is None:
                edge.close()
        super().pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        tasks = [edge._task for edge in self.edges if edge._task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for edge in list(self.edges):
            edge.close()
        await super().shutdown(timeout)


def install() -> None:
    """Every aiohttp application of this process is served by ``EdgeServer``."""
    web_app.Server = EdgeServer  # type: ignore[misc]
