"""The yardstick of bench/speed.py: a hand-written aiohttp + uvloop proxy that only relays.

python bench/naive_proxy.py http://127.0.0.1:8080 9000
"""

import sys

import aiohttp
import uvloop
from aiohttp import web

UPSTREAM = sys.argv[1]
HOP = {"transfer-encoding", "content-length", "connection", "keep-alive"}


async def relay(request: web.Request) -> web.Response:
    session = request.app["session"]
    body = await request.read()
    async with session.request(
        request.method, UPSTREAM + request.path_qs, headers=request.headers, data=body
    ) as answer:
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in HOP}
        return web.Response(status=answer.status, body=await answer.read(), headers=headers)


async def session(app: web.Application):  # type: ignore[no-untyped-def]
    app["session"] = aiohttp.ClientSession(auto_decompress=False)
    yield
    await app["session"].close()


app = web.Application()
app.cleanup_ctx.append(session)
app.router.add_route("*", "/{tail:.*}", relay)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), access_log=None, print=None,
            loop=uvloop.new_event_loop())  # fmt: skip
