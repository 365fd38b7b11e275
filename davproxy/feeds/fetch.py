"""Fetching a feed from its origin: conditional, capped, redirect-aware and SSRF-guarded.

- RFC 9110 §13.1.1-2: the stored ETag goes back in If-None-Match and the *exact* stored
  Last-Modified string in If-Modified-Since; a 304 changes nothing.
- RFC 9110 §15.4: redirects are followed by hand (at most ``max_redirects``, loops refused);
  only a chain of permanent ones (301/308) moves the stored fetch URL.
- RFC 9110 §10.2.3 Retry-After on 429/503, in seconds or as an HTTP date.
- SSRF: every address a host resolves to must be public unless an allowed network holds
  it; the check sits in the resolver, so a redirect or a DNS answer cannot route around it,
  and literal IP hosts (which skip the resolver) are checked before each request.
- Size and time caps cover the whole chain, so an endless or slow-drip origin costs at
  most ``max_bytes`` and ``fetch_timeout``.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from davproxy.config import FeedsConfig
from davproxy.dav import untrusted

log = logging.getLogger("davproxy.feeds")

Outcome = Literal["fetched", "not-modified", "failed"]
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_PERMANENT = frozenset({301, 308})
ACCEPT = "text/calendar, application/calendar+json;q=0.2, text/plain;q=0.2, */*;q=0.1"


@dataclass(frozen=True, slots=True)
class FetchResult:
    outcome: Outcome
    body: bytes = b""
    etag: str | None = None
    last_modified: str | None = None
    status: int | None = None
    #: the new fetch URL when every redirect on the way was permanent
    moved_to: str | None = None
    retry_after: float | None = None  # seconds, from a 429/503
    error: str = ""


_EMBEDS_IPV4 = tuple(
    ipaddress.IPv6Network(n) for n in ("2002::/16", "64:ff9b::/96", "64:ff9b:1::/48", "::/96")
)


class OriginRefused(OSError):
    """The origin's address is not one davproxy may fetch from."""


def address_allowed(address: str, allowed: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in ipaddress.ip_network(net, strict=False) for net in allowed):
        return True
    if isinstance(ip, ipaddress.IPv6Address) and any(ip in net for net in _EMBEDS_IPV4):
        return False  # 6to4, NAT64, IPv4-compatible: an IPv4 address travels inside
    return ip.is_global and not ip.is_multicast


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp does, then keeps only addresses davproxy may connect to."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.allowed = allowed
        self.inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        usable = [r for r in found if address_allowed(r["host"], self.allowed)]
        if not usable:
            raise OriginRefused(
                f"{host} resolves only to non-public addresses "
                f"({', '.join(sorted({r['host'] for r in found}))}); see [feeds] allow_networks"
            )
        return usable

    async def close(self) -> None:
        await self.inner.close()


def parse_retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # asctime and "-0000" dates are GMT (RFC 9110 §5.6.7)
            when = when.replace(tzinfo=datetime.UTC)
        return max(0.0, when.timestamp() - now)
    except (TypeError, ValueError, OverflowError):  # not a date, or out of range
        return None


