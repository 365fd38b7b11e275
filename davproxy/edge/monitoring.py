"""Health, readiness and Prometheus metrics, at ``/.davproxy/{healthz,readyz,metrics}``.

These live in davproxy's reserved namespace at the root, outside every upstream's DAV
space (user ids cannot start with a dot, so no collection can shadow them).  Health
and readiness say nothing secret and are open; metrics are limited to the configured
networks (loopback by default) or a bearer token.

With ``[server] workers`` > 1 every process answers for itself: health names the process
(worker index and pid), and every metric series carries a ``worker`` label, since a
scrape through the shared port reaches whichever process accepts it.  To scrape each
process, ``[monitoring] worker_port`` gives worker *i* a port of its own for these
three paths (``edge/server.py``).  Gauges read from the store are the fleet's (global).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from davproxy.config import MonitoringConfig
from davproxy.edge.guard import LoginGuard
from davproxy.feeds.refresh import RefreshReport
from davproxy.store import Store, StoreError
from davproxy.upstream.client import Upstream, UpstreamError

PATHS = {
    "/.davproxy/healthz": "healthz",
    "/.davproxy/readyz": "readyz",
    "/.davproxy/metrics": "metrics",
}
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """Which process of a ``[server] workers`` fleet this is (index 0: a single process)."""

    index: int = 0
    count: int = 1
    since: float = field(default_factory=time.time)  # when this process was started

    def describe(self) -> str:
        if self.count == 1:
            return f"single process, pid {os.getpid()}"
        return f"worker {self.index} of {self.count}, pid {os.getpid()}"


class _Labelled:
    """A registry's metrics with one more label on every sample (``worker``)."""

    def __init__(self, registry: CollectorRegistry, name: str, value: str) -> None:
        self.registry, self.name, self.value = registry, name, value

    def collect(self) -> Iterable[Metric]:
        for metric in self.registry.collect():
            labelled = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            labelled.samples = [
                sample._replace(labels={**sample.labels, self.name: self.value})
                for sample in metric.samples
            ]
            yield labelled


