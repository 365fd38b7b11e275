"""Logging set-up and the one access line per request.

Lines name the route (or ``passthrough``), the user davproxy took the caller to be,
status and durations.  Headers and bodies are never logged, so Authorization values,
passwords and tokens cannot leak into logs.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from davproxy.config import LoggingConfig

access_log = logging.getLogger("davproxy.access")


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int = 0) -> None:
        super().__init__()
        self.worker = worker  # which of several workers writes (0: a single process)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker:
            entry["worker"] = self.worker
        access = getattr(record, "access", None)
        if isinstance(access, tuple):
            entry.update(_access_fields(access))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class UnparsableRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (a target that does not start with ``/``,
    a broken header line) as an error with a full traceback, once per request.  It is
    the client's mistake, answered 400: one escaped line at info instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        client = str(args[0]) if args else "-"
        detail = " ".join(str(error.message or error).split())
        record.msg = "refused an unparsable request from %s (400): %s"
        record.args = (client, _escaped(detail)[:200])
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return logging.getLogger("davproxy").isEnabledFor(logging.INFO)


def name_worker(index: int) -> None:
    """In a worker of ``[server] workers``: every line says which (``[worker 2]``, or a
    ``worker`` field in JSON), since the workers share the parent's stderr."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(JsonFormatter(index))
        else:
            text = f"%(asctime)s %(levelname)s [worker {index}] %(name)s: %(message)s"
            handler.setFormatter(logging.Formatter(text))


def setup(config: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Nothing davproxy logs shows the caller's file and line, or thread and process
    # names: not looking them up for every record is the logging HOWTO's own advice
    # ("Optimization"): an access line costs ~20 µs of CPU instead of ~40 (measured).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level.upper())
    # aiohttp's own access log would duplicate ours (and its format can include headers).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, UnparsableRequests) for f in server_log.filters):
        server_log.addFilter(UnparsableRequests())
    access_log.disabled = not config.access_log


def _escaped(text: str) -> str:
    """Unprintable characters escaped: no forged log lines."""
    return text.encode("unicode_escape", "backslashreplace").decode("ascii")


def log_access(
    method: str,
    path: str,
    route: str,
    user: str | None,
    status: int,
    seconds: float,
    upstream_seconds: float | None = None,
    client: str = "-",
    login: str | None = None,
) -> None:
    """One line per request.  ``client`` comes first, so nothing a client sends (path,
    user name) can stand before it; ``login`` is ``failed`` (credentials answered 401)
    or ``refused`` (too many failures: 429 without checking them)."""
    if access_log.disabled or not access_log.isEnabledFor(logging.INFO):
        return
    # the raw path, with anything unprintable escaped: no forged log lines
    path = _escaped(path)
    name = _escaped(user) if user else "-"
    upstream = "-" if upstream_seconds is None else f"{upstream_seconds * 1000:.1f}ms"
    access_log.info(
        "client=%s %s %s route=%s user=%s status=%d %.1fms upstream=%s%s",
        client,
        method,
        path.replace(" ", "\\x20"),  # one token per field in the text form
        route,
        name.replace(" ", "\\x20"),
        status,
        seconds * 1000,
        upstream,
        "" if login is None else f" login={login}",
        # the JSON form's fields, built only if that formatter asks (_access_fields)
        extra={"access": (client, method, path, route, name, status, seconds,
                          upstream_seconds, login)},
    )  # fmt: skip


def _access_fields(access: tuple[Any, ...]) -> dict[str, Any]:
    client, method, path, route, name, status, seconds, upstream_seconds, login = access
    fields: dict[str, Any] = {
        "client": client,
        "method": method,
        "path": path,
        "route": route,
        "user": name,
        "status": status,
        "duration_ms": round(seconds * 1000, 2),
    }
    if upstream_seconds is not None:
        fields["upstream_ms"] = round(upstream_seconds * 1000, 2)
    if login is not None:
        fields["login"] = login
    return fields