class Fetcher:
    def __init__(self, settings: FeedsConfig) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self.settings.allow_networks), limit=16, ttl_dns_cache=0
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,  # no environment proxies: they would bypass the guard
                headers={"User-Agent": self.settings.user_agent, "Accept": ACCEPT},
            )
        return self._session

    def check_url(self, url: str) -> None:
        """Refuse a literal non-public IP host at once (names are checked when resolved)."""
        host = URL(url).host or ""
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return
        if not address_allowed(host.strip("[]"), self.settings.allow_networks):
            raise OriginRefused(f"{host} is not a public address; see [feeds] allow_networks")

    async def check_origin(self, url: str) -> None:
        """Refuse, before anything is stored, a source whose host is not public."""
        self.check_url(url)
        host = URL(url).host or ""
        try:
            ipaddress.ip_address(host.strip("[]"))
            return  # a literal address, checked above
        except ValueError:
            pass
        resolver = GuardedResolver(self.settings.allow_networks)
        try:
            await resolver.resolve(host, 0, socket.AF_UNSPEC)
        except OSError as exc:
            if isinstance(exc, OriginRefused):
                raise
            # unresolvable now: the scheduled fetches will report it; not an SSRF risk
            log.info("feed host %s does not resolve yet: %s", host, exc)
        finally:
            await resolver.close()

    async def fetch(
        self, url: str, etag: str | None = None, last_modified: str | None = None
    ) -> FetchResult:
        try:
            async with asyncio.timeout(self.settings.fetch_timeout):
                return await self._follow(url, etag, last_modified)
        except TimeoutError:
            return FetchResult(
                "failed", error=f"no complete answer within {self.settings.fetch_timeout:g} s"
            )
        except OriginRefused as exc:
            return FetchResult("failed", error=f"refused: {exc}")
        except aiohttp.ClientConnectorError as exc:
            cause = exc.__cause__ or exc.os_error
            if isinstance(cause, OriginRefused):
                return FetchResult("failed", error=f"refused: {cause}")
            return FetchResult("failed", error=f"cannot connect: {exc.os_error or exc}")
        except (aiohttp.ClientError, ValueError) as exc:
            return FetchResult("failed", error=f"{type(exc).__name__}: {exc}")

    async def _follow(self, url: str, etag: str | None, last_modified: str | None) -> FetchResult:
        headers: dict[str, str] = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        seen: set[str] = set()
        current = url
        permanent = True
        for _ in range(self.settings.max_redirects + 1):
            if current in seen:
                return FetchResult("failed", error=f"redirect loop at {current}")
            seen.add(current)
            self.check_url(current)
            async with self._client().get(
                current, headers=headers, allow_redirects=False
            ) as answer:
                status = answer.status
                if status in _REDIRECTS and "Location" in answer.headers:
                    location = answer.headers["Location"]
                    try:
                        with untrusted.parsing(
                            "yarl", "a redirect Location", (ValueError, TypeError, IndexError)
                        ):
                            target = URL(current).join(URL(location))
                            scheme, following = target.scheme, str(target.with_fragment(None))
                    except untrusted.Refused:
                        error = f"unreadable redirect to {location[:200]!r}"
                        return FetchResult("failed", status=status, error=error)
                    if scheme not in ("http", "https"):
                        return FetchResult("failed", status=status, error=f"redirect to {scheme}")
                    permanent = permanent and status in _PERMANENT
                    current = following
                    continue
                moved = current if permanent and current != url else None
                return await self._answer(answer, moved)
        return FetchResult("failed", error=f"more than {self.settings.max_redirects} redirects")

    async def _answer(self, answer: aiohttp.ClientResponse, moved: str | None) -> FetchResult:
        status = answer.status
        validators: dict[str, Any] = {
            "etag": answer.headers.get("ETag"),
            "last_modified": answer.headers.get("Last-Modified"),
            "status": status,
            "moved_to": moved,
        }
        if status == 304:
            return FetchResult("not-modified", **validators)
        if status != 200:
            retry = parse_retry_after(answer.headers.get("Retry-After"), time.time())
            reason = answer.reason or ""
            return FetchResult(
                "failed",
                retry_after=retry if status in (429, 503) else None,
                error=f"origin answered {status} {reason}".rstrip(),
                **validators,
            )
        cap = self.settings.max_bytes
        if (answer.content_length or 0) > cap:
            return FetchResult(
                "failed", error=f"origin body of {answer.content_length} bytes exceeds {cap}"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in answer.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > cap:
                return FetchResult("failed", error=f"origin body exceeds max_bytes ({cap})")
            chunks.append(chunk)
        return FetchResult("fetched", b"".join(chunks), **validators)
