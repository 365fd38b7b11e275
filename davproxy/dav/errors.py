"""Errors davproxy raises while serving a request, and the one place that renders them.

A ``DavError`` carries the HTTP status and, where the specs define one, the precondition
or postcondition element that goes inside ``<D:error>`` (RFC 4918 §16).  Plain-text
errors (``PlainError``) are for proxy failures such as 502/504, where there is no DAV
condition to name and a short sentence serves the operator and the user best.
"""

from __future__ import annotations

from aiohttp import web

from davproxy.dav import davxml
from davproxy.dav.davxml import DAV

# DAV conditions (RFC 4918 §16, RFC 3744 §7.1.1, RFC 6578 §3.2) named in <D:error>.
NEED_PRIVILEGES = f"{{{DAV}}}need-privileges"
VALID_SYNC_TOKEN = f"{{{DAV}}}valid-sync-token"
SUPPORTED_REPORT = f"{{{DAV}}}supported-report"


class DavError(Exception):
    """An HTTP error answered with a ``<D:error>`` body naming the condition."""

    def __init__(
        self,
        status: int,
        condition: str | None = None,
        message: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or f"{status} {condition or ''}".strip())
        self.status = status
        self.condition = condition  # Clark name, e.g. "{DAV:}need-privileges"
        self.message = message
        self.headers = headers or {}

    def to_response(self) -> web.Response:
        body = davxml.error_document(self.condition, self.message)
        return web.Response(
            status=self.status,
            body=body,
            content_type="application/xml",
            charset="utf-8",
            headers=self.headers,
        )


class PlainError(Exception):
    """An HTTP error answered with a short plain-text explanation."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def to_response(self) -> web.Response:
        return web.Response(status=self.status, text=self.message + "\n", headers=self.headers)


def unauthorized(realm: str) -> PlainError:
    return PlainError(
        401,
        "Authentication required",
        {"WWW-Authenticate": f'Basic realm="{realm}", charset="UTF-8"'},
    )


def payload_too_large(limit: int) -> PlainError:
    return PlainError(413, f"Request body larger than the {limit}-byte limit")
