"""A lean HTTP/1.1 client for plain passthrough: keep-alive connections on asyncio
Protocols, one pool per upstream origin.

aiohttp's client costs about 40 µs per request (request and response objects, header
multidicts, the connector, timeouts, tracing): most of what a passthrough GET may cost
in all.  The edge's fast lane (``edge/fastlane.py``) sends its requests here instead.
It writes the request head the caller built, byte for byte, and reads the answer:

* the head (RFC 9112 §4-5) is parsed by hand: a status line, CRLF-terminated header
  lines, nothing else (a bad head is a broken answer, as aiohttp's parser has it);
  interim 1xx answers are skipped;
* the body is framed as RFC 9112 §6.3 says: none after HEAD, 1xx, 204 and 304;
  ``Transfer-Encoding: chunked`` decoded here; ``Content-Length``; otherwise it lasts
  until the upstream closes;
* bodies are handed on chunk by chunk; past ``HIGH_WATER`` unread bytes the socket stops
  being read until the caller catches up;
* a connection goes back to the pool only when its answer was read to the end, was
  HTTP/1.1 and did not say ``Connection: close``;
* a request on a kept connection that the upstream had closed meanwhile (nothing of an
  answer received) is sent once more on a new connection; only idempotent requests
  without a body come here.

Why not a C parser: ``httptools`` is not among davproxy's dependencies, and aiohttp's
``HttpResponseParser`` needs its stream readers and protocol (most of the cost above).
A request to a fast upstream has one answer head of a few hundred bytes: splitting it
in Python costs about 4 µs.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque

# Unread answer bytes above which the socket is paused.
HIGH_WATER = 256 * 1024
MAX_HEAD = 64 * 1024
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n]*))?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NO_BODY = (204, 304)


class BrokenAnswer(Exception):
    """The upstream's answer is not HTTP, or it closed the connection before it ended."""


class ConnectTimeout(Exception):
    """No connection within the connect timeout."""


class Stale(Exception):
    """A kept connection closed before any byte of the answer: safe to send again."""


class Answer:
    """The head of one upstream answer; its body is read with ``read`` / ``chunk``."""

    __slots__ = ("_conn", "content_length", "headers", "reason", "status")

    def __init__(
        self,
        conn: Connection,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        content_length: int | None,
    ) -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = content_length

    async def chunk(self) -> bytes:
        """The next piece of the body, b"" at its end; BrokenAnswer if cut off."""
        return await self._conn.next_chunk()

    def received(self) -> bytes | None:
        """The whole body if it has arrived already, else None (then ``read``)."""
        conn = self._conn
        if conn._mode != "done" or conn._error is not None:
            return None
        body = b"".join(conn._chunks)
        conn._chunks.clear()
        conn._queued = 0
        return body

    async def read(self) -> bytes:
        parts: list[bytes] = []
        while True:
            part = await self._conn.next_chunk()
            if not part:
                return b"".join(parts)
            parts.append(part)


