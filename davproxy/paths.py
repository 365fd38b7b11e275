"""Mapping paths between the public URL space and one upstream's URL space.

Paths are handled in their percent-encoded form, exactly as they travel on the wire,
so a user id with ``@`` or a collection name with spaces maps the same way both
directions and the upstream sees the bytes the client sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from yarl import URL

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
        try:
            url = URL(href, encoded=True)
        except ValueError:
            return href
        if url.is_absolute() and url.origin() in (upstream_origin, URL(public_origin)):
            mapped = self.to_public(url.raw_path)
            query = f"?{url.raw_query_string}" if url.raw_query_string else ""
            return f"{public_origin}{mapped}{query}"
        return href

    def href_to_upstream(self, href: str, upstream_origin: URL | None = None) -> str:
        """Map an href sent by a client (request bodies, Destination)."""
        if href.startswith("/"):
            mapped = self.to_upstream(href)
            return href if mapped is None else mapped
        try:
            url = URL(href, encoded=True)
        except ValueError:
            return href
        if not url.is_absolute():
            return href
        mapped = self.to_upstream(url.raw_path)
        if mapped is None:
            return href
        origin = upstream_origin if upstream_origin is not None else url.origin()
        query = f"?{url.raw_query_string}" if url.raw_query_string else ""
        return f"{origin}{mapped}{query}"
