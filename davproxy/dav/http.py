"""HTTP pieces every handler of a DAV request uses, whoever serves it.

A request body read whole under a size cap (413 past it), the ``207 Multi-Status``
answer, and RFC 7240 ``Prefer`` tokens.
"""

from __future__ import annotations

from aiohttp import web
from lxml import etree

from davproxy.dav import davxml
from davproxy.dav.errors import payload_too_large

CHUNK = 64 * 1024


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read a whole request body, refusing (413) as soon as it passes ``limit``."""
    if request.content_length is not None and request.content_length > limit:
        raise payload_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > limit:
            raise payload_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def multistatus_response(document: etree._Element) -> web.Response:
    return web.Response(
        status=207,
        body=davxml.serialize(document),
        content_type="application/xml",
        charset="utf-8",
    )


def preferences(request: web.Request) -> dict[str, str]:
    """RFC 7240 ``Prefer`` tokens (lower-cased) with their values."""
    found: dict[str, str] = {}
    for header in request.headers.getall("Prefer", []):
        for part in header.split(","):
            token = part.split(";", 1)[0].strip()
            name, _, value = token.partition("=")
            if name:
                found[name.strip().lower()] = value.strip().strip('"')
    return found