class Connection(asyncio.Protocol):
    """One keep-alive connection to the upstream, one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._received = False  # a byte of the current answer has arrived
        # body state
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._mode = ""  # "" head, "length", "chunked", "close", "done"
        self._left = 0  # bytes of the body (length) or of the current chunk (chunked)
        self._chunk_state = "size"  # size | data | crlf | trailer
        self._reusable = False
        self._paused = False
        self._head_for: str = "GET"

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._received = True
        if self._mode == "":
            self._buffer += data
            if len(self._buffer) > MAX_HEAD and b"\r\n\r\n" not in self._buffer:
                self._fail(BrokenAnswer("answer head too large"))
            else:
                self._wake()
            return
        self._take(data)

    def eof_received(self) -> bool:
        return False  # the transport closes itself: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self._mode == "close":
            self._mode = "done"
            self._wake()
        elif self._mode != "done":
            self._fail(
                Stale() if not self._received else BrokenAnswer(str(exc or "connection closed"))
            )

    # -- the caller's side ---------------------------------------------------------------

    def send(self, head: bytes, method: str) -> None:
        assert self.transport is not None
        self._buffer.clear()
        self._chunks.clear()
        self._queued = 0
        self._mode = ""
        self._error = None
        self._received = False
        self._head_for = method
        self.transport.write(head)

    async def answer(self) -> Answer:
        """The answer's head (interim 1xx answers skipped)."""
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                await self._wait()
                continue
            head = bytes(self._buffer[:end])
            rest = bytes(self._buffer[end + 4 :])
            self._buffer.clear()
            answer = self._parse_head(head)
            if 100 <= answer.status < 200:
                self._buffer += rest
                continue
            if rest:
                self._take(rest)
            return answer

    async def next_chunk(self) -> bytes:
        while not self._chunks:
            if self._mode == "done":
                return b""
            await self._wait()
        data = self._chunks.popleft()
        self._queued -= len(data)
        if self._paused and self._queued < HIGH_WATER // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def release(self) -> None:
        """Back to the pool if the answer was read to its end and the connection may
        be kept; else closed."""
        if self._mode == "done" and self._reusable and not self.closed and not self._paused:
            self.pool.keep(self)
        else:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()

    # -- internals -----------------------------------------------------------------------

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        waiter = self._waiter = self.pool.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._mode = "done" if self._mode == "" else self._mode
        self._reusable = False
        self._wake()
        if self.transport is not None and not self.closed:
            self.close()

    def _parse_head(self, head: bytes) -> Answer:
        lines = head.split(b"\r\n")
        status_line = _STATUS_LINE.fullmatch(lines[0])
        if status_line is None:
            self._fail(BrokenAnswer("not an HTTP status line"))
            raise BrokenAnswer("not an HTTP status line")
        status = int(status_line.group(2))
        headers: list[tuple[str, str]] = []
        length: int | None = None
        chunked = False
        keep = status_line.group(1) == b"1"
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or _TOKEN.fullmatch(name) is None or b"\n" in value or b"\r" in value:
                self._fail(BrokenAnswer("malformed header line"))
                raise BrokenAnswer("malformed header line")
            text = value.strip(b" \t").decode("utf-8", "surrogateescape")
            key = name.decode("ascii")
            headers.append((key, text))
            lower = key.lower()
            if lower == "content-length":
                if not text.isdigit() or (length is not None and length != int(text)):
                    self._fail(BrokenAnswer("bad Content-Length"))
                    raise BrokenAnswer("bad Content-Length")
                length = int(text)
            elif lower == "transfer-encoding":
                chunked = text.rsplit(",", 1)[-1].strip().lower() == "chunked"
                if not chunked:
                    self._fail(BrokenAnswer("unsupported Transfer-Encoding"))
                    raise BrokenAnswer("unsupported Transfer-Encoding")
            elif lower == "connection" and "close" in text.lower():
                keep = False
        if 100 <= status < 200:
            return Answer(self, status, "", headers, None)
        reason = (status_line.group(3) or b"").decode("utf-8", "surrogateescape")
        self._reusable = keep
        if self._head_for == "HEAD" or status in _NO_BODY:
            self._mode = "done"
        elif chunked:
            self._mode, self._chunk_state, length = "chunked", "size", None
        elif length is not None:
            self._mode, self._left = ("length", length) if length else ("done", 0)
        else:
            self._mode, self._reusable = "close", False
        return Answer(self, status, reason, headers, length)

    def _queue(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self._queued += len(data)
            if not self._paused and self._queued > HIGH_WATER and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
        self._wake()

    def _take(self, data: bytes) -> None:
        mode = self._mode
        if mode == "length":
            if len(data) >= self._left:
                extra = len(data) > self._left
                self._queue(data[: self._left])
                self._mode, self._left = "done", 0
                if extra:  # bytes past the answer: the connection cannot be trusted
                    self._reusable = False
                self._wake()
            else:
                self._left -= len(data)
                self._queue(data)
        elif mode == "close":
            self._queue(data)
        elif mode == "chunked":
            self._buffer += data
            self._dechunk()
        elif data:  # bytes where no answer is due
            self._reusable = False

    def _dechunk(self) -> None:
        """RFC 9112 §7.1: size line (extensions ignored), data, CRLF; trailers dropped."""
        buffer = self._buffer
        while buffer:
            state = self._chunk_state
            if state == "data":
                take = bytes(buffer[: self._left])
                del buffer[: len(take)]
                self._left -= len(take)
                self._queue(take)
                if self._left == 0:
                    self._chunk_state = "crlf"
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    self._fail(BrokenAnswer("chunk line too long"))
                return
            line = bytes(buffer[:end])
            del buffer[: end + 2]
            if state == "crlf":
                if line:
                    self._fail(BrokenAnswer("chunk not followed by CRLF"))
                    return
                self._chunk_state = "size"
            elif state == "size":
                size = line.split(b";", 1)[0].strip()
                if not size or any(c not in b"0123456789abcdefABCDEF" for c in size):
                    self._fail(BrokenAnswer("bad chunk size"))
                    return
                self._left = int(size, 16)
                self._chunk_state = "data" if self._left else "trailer"
            elif not line:  # the empty line after the trailers: the answer is complete
                self._mode = "done"
                if buffer:
                    self._reusable = False
                self._wake()
                return


class Pool:
    """Kept connections to one upstream origin."""

    def __init__(self, host: str, port: int, connect_timeout: float | None) -> None:
        self.host, self.port = host, port
        self.connect_timeout = connect_timeout
        self.loop = asyncio.get_running_loop()
        self._idle: list[Connection] = []
        self._all: set[Connection] = set()

    def keep(self, conn: Connection) -> None:
        self._idle.append(conn)

    def forget(self, conn: Connection) -> None:
        self._all.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    async def connect(self) -> Connection:
        """A new connection (ConnectTimeout, or OSError if refused)."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: Connection(self), self.host, self.port
                )
        except TimeoutError:
            raise ConnectTimeout() from None
        self._all.add(conn)
        return conn

    async def exchange(self, head: bytes, method: str) -> Answer:
        """Send a request without a body; its answer's head.  A kept connection the
        upstream closed meanwhile costs one more try on a new one."""
        while self._idle:
            conn = self._idle.pop()
            if conn.closed:
                continue
            try:
                return await self._on(conn, head, method)
            except Stale:
                continue
        try:
            return await self._on(await self.connect(), head, method)
        except Stale:
            raise BrokenAnswer("connection closed before an answer") from None

    @staticmethod
    async def _on(conn: Connection, head: bytes, method: str) -> Answer:
        conn.send(head, method)
        try:
            return await conn.answer()
        except BaseException:  # timed out, cancelled, broken: never used again
            conn.close()
            raise

    def close(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._idle.clear()
