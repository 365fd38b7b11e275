"""The request parser: aiohttp's C parser (llhttp), and its pure-Python parser only
for connections that send a method llhttp does not know.

llhttp knows a fixed list of methods (every DAV, CalDAV and CardDAV method among them)
and refuses any other token, but RFC 9110 §9.1 lets extensions define new methods and
passthrough must carry them.  The Python parser accepts every method token but costs
about 20 µs more per request, most of what a passthrough GET is allowed to cost.  So a
connection starts on the C parser; when it refuses a method at the start of a request
line, that connection switches to the Python parser, which parses the same bytes
again.  Only such connections pay for it.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import http_parser, web_protocol
from aiohttp.http_exceptions import BadHttpMethod

# A request line (RFC 9112 §3): method token, SP, target, SP, HTTP version.
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [^ \r\n]+ HTTP/1\.[01]\r?\n")

_Fast: type[Any] = getattr(http_parser, "HttpRequestParserC", http_parser.HttpRequestParserPy)


class RequestParser:
    """One connection's parser; the aiohttp protocol sees an ordinary request parser."""

    __slots__ = ("_args", "_kwargs", "_parser", "_tolerant")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs
        self._parser = _Fast(*args, **kwargs)
        self._tolerant = _Fast is http_parser.HttpRequestParserPy

    def feed_data(self, data: bytes) -> Any:
        try:
            return self._parser.feed_data(data)
        except BadHttpMethod:
            # The refused method starts this chunk: nothing before it was parsed out of
            # these bytes, so the tolerant parser can take them from the start.  (A
            # pipelined request behind part of another's body stays refused.)
            if self._tolerant or not _REQUEST_LINE.match(bytes(data[:8192])):
                raise
        self._parser = http_parser.HttpRequestParserPy(*self._args, **self._kwargs)
        self._tolerant = True
        return self._parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:  # feed_eof, message_consumed, …
        return getattr(self._parser, name)


def install() -> None:
    """Every aiohttp server in this process parses requests with RequestParser."""
    web_protocol.HttpRequestParser = RequestParser  # type: ignore[misc,assignment]
