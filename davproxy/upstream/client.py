"""The only code that talks to a DAV server davproxy fronts.

``Upstream`` owns one upstream's URL, path mapping and timeouts, and turns transport
failures into the two answers a client can act on: 502 (the upstream refused or broke
the connection) and 504 (it did not answer in time).  Typed helpers for the requests
davproxy makes on its own behalf (credential probes now; PROPFINDs and rights later)
live here too.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import unquote

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from davproxy.config import ServerConfig, UpstreamConfig
from davproxy.dav.davxml import PROP, PROPFIND, element, href_path, serialize
from davproxy.dav.errors import PlainError
from davproxy.dav.paths import PathMap, quote_segment

log = logging.getLogger("davproxy.upstream")

# Headers aiohttp would otherwise add on its own; a transparent proxy sends only
# what the client sent.
SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


def new_session() -> aiohttp.ClientSession:
    """The client session every Upstream of a process shares: no pool limit (each
    upstream caps its own requests in flight, ``max_connections``), answers never
    decompressed, no cookies kept, and none of the headers aiohttp would add."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=60),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),  # a proxy must never keep cookies
        skip_auto_headers=SKIP_AUTO_HEADERS,
    )


class UpstreamError(PlainError):
    """The upstream could not be reached or did not answer properly (502/504)."""


@dataclass(frozen=True, slots=True)
class UserPaths:
    """Where one user's principal and homes live, in public and upstream form."""

    principal: str
    calendar_home: str
    addressbook_home: str
    upstream_principal: str


