"""What a handler needs to answer one request for one upstream: the request ``Context``.

The route table (``edge/routes.py``) decides which handler answers; the handler then
works only with its ``Context``: the request and where it points (public path, path
below the upstream root, query), the upstream and how users prove who they are there,
the body limit and the networks trusted for ``X-Forwarded-*``.  It reads the body once,
verifies the user once, and forwards with ``ctx.forward(...)``: handlers never reach
back into the router, so a request walks one way, edge -> route -> handler -> upstream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from aiohttp import web
from lxml import etree

from davproxy.dav import davxml
from davproxy.dav.errors import DavError
from davproxy.dav.http import read_body
from davproxy.upstream.client import Upstream
from davproxy.upstream.identity import Authenticator, parse_basic
from davproxy.upstream.proxy import Forward, forward, public_origin

log = logging.getLogger("davproxy.routes")

# The user davproxy took the caller to be, for the access log.
USER = web.RequestKey("user", str)
# Methods whose request body the upstreams davproxy fronts parse as DAV XML whatever its
# declared type (RFC 4918, 4791, 6578): such a body must pass davproxy's hardened parser
# before it is forwarded.  Any other method's body is gated when declared as XML.
XML_BODY_METHODS = frozenset({"PROPFIND", "PROPPATCH", "REPORT", "MKCOL", "MKCALENDAR"})
# Requests a client may make before it has credentials (service discovery, RFC 6764).
ANONYMOUS_METHODS = frozenset({"OPTIONS"})
WELL_KNOWN = ("/.well-known/caldav", "/.well-known/carddav")


@dataclass(frozen=True, slots=True)
class Limits:
    max_body: int  # bytes of a request body davproxy reads itself
    forwarded_allow_ips: tuple[str, ...]  # peers whose X-Forwarded-* are believed


@dataclass(slots=True)
class Context:
    """One request placed under one upstream."""

    request: web.Request
    upstream: Upstream
    auth: Authenticator
    limits: Limits
    path: str  # public path, percent-encoded, no query
    query: str  # "?..." or ""
    rest: str  # path below the public prefix
    # the Destination header resolved as the path is (dav/paths.py resolve_href)
    destination: str | None = None
    _body: bytes | None = field(default=None, repr=False)
    _tree: etree._Element | None = field(default=None, repr=False)
    _verified: str | None = field(default=None, repr=False)

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def origin(self) -> str:
        """Scheme and host as the client sees them."""
        return public_origin(self.request, self.limits.forwarded_allow_ips)

    async def body(self) -> bytes:
        """The request body, read once under the limit (413 past it)."""
        if self._body is None:
            self._body = await read_body(self.request, self.limits.max_body)
        return self._body

    async def xml(self) -> etree._Element:
        """The request body as davproxy's hardened parser reads it (``XmlError`` if it
        cannot), parsed once however many steps look at it; callers only read it.  A
        body parsed here has passed the XML gate too."""
        if self._tree is None:
            self._tree = davxml.parse(await self.body())
        return self._tree

    @property
    def body_read(self) -> bytes | None:
        """The body if a route has read it already (forwarded as read), else None."""
        return self._body

    async def verified_user(self) -> str:
        """The user whose credentials davproxy has checked itself (401 otherwise)."""
        if self._verified is None:
            self._verified = await self.auth.require_user(self.request.headers.get("Authorization"))
            self.request[USER] = self._verified
        return self._verified

    async def claimed_user(self) -> str | None:
        """Who the caller says they are, as far as passthrough needs to know.

        proxy-auth verifies on every request that needs a user (the upstream trusts
        davproxy's word); upstream-basic takes the claimed user, for the upstream to
        judge, until davproxy must act on it itself (then ``verified_user``)."""
        request = self.request
        if self.auth.proxy_auth:
            anonymous_ok = request.method in ANONYMOUS_METHODS or self.path in WELL_KNOWN
            if "Authorization" in request.headers or not anonymous_ok:
                return await self.verified_user()
            return None
        credentials = parse_basic(request.headers.get("Authorization"))
        if credentials is None:
            return None
        request[USER] = credentials.user  # claimed; the upstream verifies it
        return credentials.user

    def spec(self, rest: str | None = None, acting_user: str | None = None) -> Forward:
        """A forward of this request to ``rest`` (default: where it points) at the
        upstream, acting as the client, or as ``acting_user`` (shared copies)."""
        request, upstream = self.request, self.upstream
        config = upstream.config
        drop = {"x-script-name"} | trusted_header_copies(request, config.identity.trusted_header)
        path, set_headers = upstream.target(self.rest if rest is None else rest)
        if self.destination is not None and self.destination != request.headers["Destination"]:
            set_headers["Destination"] = self.destination  # '//' collapsed as the path's
        if self.auth.proxy_auth:
            drop.add("authorization")
            user = acting_user or request.get(USER)
            if user is not None:
                set_headers[config.identity.trusted_header] = user
        elif acting_user is not None:
            drop.add("authorization")
            set_headers.update(self.auth.headers_for(acting_user))
        spec = Forward(
            upstream=upstream,
            path=path + self.query,
            set_headers=set_headers,
            drop_headers=frozenset(drop),
            body=self._body,
        )
        if config.href_mapping == "rewrite":
            origin = self.origin
            spec = replace(
                spec,
                request_hrefs=upstream.paths.href_to_upstream,
                response_hrefs=lambda h: upstream.paths.href_to_public(h, upstream.origin, origin),
            )
        return spec

    async def forward(self, spec: Forward | None = None) -> web.StreamResponse:
        """Send the request on (as ``spec`` says, default: unchanged) and relay the answer.

        An XML body passes the gate first: only a document davproxy's hardened parser
        accepts reaches the upstream, byte for byte as the client sent it."""
        spec = spec if spec is not None else self.spec()
        if self._xml_body_expected():
            body = spec.body if spec.body is not None else await self.body()
            self.check_xml(body)
            spec = replace(spec, body=body)
        return await forward(
            self.request, spec, self.limits.max_body, self.limits.forwarded_allow_ips
        )

    def _xml_body_expected(self) -> bool:
        request = self.request
        if not request.body_exists and self._body is None:
            return False
        if request.method in XML_BODY_METHODS:
            return True
        return davxml.is_xml_content_type(request.headers.get("Content-Type", ""))

    def check_xml(self, body: bytes) -> None:
        """400 with a DAV error for a body the upstream must not see: a DTD or entity,
        excessive nesting, an unknown or lying encoding, invalid UTF-8, not XML."""
        if not body.strip():
            return  # an empty body (PROPFIND allprop) is the upstream's to read
        if self._tree is not None and body is self._body:
            return  # parsed by the same parser already (``xml``)
        try:
            davxml.parse(body)
        except davxml.XmlError as exc:
            log.warning(
                "refused %s %s from %s: %s",
                self.method, self.path, self.request.get(USER) or "-", exc,
            )  # fmt: skip
            raise DavError(400, None, f"Unusable XML body: {exc}") from None

    async def exists_upstream(self) -> bool:
        """Whether the client already has something at its request path upstream."""
        spec = self.spec()
        headers = {**spec.set_headers, "Depth": "0"}
        if not self.auth.proxy_auth and "Authorization" in self.request.headers:
            headers["Authorization"] = self.request.headers["Authorization"]
        async with self.upstream.request("PROPFIND", spec.path, headers) as answer:
            body = await answer.read()
            if answer.status != 207:
                return answer.status == 200
        try:  # Xandikos answers a missing path with a 404 inside a 207
            return davxml.response_status(davxml.parse(body)) != 404
        except davxml.XmlError:
            return True  # unsure: refuse rather than shadow something


def trusted_header_copies(request: web.Request, trusted_header: str) -> set[str]:
    """Every client-sent spelling of the trusted identity header (``X_Remote_User`` too)."""

    def norm(name: str) -> str:
        return name.lower().replace("_", "-")

    wanted = norm(trusted_header)
    return {name.lower() for name in request.headers if norm(name) == wanted}
