"""A trivially fast "upstream" for the passthrough benchmark.

Answers every PROPFIND with one canned 207 body and every GET/HEAD with one canned
event, over HTTP/1.1 keep-alive, so that a benchmark through davproxy measures
davproxy's own overhead rather than the upstream's.  Requests without an
``X-Remote-User`` header get 403 (davproxy in proxy-auth mode must supply it).

Run as its own process (it must not share the GIL with the benchmark client):

    python bench/fast_upstream.py --port 8999 --propfind body.xml --get event.ics
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aiohttp import web


def make_app(propfind_body: bytes, get_body: bytes, get_etag: str) -> web.Application:
    propfind_headers = {"Content-Type": "text/xml; charset=utf-8"}
    get_headers = {"Content-Type": "text/calendar; charset=utf-8", "ETag": get_etag}

    async def handle(request: web.Request) -> web.Response:
        if not request.headers.get("X-Remote-User"):
            return web.Response(status=403, text="no X-Remote-User\n")
        if request.body_exists:
            await request.read()  # drain the request body so keep-alive stays usable
        if request.method == "PROPFIND":
            return web.Response(status=207, body=propfind_body, headers=propfind_headers)
        if request.method in ("GET", "HEAD"):
            return web.Response(status=200, body=get_body, headers=get_headers)
        return web.Response(status=405, text="method not allowed\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--propfind", type=Path, required=True, help="canned 207 body")
    parser.add_argument("--get", type=Path, required=True, help="canned GET body")
    parser.add_argument("--etag", default='"bench-etag"')
    args = parser.parse_args()
    app = make_app(args.propfind.read_bytes(), args.get.read_bytes(), args.etag)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
