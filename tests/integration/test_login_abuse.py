"""Password guessing through a real davproxy: failed logins are slowed (lower bounds only,
and ordering: nothing else waits for them), floods from one address are refused, every
access line names the client, the metrics count failures, and the documented fail2ban
filter matches the lines davproxy wrote."""

from __future__ import annotations

import asyncio
import configparser
import ipaddress
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from davproxy.edge.guard import LoginGuard
from davproxy.ops.embedded import ServerProcess, start_davproxy, start_radicale
from tests.helpers import basic, fetch, raw_session, write_config, write_htpasswd

ROOT = Path(__file__).resolve().parents[2]
FILTER = ROOT / "docs" / "fail2ban" / "filter.d-davproxy.conf"
FRONT = "203.0.113.7"  # the client a trusted front (127.0.0.1) reports
DELAY_MAX = 2.0


def failregex() -> re.Pattern[str]:
    """The filter's expression, with fail2ban's <ADDR> as a named group."""
    parser = configparser.RawConfigParser()
    parser.read(FILTER, encoding="utf-8")
    pattern = parser.get("Definition", "failregex").strip()
    return re.compile(pattern.replace("<ADDR>", r"(?P<host>[0-9A-Fa-f:.]+)"))


def banned_hosts(log: str) -> list[str]:
    """What fail2ban would count: the date cut off, then the failregex."""
    pattern = failregex()
    hosts = []
    for line in log.splitlines():
        rest = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", "", line)
        found = pattern.search(rest)
        if found:
            hosts.append(str(ipaddress.ip_address(found.group("host"))))
    return hosts


@pytest.fixture
def proxy_auth(tmp_path: Path):  # type: ignore[no-untyped-def]
    with start_radicale(tmp_path / "radicale", auth="x-remote-user") as radicale:
        main, port = write_config(
            tmp_path / "davproxy", upstream_url=radicale.url, kind="radicale",
            mode="proxy-auth", htpasswd=write_htpasswd(tmp_path / "users.htpasswd"),
            server_extra=f'forwarded_allow_ips = ["127.0.0.1/32"]\nlogin_delay_max = {DELAY_MAX}',
        )  # fmt: skip
        with start_davproxy(main, port=port) as proxy:
            yield proxy


async def timed(session, method: str, url: str, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    answer = await fetch(session, method, url, headers)
    return answer, time.perf_counter() - started


async def test_guessing_is_slowed_flooding_refused_and_logged(proxy_auth: ServerProcess) -> None:
    proxy = proxy_auth
    url = proxy.url.rstrip("/") + "/alice/"
    front = {"X-Forwarded-For": FRONT, "Depth": "0"}
    guess = {**basic("alice", "guess"), **front}
    expected = LoginGuard(DELAY_MAX)
    async with raw_session() as session:
        ok, _ = await timed(session, "PROPFIND", url, {**basic("alice"), **front})
        assert ok.status == 207
        took = []
        for _ in range(7):
            answer, seconds = await timed(session, "PROPFIND", url, guess)
            assert answer.status == 401
            took.append(seconds)
        # lower bounds only: the n-th attempt waited at least the delay after n-1 failures
        for n, seconds in enumerate(took):
            assert seconds >= expected.delay_after(n) * 0.95, (n, took)
        assert sum(took) >= 0.5 + 1.0 + 2.0 + 2.0

        # a guess waiting its turn blocks nobody: alice, whose password worked before,
        # is answered first although she asked after it
        waiting = asyncio.create_task(timed(session, "PROPFIND", url, guess))
        await asyncio.sleep(0.1)
        mine = await fetch(session, "PROPFIND", url, {**basic("alice"), **front})
        assert mine.status == 207 and not waiting.done()
        assert (await waiting)[0].status == 401

        # a flood from the address: queued one by one, the rest refused unchecked
        flood = await asyncio.gather(*(fetch(session, "PROPFIND", url, guess) for _ in range(12)))
        statuses = sorted(answer.status for answer in flood)
        assert 429 in statuses and 401 in statuses, statuses
        refused = next(answer for answer in flood if answer.status == 429)
        assert refused.header("Retry-After") == str(int(DELAY_MAX))

        metrics = await fetch(session, "GET", proxy.url.rstrip("/") + "/.davproxy/metrics")
    text = metrics.body.decode()
    failures = float(re.search(r"^davproxy_login_failures_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    refusals = float(re.search(r"^davproxy_login_refusals_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert failures == 8 + statuses.count(401) and refusals == statuses.count(429)

    log = proxy.log_path.read_text(encoding="utf-8")
    access = [line for line in log.splitlines() if " davproxy.access: " in line]
    assert access and all(" davproxy.access: client=" in line for line in access)
    assert f"client={FRONT} PROPFIND /alice/ route=passthrough user=alice status=401" in log
    assert "login=refused" in log
    # the fail2ban filter counts exactly the failed and refused attempts, by the client
    hosts = banned_hosts(log)
    assert hosts == [FRONT] * int(failures + refusals), hosts
    if shutil.which("fail2ban-regex"):  # the real tool, where it is installed
        run = subprocess.run(
            ["fail2ban-regex", str(proxy.log_path), str(FILTER)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert f"{int(failures + refusals)} matched" in run.stdout, run.stdout


async def test_upstream_basic_counts_the_upstreams_refusals(tmp_path: Path) -> None:
    """upstream-basic: Radicale checks the password of a passthrough request; its 401 is
    a failed login for davproxy too (Radicale's own delay is off behind davproxy)."""
    htpasswd = write_htpasswd(tmp_path / "radicale-users", plain=True)
    with start_radicale(tmp_path / "radicale", auth="htpasswd", htpasswd=htpasswd) as radicale:
        main, port = write_config(
            tmp_path / "davproxy", upstream_url=radicale.url, kind="radicale",
            mode="upstream-basic", server_extra=f"login_delay_max = {DELAY_MAX}",
        )  # fmt: skip
        with start_davproxy(main, port=port) as proxy:
            url = proxy.url.rstrip("/") + "/bob/"
            async with raw_session() as session:
                took = []
                for _ in range(5):
                    answer, seconds = await timed(
                        session, "PROPFIND", url, {**basic("bob", "guess"), "Depth": "0"}
                    )
                    assert answer.status == 401
                    took.append(seconds)
            assert took[3] >= 0.5 * 0.95 and took[4] >= 1.0 * 0.95, took
            log = proxy.log_path.read_text(encoding="utf-8")
    assert banned_hosts(log) == ["127.0.0.1"] * 5
    assert "route=passthrough user=bob status=401" in log
