"""What the XML gate costs: parsing each forwarded DAV body once with the hardened parser.

Every PROPFIND, PROPPATCH, REPORT, MKCOL and MKCALENDAR body (and any body declared as
XML) is parsed before it is forwarded (``upstream/site.py``).  This bench times that
parse for the bodies clients really send and prints it next to a floor for any proxied
request measured in the same run: one PROPFIND round trip through aiohttp in-process
(client and a bare server, no davproxy; davproxy's own path costs more, see
``passthrough.py``), so each share is a ratio of two figures from one run.

    .venv/bin/python bench/xml_gate.py
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from davproxy.dav import davxml  # noqa: E402

PROPFIND = (
    b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:" '
    b'xmlns:C="urn:ietf:params:xml:ns:caldav" xmlns:CS="http://calendarserver.org/ns/">'
    b"<D:prop><D:resourcetype/><D:displayname/><CS:getctag/><D:sync-token/>"
    b"<C:supported-calendar-component-set/><D:current-user-privilege-set/></D:prop>"
    b"</D:propfind>"
)
PROPPATCH = (
    b'<D:propertyupdate xmlns:D="DAV:" xmlns:A="http://apple.com/ns/ical/"><D:set><D:prop>'
    b"<D:displayname>Work</D:displayname><A:calendar-color>#FF2968FF</A:calendar-color>"
    b"</D:prop></D:set></D:propertyupdate>"
)
MULTIGET = (
    b'<C:calendar-multiget xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
    b"<D:prop><D:getetag/><C:calendar-data/></D:prop>"
    + b"".join(b"<D:href>/alice/calendar/%040d.ics</D:href>" % i for i in range(200))
    + b"</C:calendar-multiget>"
)
SYNC = (
    b'<D:sync-collection xmlns:D="DAV:"><D:sync-token>http://radicale.org/ns/sync/'
    b"0123456789abcdef</D:sync-token><D:sync-level>1</D:sync-level>"
    b"<D:prop><D:getetag/></D:prop></D:sync-collection>"
)


async def _proxied_propfind_seconds(runs: int) -> float:
    """One PROPFIND round trip through aiohttp in-process (client and bare server)."""
    import time

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from davproxy.dav.http import read_body

    async def upstream(request: web.Request) -> web.Response:
        await read_body(request, 1 << 20)
        return web.Response(status=207, body=b"<x/>", content_type="application/xml")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream)
    async with TestClient(TestServer(app)) as client:
        started = time.perf_counter()
        for _ in range(runs):
            async with client.request("PROPFIND", "/alice/", data=PROPFIND) as answer:
                await answer.read()
        return (time.perf_counter() - started) / runs


def main() -> None:
    import asyncio

    request = asyncio.run(_proxied_propfind_seconds(500))
    print(f"an aiohttp PROPFIND round trip in-process: {request * 1e6:.0f} µs")
    print(f"{'body':<22} {'bytes':>6} {'parse':>10} {'of a round trip':>16}")
    for name, body in [
        ("PROPFIND (iOS)", PROPFIND),
        ("PROPPATCH", PROPPATCH),
        ("sync-collection", SYNC),
        ("multiget, 200 hrefs", MULTIGET),
    ]:
        runs = 2000
        parse = min(timeit.repeat(lambda b=body: davxml.parse(b), number=runs, repeat=5)) / runs
        print(f"{name:<22} {len(body):>6} {parse * 1e6:>8.1f} µs {parse / request:>15.1%}")


if __name__ == "__main__":
    main()
