"""A feed origin for the feeds benchmark: serves ``.ics`` files and counts the fetches.

Run as its own process, so that the CPU it spends sending feeds is never counted as
davproxy's (``time.process_time`` in the benchmark covers only the refresher's side):

    python bench/feed_origin.py --port 8998

Control endpoints (the benchmark is the only client; loopback only):

* ``POST /_control/serve`` with JSON ``{"path": "/big.ics", "file": "/tmp/x.ics",
  "etag": true, "delay": 0.0}``: from now on ``GET /big.ics`` answers the bytes of that
  file (read once, here).  ``etag`` adds a strong ETag (a hash of the bytes) and answers
  a matching ``If-None-Match`` with 304; without it every GET is a full 200.  ``delay``
  (seconds) is waited before answering, like a slow origin.
* ``GET /_control/hits``: JSON ``{path: number of requests}`` for every path served.

Every other path answers 404 and is counted too.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Feed:
    body: bytes
    etag: str | None
    delay: float


def make_app() -> web.Application:
    feeds: dict[str, Feed] = {}
    hits: Counter[str] = Counter()

    async def serve(request: web.Request) -> web.Response:
        spec = await request.json()
        body = Path(spec["file"]).read_bytes()
        etag = f'"{hashlib.sha256(body).hexdigest()[:24]}"' if spec.get("etag") else None
        feeds[spec["path"]] = Feed(body, etag, float(spec.get("delay", 0.0)))
        return web.json_response({"path": spec["path"], "bytes": len(body), "etag": etag})

    async def counts(request: web.Request) -> web.Response:
        return web.json_response(dict(hits))

    async def feed(request: web.Request) -> web.Response:
        hits[request.path] += 1
        found = feeds.get(request.path)
        if found is None:
            return web.Response(status=404, text="no such feed\n")
        if found.delay:
            await asyncio.sleep(found.delay)
        headers = {"Content-Type": "text/calendar; charset=utf-8"}
        if found.etag is not None:
            headers["ETag"] = found.etag
            if request.headers.get("If-None-Match") == found.etag:
                return web.Response(status=304, headers=headers)
        return web.Response(body=found.body, headers=headers)

    app = web.Application()
    app.router.add_post("/_control/serve", serve)
    app.router.add_get("/_control/hits", counts)
    app.router.add_route("*", "/{tail:.*}", feed)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
