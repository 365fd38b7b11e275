"""The aiohttp application: state, lifecycles, one catch-all route, error rendering."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from davproxy import config as config_mod
from davproxy.config import Config
from davproxy.dav import davxml
from davproxy.dav.errors import DavError, PlainError
from davproxy.edge import fastlane, parser
from davproxy.edge.guard import FORM_LOGIN, GUARD, LoginGuard
from davproxy.edge.logs import log_access
from davproxy.edge.monitoring import Metrics, Monitor, WorkerSlot
from davproxy.edge.routes import ROUTE, Router
from davproxy.edge.sites import build_site, feed_parts, reload_directory
from davproxy.edge.startup import start_up
from davproxy.feeds.refresh import Refresher
from davproxy.sharing import upstream_rights
from davproxy.store import Store, StoreError
from davproxy.store.leases import Leases
from davproxy.upstream.client import Upstream, new_session
from davproxy.upstream.identity import parse_basic
from davproxy.upstream.proxy import UPSTREAM_SECONDS, client_address, keep_upstream_headers
from davproxy.upstream.site import USER, Limits

log = logging.getLogger("davproxy.app")

parser.install()  # the C request parser, tolerant of extension methods
fastlane.install()  # plain passthrough GETs answered without aiohttp's request machinery

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
SESSION = web.AppKey("session", aiohttp.ClientSession)
ROUTER = web.AppKey("router", Router)
METRICS = web.AppKey("metrics", Metrics)
REFRESHER = web.AppKey("refresher", Refresher)
LISTENING = web.AppKey("listening", asyncio.Event)
LEASES = web.AppKey("leases", Leases)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    client = client_address(request, request.app[CONFIG].server.forwarded_allow_ips)
    guard = request.app[GUARD]
    # Basic credentials make any request a login attempt, whoever checks them: after
    # failures from this address or for this name it waits its turn (never the loop).
    credentials = parse_basic(request.headers.get("Authorization")) if guard.enabled else None
    login: str | None = None
    try:
        if credentials is not None:
            wait = guard.admit(client, credentials.user, credentials.password)
            if wait is None:
                login = "refused"
                raise PlainError(
                    429,
                    "Too many failed logins from this address; try again later",
                    {"Retry-After": str(math.ceil(guard.ceiling))},
                )
            if wait > 0:
                await asyncio.sleep(wait)
        response = await handler(request)
        status = response.status
        return response
    except davxml.XmlError as exc:
        status = 400
        return DavError(400, None, f"Unusable XML body: {exc}").to_response()
    except (DavError, PlainError) as exc:
        status = exc.status
        if exc.status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.path, exc.status, exc)
        return exc.to_response()
    except web.HTTPException as exc:
        status = exc.status
        raise
    except StoreError as exc:
        # the store is down or locked: nothing is known about shares or revocations, so
        # nothing is served that depends on them (never the upstream's answer unchecked)
        status = 503
        log.error("store unavailable on %s %s: %s", request.method, request.path, exc)
        return PlainError(
            503, "davproxy's store is unavailable; try again shortly", {"Retry-After": "5"}
        ).to_response()
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return PlainError(500, "Internal error in davproxy (see its log)").to_response()
    finally:
        if credentials is not None and login is None:
            if status == 401:  # davproxy's verdict or the upstream's: a failed login
                guard.failed(client, credentials.user)
                login = "failed"
            elif status < 500 and status not in (400, 429):
                guard.succeeded(credentials.user, credentials.password)
        login = login or request.get(FORM_LOGIN)
        seconds = time.perf_counter() - started
        route = request.get(ROUTE, "-")
        log_access(
            request.method,
            request.raw_path,
            route,
            request.get(USER) or (credentials.user if login and credentials else None),
            status,
            seconds,
            request.get(UPSTREAM_SECONDS),
            client,
            login,
        )
        metrics = request.app.get(METRICS)
        if metrics is not None:
            metrics.observe_request(route, request.method, status, seconds)
            if login is not None:
                metrics.observe_login(login)


class SetupError(Exception):
    """A resource named in the configuration cannot be used (one line for the operator)."""


async def _once_listening(app: web.Application, work: Callable[[], Awaitable[None]]) -> None:
    """Background work starts only once the server listens: a port in use ends start-up
    before anything (a feed refresh, a retry) has begun, so nothing is cut off."""
    await app[LISTENING].wait()
    await work()


def listening(app: web.Application) -> None:
    """Called by whoever serves the application once its socket listens (``server.py``);
    until then the feed refresher and the upstream retries wait."""
    app[LISTENING].set()


async def reload(app: web.Application) -> None:
    """SIGHUP: read the configuration again and apply its users and groups; a file
    that no longer loads changes nothing (the error is logged)."""
    try:
        fresh = config_mod.load(app[CONFIG].source)
    except config_mod.ConfigError as exc:
        log.error("reload refused, nothing changed: %s", exc)
        return
    await reload_directory(app[ROUTER].sites, fresh, app[LEASES])


def create_app(config: Config, slot: WorkerSlot | None = None) -> web.Application:
    """The application of one process (``slot``: which worker of a fleet it is)."""
    slot = slot or WorkerSlot()
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=config.server.max_body_bytes,
        handler_args={"max_field_size": 16 * 1024},
    )
    app[CONFIG] = config
    app[GUARD] = LoginGuard(config.server.login_delay_max)
    app.on_response_prepare.append(keep_upstream_headers)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        store = Store.open(config.store.location, config.store.reveal_password())
        session = new_session()
        parts = feed_parts(store, config)
        try:
            sites = [
                build_site(store, Upstream(up, config.server, session), parts)
                for up in config.upstreams
            ]
        except (OSError, ValueError) as exc:
            await session.close()
            store.close()
            raise SetupError(f"cannot read an htpasswd file: {exc}") from None
        leases = Leases(store)
        await start_up(sites, leases, slot.since)  # once for a fleet (edge/startup.py)
        app[LISTENING] = asyncio.Event()
        # Whatever fails later (the upstream down, a revocation by `davproxy admin`
        # meanwhile) is retried until the upstream confirms.
        retries = [
            asyncio.create_task(
                _once_listening(
                    app, functools.partial(upstream_rights.keep_in_line, site.sharing, leases)
                )
            )
            for site in sites
        ]
        app[STORE] = store
        app[SESSION] = session
        metrics = Metrics(store, app[GUARD], slot)
        for site in sites:
            site.upstream.on_answer = metrics.upstream.labels(site.upstream.name).observe
            site.upstream.on_bytes = metrics.relayed.labels(site.upstream.name).inc
        app[METRICS] = metrics
        app[ROUTER] = Router(
            sites, Limits(config.server.max_body_bytes, config.server.forwarded_allow_ips)
        )
        app[ROUTER].monitor = Monitor(store, metrics, config.monitoring)
        app[LEASES] = leases
        lane = fastlane.FastLane(
            app[ROUTER], app[GUARD], metrics, config.server.forwarded_allow_ips
        )
        app[fastlane.FAST_LANE] = lane
        parts.refresher.on_report = metrics.observe_refresh
        app[REFRESHER] = parts.refresher
        scheduler = asyncio.create_task(
            _once_listening(app, parts.refresher.run), name="feed-refresh"
        )
        try:
            yield
        finally:
            for task in (scheduler, *retries):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            lane.close()
            await parts.fetcher.close()
            parts.feeds.close()
            await session.close()
            await store.aclose()

    app.cleanup_ctx.append(lifecycle)

    async def dispatch(request: web.Request) -> web.StreamResponse:
        return await request.app[ROUTER].dispatch(request)

    app.router.add_route("*", r"/{tail:[\s\S]*}", dispatch)  # every path, newlines too
    return app
