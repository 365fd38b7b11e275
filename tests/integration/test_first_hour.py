"""The README's first hour, run as printed: ``davproxy demo`` starts, its ``export``
line is taken as a user would paste it, and every shell block between the
``first-hour`` markers of README.md runs in bash from the repository folder.  Each
``# → …`` line under a command is a line its output must contain (``…`` stands for
anything).  So the README cannot drift from what the demo does."""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from davproxy.ops.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]
DAVPROXY = ROOT / ".venv" / "bin" / "davproxy"


def first_hour_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("<!-- first-hour:begin -->", 1)[1].split("<!-- first-hour:end -->", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def expected_lines(block: str) -> list[str]:
    return [line.split("# → ", 1)[1] for line in block.splitlines() if line.startswith("# → ")]


def matches(expected: str, output: str) -> bool:
    pattern = r"\s+".join(
        ".*".join(re.escape(piece) for piece in word.split("…")) for word in expected.split()
    )
    return any(re.search(pattern, line) for line in output.splitlines())


def demo_exports(process: subprocess.Popen[str], seconds: float = 60) -> dict[str, str]:
    """The variables of the ``export`` line the demo prints once it is listening."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    while True:
        line = lines.get(timeout=seconds)
        if not line:
            raise AssertionError("the demo ended before printing its export line")
        if line.strip().startswith("export "):
            return dict(word.split("=", 1) for word in shlex.split(line.strip())[1:])


@pytest.mark.skipif(not DAVPROXY.exists(), reason="needs the checkout's .venv (make test)")
def test_readme_first_hour_runs_as_printed(tmp_path: Path) -> None:
    blocks = first_hour_blocks()
    assert len(blocks) >= 6
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "davproxy", "demo", "--data", str(tmp_path / "demo-data"),
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        exports = demo_exports(process)
        assert set(exports) == {"DAV", "ALICE", "BOB", "CAROL", "FEEDS", "DEMO"}
        assert exports["DAV"] == f"http://127.0.0.1:{port}"
        env = {**os.environ, **exports}
        for number, block in enumerate(blocks, 1):
            if "feeds/team.ics" in block:
                # The demo's origin (the stdlib's file server) answers If-Modified-Since
                # to the second: an edit in the same second as davproxy's last fetch
                # would get a 304.  A person editing the file is never that quick.
                time.sleep(1.1)
            done = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", block],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            report = (
                f"block {number}:\n{block}\n--- output:\n{done.stdout}\n--- stderr:\n{done.stderr}"
            )
            assert done.returncode == 0, report
            for line in expected_lines(block):
                assert matches(line, done.stdout), f"missing {line!r} in {report}"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
