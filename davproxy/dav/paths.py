"""Mapping paths between the public URL space and one upstream's URL space.

Paths are handled in their percent-encoded form, exactly as they travel on the wire,
so a user id with ``@`` or a collection name with spaces maps the same way both
directions and the upstream sees the bytes the client sent.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from urllib.parse import quote, unquote, unquote_to_bytes

from yarl import URL

from davproxy.dav import untrusted

# Characters RFC 3986 allows unencoded in a path segment besides unreserved ones.
_SEGMENT_SAFE = "!$&'()*+,;=:@"


def quote_segment(value: str) -> str:
    """Percent-encode one path segment (a user id, a collection name)."""
    return quote(value, safe=_SEGMENT_SAFE)


@dataclass(frozen=True, slots=True)
class PathMap:
    """Public prefix <-> upstream prefix; both start and end with ``/``."""

    public: str
    upstream: str

    @property
    def identity(self) -> bool:
        return self.public == self.upstream

    def rest(self, public_path: str) -> str | None:
        """The part of a public path below the prefix, or None if it lies outside."""
        if public_path.startswith(self.public):
            return public_path[len(self.public) :]
        if public_path + "/" == self.public:
            return ""
        return None

    def to_upstream(self, public_path: str) -> str | None:
        rest = self.rest(public_path)
        return None if rest is None else self.upstream + rest

    def to_public(self, upstream_path: str) -> str:
        """Map an upstream path back; paths outside the upstream prefix are left alone."""
        if upstream_path.startswith(self.upstream):
            return self.public + upstream_path[len(self.upstream) :]
        if upstream_path + "/" == self.upstream:
            return self.public.rstrip("/") or "/"
        return upstream_path

    def href_to_public(self, href: str, upstream_origin: URL, public_origin: str) -> str:
        """Map an href or Location value; absolute URLs of the upstream become public.

        An upstream that builds absolute URLs from the forwarded Host uses the public
        origin with its own path prefix, so both origins are recognised.
        """
        if href.startswith("/"):
            return self.to_public(href)
        url = _absolute_url(href)
        if url is None:
            return href
        origins: tuple[URL, ...] = (upstream_origin,)
        with contextlib.suppress(ValueError):  # a client's Host header may be no host
            origins = (upstream_origin, URL(public_origin))
        if url.origin() in origins:
            mapped = self.to_public(url.raw_path)
            query = f"?{url.raw_query_string}" if url.raw_query_string else ""
            return f"{public_origin}{mapped}{query}"
        return href

    def href_to_upstream(self, href: str, upstream_origin: URL | None = None) -> str:
        """Map an href sent by a client (request bodies, Destination)."""
        if href.startswith("/"):
            mapped = self.to_upstream(href)
            return href if mapped is None else mapped
        url = _absolute_url(href)
        if url is None:
            return href
        mapped = self.to_upstream(url.raw_path)
        if mapped is None:
            return href
        origin = upstream_origin if upstream_origin is not None else url.origin()
        query = f"?{url.raw_query_string}" if url.raw_query_string else ""
        return f"{origin}{mapped}{query}"


def _absolute_url(href: str) -> URL | None:
    """An absolute URL with a usable origin, or None (yarl parses lazily: any part of
    a hostile href may raise, so everything used later is read here)."""
    try:
        with untrusted.parsing("yarl", "an href", expected=(ValueError, TypeError, IndexError)):
            url = URL(href, encoded=True)
            if not url.is_absolute():
                return None
            url.origin()  # noqa: B018
            return url
    except untrusted.Refused:
        return None


class PathRejected(ValueError):
    """A request path davproxy refuses to route (it could mean another resource upstream)."""


@functools.lru_cache(maxsize=4096)  # pure, and asked several times per request
def resolve_path(raw_path: str) -> str:
    """The one form of a client's raw path that davproxy routes, checks and forwards.

    Empty segments are collapsed and one trailing slash is kept when the path ended
    with one, exactly as the upstreams resolve a path: Radicale's ``sanitize_path``
    (posixpath.normpath, then rejoining the non-empty segments, the trailing slash
    kept), Xandikos's ``normpath`` lookups, CalendarServer's ``normalizeURL``.  So
    ``/bob/copy//`` is ``/bob/copy/`` and ``//bob/copy//e.ics`` is ``/bob/copy/e.ics``
    here and there alike.  Each segment keeps the client's percent-encoding.

    What the upstream could resolve to another resource than davproxy routed is
    refused, never repaired: ``.`` and ``..`` segments (also encoded), encoded
    separators (``%2F``, ``%5C``), control characters, raw spaces or non-ASCII, and
    bytes that are not percent-encoded UTF-8.  A path like ``/bob/copy/../other/``
    would be routed by its prefix here and land elsewhere there.
    """
    if not raw_path.startswith("/"):
        raise PathRejected("the path must start with '/'")
    if any(ord(c) <= 32 or ord(c) >= 127 for c in raw_path):
        raise PathRejected("raw spaces, control or non-ASCII characters must be percent-encoded")
    kept = []
    for segment in raw_path.split("/"):
        if segment == "":
            continue  # '//': an empty segment, collapsed as the upstreams collapse it
        try:
            decoded = unquote_to_bytes(segment).decode("utf-8")
        except UnicodeDecodeError:
            raise PathRejected("percent-encoded bytes must be UTF-8") from None
        if decoded in (".", ".."):
            raise PathRejected("'.' and '..' segments are not accepted")
        if any(c in decoded for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in decoded):
            raise PathRejected("encoded separators or control characters are not accepted")
        kept.append(segment)
    if not kept:
        return "/"
    return "/" + "/".join(kept) + ("/" if raw_path.endswith("/") else "")


def check_path(raw_path: str) -> None:
    """Refuse what ``resolve_path`` refuses (PathRejected); accept what it resolves."""
    resolve_path(raw_path)


def resolve_href(value: str) -> str:
    """An href or ``Destination`` value with its path resolved as ``resolve_path`` does;
    the scheme, host and query stay as sent.  PathRejected for a path it refuses."""
    value = value.strip()
    origin = ""
    if not value.startswith("/"):
        scheme, sep, after = value.partition("://")
        if not sep:
            raise PathRejected("the path must start with '/'")
        cut = min((i for i in (after.find("/"), after.find("?")) if i >= 0), default=len(after))
        origin, value = f"{scheme}://{after[:cut]}", after[cut:] or "/"
    path, sep, query = value.partition("?")
    if not path.startswith("/"):
        path = "/" + path
    return origin + resolve_path(path) + sep + query


@functools.lru_cache(maxsize=8192)  # pure, and asked several times per request
def canonical(path: str) -> str:
    """One spelling per path, for matching (``%40`` and ``@``, ``%7E`` and ``~`` agree;
    empty segments collapse as in ``resolve_path``).

    Only for comparing and storing keys: requests are forwarded as ``resolve_path``
    gives them, with the client's percent-encoding.
    """
    parts = [quote(unquote(segment), safe=_SEGMENT_SAFE) for segment in path.split("/") if segment]
    lead = "/" if path.startswith("/") else ""
    if not parts:
        return lead
    return lead + "/".join(parts) + ("/" if path.endswith("/") else "")


def within(path: str, collection: str) -> str | None:
    """The part of ``path`` below ``collection`` (both canonical, the collection with its
    trailing slash): ``""`` for the collection itself (with or without the slash),
    None when the path lies outside it."""
    if path.startswith(collection):
        return path[len(collection) :]
    if path + "/" == collection:
        return ""
    return None


def slash(path: str) -> str:
    """``path`` as a collection path: with one trailing slash."""
    return path if path.endswith("/") else path + "/"