class Upstream:
    def __init__(
        self, config: UpstreamConfig, server: ServerConfig, session: aiohttp.ClientSession
    ) -> None:
        self.config = config
        self.name = config.name
        self.session = session
        self.paths = PathMap(config.prefix, config.url.path)
        self.origin = config.url.origin()
        self.timeout = aiohttp.ClientTimeout(
            total=None,
            connect=server.upstream_connect_timeout,
            sock_connect=server.upstream_connect_timeout,
            sock_read=server.upstream_timeout,
        )
        self._read_timeout = server.upstream_timeout
        self.read_timeout = server.upstream_timeout
        # At most max_connections requests in flight; the rest queue here, in order.
        self._slots = asyncio.Semaphore(config.max_connections)
        # Observers (metrics): seconds until an answer's head; answer body bytes.
        self.on_answer: Callable[[float], None] | None = None
        self.on_bytes: Callable[[int], None] | None = None
        # Each user's space by the layout: "{user}/calendars/" matches "bob/calendars/x/".
        layout = config.layout
        templates = {layout.principal, layout.calendar_home, layout.addressbook_home}
        self._home_patterns = [
            re.compile(
                re.escape(t.rstrip("/")).replace(re.escape("{user}"), "(?P<user>[^/]+)") + "(?:/|$)"
            )
            for t in sorted(templates, key=len, reverse=True)
            if "{user}" in t
        ]

    def url_for(self, upstream_raw_path: str) -> URL:
        """An upstream URL from an already percent-encoded path (and query)."""
        return URL(str(self.origin) + upstream_raw_path, encoded=True)

    def target(self, rest: str) -> tuple[str, dict[str, str]]:
        """Upstream path (encoded) and extra headers for a path below the public prefix."""
        if self.config.href_mapping == "script-name":
            # Radicale builds public hrefs itself from the prefix it is told.
            return "/" + rest, {"X-Script-Name": self.paths.public.rstrip("/")}
        return self.paths.upstream + rest, {}

    def public_path(self, upstream_href: str) -> str:
        """The public path of an href the upstream wrote in an answer."""
        path = href_path(upstream_href)
        if self.config.href_mapping == "rewrite":
            return self.paths.to_public(path)
        return path

    def rest_of(self, public_path: str) -> str | None:
        return self.paths.rest(public_path)

    async def propfind(
        self, rest: str, props: list[str], headers: Mapping[str, str], depth: str = "0"
    ) -> tuple[int, bytes]:
        """davproxy's own PROPFIND of ``props`` (Clark names) at ``rest``: (status, body)."""
        body = serialize(element(PROPFIND, element(PROP, *(element(p) for p in props))))
        path, extra = self.target(rest)
        request_headers = {
            **headers,
            **extra,
            "Depth": depth,
            "Content-Type": "application/xml; charset=utf-8",
        }
        async with self.request("PROPFIND", path, request_headers, body) as answer:
            return answer.status, await answer.read()

    def home_owner(self, rest: str) -> str | None:
        """The user whose principal or home ``rest`` (below the public prefix) lies in, by
        the mapping file's layout; None outside every user's space.  User ids never
        start with a dot, so ``.well-known`` and the like belong to no one."""
        for pattern in self._home_patterns:
            match = pattern.match(rest)
            if match is not None and not match.group("user").startswith("."):
                return unquote(match.group("user"))
        return None

    def user_paths(self, user: str) -> UserPaths:
        segment = quote_segment(user)
        layout = self.config.layout

        def public(template: str) -> str:
            return self.config.prefix + template.replace("{user}", segment)

        return UserPaths(
            principal=public(layout.principal),
            calendar_home=public(layout.calendar_home),
            addressbook_home=public(layout.addressbook_home),
            upstream_principal=self.config.url.path + layout.principal.replace("{user}", segment),
        )

    @asynccontextmanager
    async def request(
        self,
        method: str,
        upstream_raw_path: str,
        headers: Mapping[str, str] | CIMultiDict[str],
        data: bytes | AsyncIterable[bytes] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request; the response is open (unread) inside the block.

        Transport failures before the response head become UpstreamError; failures
        while the caller reads the body propagate as aiohttp/asyncio errors for the
        caller to handle (the response is already under way by then).
        """
        url = self.url_for(upstream_raw_path)
        await self.acquire_slot(method, upstream_raw_path)
        started = time.perf_counter()
        try:
            async with self._send(method, url, headers, data) as response:
                if self.on_answer is not None:
                    self.on_answer(time.perf_counter() - started)
                yield response
        finally:
            self._slots.release()

    async def acquire_slot(self, method: str, upstream_raw_path: str) -> None:
        """One of the ``max_connections`` request slots (504 after the read timeout);
        whoever takes one gives it back with ``release_slot``."""
        if not self._slots.locked():
            await self._slots.acquire()  # free: taken without waiting
            return
        try:
            async with asyncio.timeout(self._read_timeout):
                await self._slots.acquire()
        except TimeoutError:
            log.warning(
                "upstream %s: %s %s waited %.1f s for a free connection",
                self.name,
                method,
                self.url_for(upstream_raw_path).path,
                self._read_timeout,
            )
            raise UpstreamError(
                504, f"Upstream {self.name} is saturated (gateway timeout)"
            ) from None

    def release_slot(self) -> None:
        self._slots.release()

    async def ping(self) -> int:
        """Any HTTP answer to OPTIONS on the base path means the upstream is up."""
        async with self.request("OPTIONS", self.paths.upstream, {}) as response:
            await response.read()
            return response.status

    @asynccontextmanager
    async def _send(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str] | CIMultiDict[str],
        data: bytes | AsyncIterable[bytes] | None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        try:
            response = await self.session.request(
                method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=self.timeout,
            )
        except aiohttp.ConnectionTimeoutError:
            raise self.failure("connect-timeout", method, url) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise self.failure("timeout", method, url) from None
        except aiohttp.ClientConnectorError as exc:
            raise self.failure("unreachable", method, url, exc.strerror) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self.failure("broken", method, url, exc) from None
        try:
            yield response
        finally:
            response.release()

    def failure(self, kind: str, method: str, url: URL, detail: object = None) -> UpstreamError:
        """What a client is told (and the log says) when a request to the upstream
        fails before its answer's head: ``connect-timeout``, ``timeout`` (no answer
        within the read timeout), ``unreachable`` (refused), ``broken`` (not HTTP)."""
        if kind == "connect-timeout":
            log.error(
                "upstream %s: no connection to %s within %.1f s",
                self.name,
                self.origin,
                self.timeout.connect or 0,
            )
            return UpstreamError(502, f"Upstream {self.name} is unreachable (connection timed out)")
        if kind == "timeout":
            log.warning(
                "upstream %s did not answer %s %s within %.1f s",
                self.name,
                method,
                url.path,
                self._read_timeout,
            )
            return UpstreamError(
                504, f"Upstream {self.name} did not answer in time (gateway timeout)"
            )
        if kind == "unreachable":
            log.error("upstream %s unreachable at %s: %s", self.name, self.origin, detail)
            return UpstreamError(502, f"Upstream {self.name} is unreachable (connection failed)")
        log.error("upstream %s failed on %s %s: %s", self.name, method, url.path, detail)
        return UpstreamError(
            502, f"Upstream {self.name} answered with an invalid or broken response"
        )

    async def probe_credentials(self, user: str, authorization: str) -> bool:
        """PROPFIND Depth 0 on the user's principal with the client's own credentials.

        True: the upstream accepted them; False: it refused them (401/403);
        raises UpstreamError when the upstream cannot tell us either way.
        """
        body = (
            b'<?xml version="1.0" encoding="utf-8"?>'
            b'<propfind xmlns="DAV:"><prop><resourcetype/></prop></propfind>'
        )
        headers = {
            "Authorization": authorization,
            "Depth": "0",
            "Content-Type": "application/xml; charset=utf-8",
        }
        path = self.user_paths(user).upstream_principal
        async with self.request("PROPFIND", path, headers, body) as response:
            await response.read()
            if response.status in (200, 207):
                return True
            if response.status in (401, 403):
                return False
            log.warning(
                "credential probe for %r at upstream %s gave unexpected status %d",
                user,
                self.name,
                response.status,
            )
            if response.status == 404:
                # No principal at the configured layout: a configuration error, and
                # never proof of a password.
                return False
            raise UpstreamError(502, f"Upstream {self.name} could not verify credentials")
