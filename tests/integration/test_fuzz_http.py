"""Generated requests against davproxy in front of a real Radicale: whatever the method,
path, headers and body, davproxy never fails itself (no 500 of its own, no 502/504
while the upstream is healthy) and keeps serving.

``DAVPROXY_FUZZ_EXAMPLES`` sets the number of requests (``make soak``: 10,000).
"""

from __future__ import annotations

import http.client
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from davproxy.embedded import ServerProcess, start_radicale
from tests.helpers import basic, start_proxy, write_htpasswd
from tests.unit.test_fuzz_parsers import dav_trees, document

EXAMPLES = int(os.environ.get("DAVPROXY_FUZZ_EXAMPLES", "150"))

METHODS = ["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PROPFIND", "PROPPATCH", "REPORT",
           "MKCOL", "MKCALENDAR", "MOVE", "COPY", "LOCK", "FROB"]  # fmt: skip
PATHS = ["/alice/", "/alice/fz/", "/alice/fz/e.ics", "/bob/", "/.davproxy/whoami",
         "/.davproxy/notifications/alice/", "/.davproxy/notifications/alice/x.xml",
         "/.davproxy/notifications/bob/", "/.davproxy/metrics", "/.well-known/caldav",
         "/alice/fz/%2e%2e/x", "/alice//x", "/alice/%ff", "/", "/alice/fz/a%20b.ics"]  # fmt: skip
TYPES = ["application/xml", "text/xml", "application/davsharing+xml", "text/calendar",
         "application/json", ""]  # fmt: skip


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    folder = tmp_path_factory.mktemp("fuzz")
    with start_radicale(folder / "radicale") as upstream:
        with start_proxy(
            folder / "davproxy", upstream_url=upstream.url, kind="radicale", mode="proxy-auth",
            htpasswd=write_htpasswd(folder / "users.htpasswd"),
        ) as proxy:  # fmt: skip
            yield proxy, folder


def send(
    proxy: ServerProcess, method: str, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(proxy.host, proxy.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    method=st.sampled_from(METHODS),
    path=st.sampled_from(PATHS)
    | st.text("/abc%2e.@", min_size=1, max_size=20).map(lambda p: "/" + p),
    content_type=st.sampled_from(TYPES),
    depth=st.sampled_from(["0", "1", "infinity", "x"]),
    user=st.sampled_from(["alice", "bob", None]),
    body=st.binary(max_size=200) | dav_trees().map(document),
)
def test_generated_requests_never_break_davproxy(
    target: tuple[ServerProcess, Path],
    method: str, path: str, content_type: str, depth: str, user: str | None, body: bytes,
) -> None:  # fmt: skip
    proxy, _ = target
    headers = {"Depth": depth, **(basic(user) if user else {})}
    if content_type:
        headers["Content-Type"] = content_type
    if method in ("MOVE", "COPY"):
        headers["Destination"] = f"http://{proxy.host}:{proxy.port}/alice/fz/moved.ics"
    status, answer = send(proxy, method, path, headers, body)
    assert b"Internal error in davproxy" not in answer, (method, path, status)
    assert status not in (502, 504), (method, path, status, answer[:200])
    assert proxy.process.poll() is None


def test_fuzzing_left_no_unhandled_error_in_the_log(target: tuple[ServerProcess, Path]) -> None:
    proxy, _ = target
    text = proxy.log_path.read_text(errors="replace")
    assert "unhandled error" not in text and "Traceback" not in text
