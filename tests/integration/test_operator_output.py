"""What an operator reads when something is wrong on the outside: a port in use is one
line even with feeds configured (no refresh starts before davproxy listens), and a
request target that does not start with ``/`` is one line, not a traceback per request."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from davproxy.ops.embedded import free_port, start_davproxy
from tests.feed_origin import Origin, calendar, event
from tests.helpers import write_config

FEEDS = '[[feeds]]\nname = "team"\nurl = "{url}"\n'


def configure(tmp_path: Path, origin: Origin, port: int) -> Path:
    main, _ = write_config(
        tmp_path, upstream_url=f"http://127.0.0.1:{free_port()}/", kind="radicale",
        mode="upstream-basic", port=port,
        mapping_extra=FEEDS.format(url=origin.url("/team.ics")),
    )  # fmt: skip
    main.write_text(main.read_text() + '\n[feeds]\nallow_networks = ["127.0.0.0/8"]\n')
    return main


def test_port_in_use_with_a_feed_is_one_line(tmp_path: Path) -> None:
    body = calendar(*(event(f"e{n}", f"Event {n}") for n in range(3000)))
    with Origin().running() as origin, socket.socket() as busy:
        origin.serve("/team.ics", body, drip_seconds=0.01)  # a refresh would still run
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        main = configure(tmp_path, origin, port)
        result = subprocess.run(
            [sys.executable, "-m", "davproxy", "serve", "--config", str(main)],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        hits = origin.hits("/team.ics")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Task exception" not in result.stderr
    problems = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert len(problems) == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in problems[0]
    assert hits == 0  # nothing was fetched, so nothing was cut off


def test_request_target_without_slash_is_one_line(tmp_path: Path) -> None:
    with Origin().running() as origin:
        origin.serve("/team.ics", calendar(event("e1", "One")))
        port = free_port()
        main = configure(tmp_path, origin, port)
        with start_davproxy(main, port=port) as proxy:
            answers = []
            for target in (b"abc", b"*", b"a/b", b"http:x"):
                with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                    conn.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                    answers.append(conn.recv(100).split(b"\r\n")[0])
            time.sleep(0.3)
            log = proxy.log_path.read_text(encoding="utf-8", errors="replace")
    assert all(b" 400 " in answer for answer in answers), answers
    assert "Traceback" not in log and "InvalidURLError" not in log, log[-3000:]
    refused = [line for line in log.splitlines() if "refused an unparsable request" in line]
    assert len(refused) >= 3 and all(" INFO aiohttp.server: " in line for line in refused)
    # the line names what was refused (in the C parser's words: "Invalid characters in
    # url: b'GET abc HTTP/1.1'")
    assert any("from 127.0.0.1 (400): " in line and "abc" in line for line in refused), refused
