"""A real feed origin on loopback whose answers each test scripts, and feed builders.

The server runs in its own thread and event loop, so one origin serves a whole module's
davproxy processes whatever loop each test uses.  Answers: a body with optional validators
(conditional GETs get 304 when they match), any status with headers, redirects, or a
slow drip.  Every request is recorded, so tests can count origin fetches.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from davproxy.ops.embedded import ServerProcess, free_port


@dataclass
class Reply:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    last_modified: str | None = None
    drip_seconds: float = 0.0  # pause between 1 KB chunks (slow-drip origin)


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)  # when the request arrived


class Origin:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.replies: dict[str, Reply] = {}
        self.seen: list[Seen] = []
        self.host = host
        self.port = free_port(host)
        self.base = f"http://{host}:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def url(self, path: str) -> str:
        return self.base + path

    def serve(self, path: str, body: bytes | str, **options: object) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.replies[path] = Reply(data, **options)  # type: ignore[arg-type]

    def hits(self, path: str) -> int:
        return sum(1 for s in self.seen if s.path == path)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.path_qs, dict(request.headers)))
        reply = self.replies.get(request.path_qs)
        if reply is None:
            return web.Response(status=404, text="no such feed")
        headers = dict(reply.headers)
        if reply.etag:
            headers["ETag"] = reply.etag
        if reply.last_modified:
            headers["Last-Modified"] = reply.last_modified
        if reply.status == 200:
            if reply.etag and request.headers.get("If-None-Match") == reply.etag:
                return web.Response(status=304, headers=headers)
            if (
                reply.last_modified
                and request.headers.get("If-Modified-Since") == reply.last_modified
            ):
                return web.Response(status=304, headers=headers)
        if reply.drip_seconds:
            response = web.StreamResponse(status=reply.status, headers=headers)
            await response.prepare(request)
            for start in range(0, len(reply.body), 1024):
                await response.write(reply.body[start : start + 1024])
                await asyncio.sleep(reply.drip_seconds)
            await response.write_eof()
            return response
        headers.setdefault("Content-Type", "text/calendar; charset=utf-8")
        return web.Response(status=reply.status, body=reply.body, headers=headers)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, self.host, self.port)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    @contextmanager
    def running(self) -> Iterator[Origin]:
        self._thread.start()
        self._ready.wait(10)
        try:
            yield self
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def event(
    uid: str | None,
    summary: str,
    start: str = "20260105T090000Z",
    end: str = "20260105T100000Z",
    extra: str = "",
    stamp: str = "20260101T000000Z",
) -> str:
    """One VEVENT (UTC times unless ``extra`` says otherwise), CRLF lines."""
    lines = ["BEGIN:VEVENT"]
    if uid is not None:
        lines.append(f"UID:{uid}")
    lines += [f"DTSTAMP:{stamp}", f"DTSTART:{start}", f"DTEND:{end}", f"SUMMARY:{summary}"]
    lines += [line for line in extra.split("\n") if line]
    lines.append("END:VEVENT")
    return "\r\n".join(lines) + "\r\n"


def calendar(*components: str, name: str = "Team", extra: str = "") -> str:
    head = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//test//origin//EN", "METHOD:PUBLISH"]
    head.append(f"X-WR-CALNAME:{name}")
    head += [line for line in extra.split("\n") if line]
    return "\r\n".join(head) + "\r\n" + "".join(components) + "END:VCALENDAR\r\n"


@dataclass
class FeedSite:
    """An origin, davproxy serving its feeds, and the admin CLI on davproxy's config."""

    origin: Origin
    proxy: ServerProcess
    config: Path

    def url(self, path: str) -> str:
        return self.proxy.url.rstrip("/") + path

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "davproxy", "admin", "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def refresh(self, *names: str) -> str:
        """Fetch now (the scheduler's own code path); the report as printed."""
        done = self.admin("refresh", *names)
        return done.stdout + done.stderr