class StoreCollector(Collector):
    """Gauges read from the store at scrape time: shares by status, notifications."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterable[GaugeMetricFamily]:
        shares = GaugeMetricFamily(
            "davproxy_shares",
            "Sharee instances by upstream and status",
            labels=["upstream", "status"],
        )
        notes = GaugeMetricFamily(
            "davproxy_notifications",
            "Notifications waiting in users' collections",
            labels=["upstream"],
        )
        try:
            for upstream, status, count in self.store.share_counts():
                shares.add_metric([upstream, status], count)
            for upstream, count in self.store.notification_counts():
                notes.add_metric([upstream], count)
        except StoreError:
            pass  # a scrape must not fail because the store is busy; readyz tells that
        feeds = GaugeMetricFamily(
            "davproxy_feed_sources", "Feed sources by last refresh status", labels=["status"]
        )
        subscriptions = GaugeMetricFamily(
            "davproxy_feed_subscriptions", "Subscriptions (operator feeds and users' own)"
        )
        try:
            for status, count in self.store.feed_counts():
                feeds.add_metric([status], count)
            subscriptions.add_metric([], self.store.subscription_count())
        except StoreError:
            pass
        yield shares
        yield notes
        yield feeds
        yield subscriptions


class Metrics:
    """One registry per application (tests run several apps in one process)."""

    def __init__(
        self, store: Store, guard: LoginGuard | None = None, slot: WorkerSlot | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self.slot = slot or WorkerSlot()
        self.login_failures = Counter(
            "davproxy_login_failures", "Requests whose Basic credentials were answered 401",
            registry=self.registry,
        )  # fmt: skip
        self.login_refusals = Counter(
            "davproxy_login_refusals",
            "Login attempts refused unchecked (429): too many failures from the address",
            registry=self.registry,
        )
        if guard is not None:
            entries = Gauge(
                "davproxy_login_guard_entries",
                "Addresses, names and recent successes the failed-login table holds",
                registry=self.registry,
            )
            entries.set_function(lambda: float(guard.size()))
        self.requests = Counter(
            "davproxy_requests", "Requests answered", ["route", "method", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.duration = Histogram(
            "davproxy_request_duration_seconds", "Time to answer a request", ["route"],
            registry=self.registry,
        )  # fmt: skip
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.upstream = Histogram(
            "davproxy_upstream_duration_seconds", "Time until the upstream's answer head",
            ["upstream"], registry=self.registry,
        )  # fmt: skip
        self.relayed = Counter(
            "davproxy_relayed_bytes", "Answer body bytes relayed from upstreams", ["upstream"],
            registry=self.registry,
        )  # fmt: skip
        self.refreshes = Counter(
            "davproxy_feed_refreshes", "Feed refreshes by outcome", ["outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.refresh_duration = Histogram(
            "davproxy_feed_refresh_duration_seconds", "Time to fetch and apply one feed",
            registry=self.registry,
        )  # fmt: skip
        self.registry.register(StoreCollector(store))

    def exposition(self) -> bytes:
        """The text a scrape gets; with several workers every series names its worker."""
        if self.slot.count == 1:
            return generate_latest(self.registry)
        return generate_latest(_Labelled(self.registry, "worker", str(self.slot.index)))  # type: ignore[arg-type]

    def observe_refresh(self, report: RefreshReport) -> None:
        self.refreshes.labels(report.outcome).inc()
        self.refresh_duration.observe(report.seconds)

    def observe_login(self, outcome: str) -> None:
        (self.login_refusals if outcome == "refused" else self.login_failures).inc()

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        known = method if method in _METHODS else "other"  # bounded label values
        key = (route, known, status)
        children = self._request_children.get(key)
        if children is None:  # labels() locks and builds its key: once per label set
            counter = self.requests.labels(route, known, str(status))
            children = (counter, self.duration.labels(route))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)


_METHODS = frozenset(
    {"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PROPFIND", "PROPPATCH", "REPORT"}
    | {"MKCOL", "MKCALENDAR", "COPY", "MOVE", "LOCK", "UNLOCK", "ACL"}
)


def _allowed(request: web.Request, config: MonitoringConfig) -> bool:
    if config.token is not None:
        given = request.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {config.token.reveal()}".encode()):
            return True
    try:
        peer = ipaddress.ip_address(request.remote or "")
    except ValueError:
        return False
    return any(peer in ipaddress.ip_network(net, strict=False) for net in config.allow)


class Monitor:
    """Answers the three monitoring paths for one application."""

    def __init__(self, store: Store, metrics: Metrics, config: MonitoringConfig) -> None:
        self.store, self.metrics, self.config = store, metrics, config

    async def answer(
        self, request: web.Request, which: str, upstreams: list[Upstream]
    ) -> web.Response:
        if which == "healthz":  # names the answering process
            return web.Response(text=f"ok ({self.metrics.slot.describe()})\n")
        if which == "readyz":
            return await _ready(self.store, upstreams)
        if not _allowed(request, self.config):
            return web.Response(status=403, text="metrics are limited to configured networks\n")
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})


async def _ready(store: Store, upstreams: list[Upstream]) -> web.Response:
    """Ready when the store takes a write lock and every upstream answers at all."""
    lines, ready = [], True
    try:
        store.check_writable()
        lines.append("store ok")
    except StoreError as exc:
        ready = False
        lines.append(f"store FAILED: {exc}")
    for upstream in upstreams:
        started = time.perf_counter()
        try:
            status = await upstream.ping()
            took = 1000 * (time.perf_counter() - started)
            lines.append(f"upstream {upstream.name} ok ({status}, {took:.0f} ms)")
        except UpstreamError as exc:
            ready = False
            lines.append(f"upstream {upstream.name} FAILED: {exc.message}")
    return web.Response(status=200 if ready else 503, text="\n".join(lines) + "\n")
