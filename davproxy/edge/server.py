"""Running the application until a signal: bind, announce, drain, stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

from davproxy import config as config_mod
from davproxy.edge.app import ROUTER, SetupError, create_app, listening, reload
from davproxy.edge.monitoring import PATHS, WorkerSlot
from davproxy.store import StoreError

log = logging.getLogger("davproxy")


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run the server's coroutine on uvloop where it is installed (about a fifth less
    CPU per proxied request than the default loop, measured in bench/speed.py)."""
    try:
        import uvloop
    except ImportError:  # not on this platform: the standard loop works the same
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


class StartupError(Exception):
    """davproxy cannot start; the message is the one line the operator sees."""


async def run_until_signal(
    config: config_mod.Config,
    on_started: Callable[[int], Awaitable[None] | None] | None = None,
    *,
    sock: socket.socket | None = None,
    slot: WorkerSlot | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM, then stop accepting and finish in-flight requests.

    ``sock``: a listening socket to serve on (a worker's, bound by the supervisor)
    instead of binding ``[server] host``/``port``; ``slot``: which worker this is."""
    slot = slot or WorkerSlot()
    app = create_app(config, slot)
    # aiohttp waits shutdown_timeout for handlers, then as long again after cancelling
    # them: half each keeps the whole stop within the configured time.
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=config.server.shutdown_timeout / 2
    )
    try:
        await runner.setup()
    except (StoreError, SetupError) as exc:
        raise StartupError(str(exc)) from None
    site: web.BaseSite
    if sock is None:
        site = web.TCPSite(runner, config.server.host, config.server.port, reuse_address=True)
    else:
        site = web.SockSite(runner, sock)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(
            f"cannot listen on {config.server.host}:{config.server.port}: {exc.strerror or exc}"
        ) from None
    try:
        door = await _monitoring_door(app, config, slot)
    except StartupError:
        await runner.cleanup()
        raise
    listening(app)
    port = config.server.port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        port = server.sockets[0].getsockname()[1]
    for upstream in config.upstreams if slot.index <= 1 else ():  # said once for a fleet
        log.info(
            "davproxy listening on http://%s:%d%s -> %s (%s, identity %s, hrefs %s)",
            config.server.host,
            port,
            upstream.prefix,
            upstream.url,
            upstream.kind,
            upstream.identity.mode,
            upstream.href_mapping,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def hangup() -> None:  # SIGHUP: the mapping files' users and groups read again
        task = asyncio.create_task(reload(app))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    try:
        if on_started is not None:
            result = on_started(port)
            if asyncio.iscoroutine(result):
                await result
        await stop.wait()
        log.info("shutting down (finishing requests in flight)")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
        if door is not None:
            await door.cleanup()
        log.info("stopped (%s)", slot.describe())


async def _monitoring_door(
    app: web.Application, config: config_mod.Config, slot: WorkerSlot
) -> web.AppRunner | None:
    """With several workers and ``[monitoring] worker_port``: this worker's own port for
    healthz, readyz and metrics, so each process can be probed and scraped."""
    base = config.monitoring.worker_port
    if slot.count == 1 or not base:
        return None

    async def answer(request: web.Request) -> web.StreamResponse:
        router = app[ROUTER]
        which = PATHS.get(request.path)
        if which is None or router.monitor is None:
            return web.Response(status=404, text="only /.davproxy/healthz, readyz, metrics\n")
        return await router.monitor.answer(request, which, [s.upstream for s in router.sites])

    door = web.Application()
    door.router.add_route("GET", "/{tail:.*}", answer)
    runner = web.AppRunner(door, access_log=None)
    await runner.setup()
    port = base + slot.index - 1
    try:
        await web.TCPSite(runner, config.server.host, port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(
            f"cannot listen on {config.server.host}:{port} ([monitoring] worker_port of"
            f" worker {slot.index}): {exc.strerror or exc}"
        ) from None
    return runner
