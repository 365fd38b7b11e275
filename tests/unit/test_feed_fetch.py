"""Fetching feeds (davproxy.feeds.fetch) against a real HTTP origin on loopback.

Nothing is mocked: every fetch goes over TCP to ``tests.feed_origin.Origin``, which records
each request it sees, so the tests can check the exact headers sent and count requests.
"""

from __future__ import annotations

import email.utils
import gzip
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace

import pytest

from davproxy.config import FeedsConfig
from davproxy.feeds.fetch import (
    ACCEPT,
    Fetcher,
    GuardedResolver,
    OriginRefused,
    address_allowed,
    parse_retry_after,
)
from tests.feed_origin import Origin, calendar, event

#: the origin listens on 127.0.0.1, which davproxy refuses unless allowed
LOOPBACK = FeedsConfig(allow_networks=("127.0.0.0/8",), fetch_timeout=5.0)
BODY = calendar(event("a@x", "Alpha"), event("b@x", "Beta")).encode()


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    server = Origin()
    with server.running():
        yield server


@pytest.fixture
async def make_fetcher() -> AsyncIterator[Callable[..., Fetcher]]:
    made: list[Fetcher] = []

    def make(**overrides: object) -> Fetcher:
        fetcher = Fetcher(replace(LOOPBACK, **overrides))  # type: ignore[arg-type]
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        await fetcher.close()


def last_headers(origin: Origin, path: str) -> dict[str, str]:
    seen = [s for s in origin.seen if s.path == path]
    assert seen, f"origin never saw {path}"
    return {k.lower(): v for k, v in seen[-1].headers.items()}


def redirect(origin: Origin, path: str, status: int, location: str) -> None:
    origin.serve(path, b"", status=status, headers={"Location": location})


# --- plain and conditional GETs -----------------------------------------------------------


async def test_plain_fetch_returns_body_and_validators(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    stamp = "Mon, 05 Jan 2026 09:00:00 GMT"
    origin.serve("/plain.ics", BODY, etag='"p1"', last_modified=stamp)
    result = await make_fetcher().fetch(origin.url("/plain.ics"))
    assert result.outcome == "fetched"
    assert result.body == BODY
    assert result.status == 200
    assert result.etag == '"p1"'
    assert result.last_modified == stamp
    assert result.moved_to is None and result.retry_after is None and result.error == ""
    sent = last_headers(origin, "/plain.ics")
    assert "if-none-match" not in sent and "if-modified-since" not in sent
    assert sent["user-agent"] == LOOPBACK.user_agent
    assert sent["accept"] == ACCEPT


async def test_conditional_get_sends_exact_etag_and_304_is_not_modified(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    etag = 'W/"weird, etag; v=1"'
    origin.serve("/cond-etag.ics", BODY, etag=etag)
    result = await make_fetcher().fetch(origin.url("/cond-etag.ics"), etag=etag)
    assert result.outcome == "not-modified"
    assert result.status == 304
    assert result.body == b""
    assert last_headers(origin, "/cond-etag.ics")["if-none-match"] == etag
    assert origin.hits("/cond-etag.ics") == 1


async def test_conditional_get_sends_exact_last_modified_string(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    # not a canonical HTTP date: it must go back byte for byte, never re-formatted
    stamp = "Monday, 05-Jan-26 09:00:00 GMT"
    origin.serve("/cond-lm.ics", BODY, last_modified=stamp)
    result = await make_fetcher().fetch(origin.url("/cond-lm.ics"), last_modified=stamp)
    assert result.outcome == "not-modified"
    sent = last_headers(origin, "/cond-lm.ics")
    assert sent["if-modified-since"] == stamp
    assert "if-none-match" not in sent


async def test_stale_validators_get_the_new_body(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    origin.serve("/cond-stale.ics", BODY, etag='"v2"')
    result = await make_fetcher().fetch(origin.url("/cond-stale.ics"), etag='"v1"')
    assert result.outcome == "fetched"
    assert result.body == BODY
    assert result.etag == '"v2"'
    assert last_headers(origin, "/cond-stale.ics")["if-none-match"] == '"v1"'


async def test_error_status_fails_without_retry_after(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    origin.serve("/gone.ics", b"gone", status=500, headers={"Retry-After": "60"})
    result = await make_fetcher().fetch(origin.url("/gone.ics"))
    assert result.outcome == "failed"
    assert result.status == 500
    assert result.error == "origin answered 500 Internal Server Error"
    assert result.retry_after is None  # only 429 and 503 carry a meaningful Retry-After
    missing = await make_fetcher().fetch(origin.url("/no-such-feed.ics"))
    assert missing.outcome == "failed" and missing.status == 404
    assert "404" in missing.error


# --- redirects ----------------------------------------------------------------------------


async def test_chain_of_permanent_redirects_reports_the_final_url(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    redirect(origin, "/perm/a", 301, "/perm/b")
    redirect(origin, "/perm/b", 308, origin.url("/perm/c"))  # absolute Location too
    redirect(origin, "/perm/c", 301, "final.ics#fragment")  # relative, fragment dropped
    origin.serve("/perm/final.ics", BODY)
    result = await make_fetcher().fetch(origin.url("/perm/a"))
    assert result.outcome == "fetched"
    assert result.body == BODY
    assert result.moved_to == origin.url("/perm/final.ics")
    assert [origin.hits(p) for p in ("/perm/a", "/perm/b", "/perm/c")] == [1, 1, 1]


async def test_redirected_requests_keep_the_conditional_headers(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    redirect(origin, "/perm304/a", 301, "/perm304/b")
    origin.serve("/perm304/b", BODY, etag='"z"')
    result = await make_fetcher().fetch(origin.url("/perm304/a"), etag='"z"')
    assert result.outcome == "not-modified"
    assert result.moved_to == origin.url("/perm304/b")
    assert last_headers(origin, "/perm304/a")["if-none-match"] == '"z"'
    assert last_headers(origin, "/perm304/b")["if-none-match"] == '"z"'


@pytest.mark.parametrize("temporary", [302, 303, 307])
async def test_chain_with_a_temporary_redirect_does_not_move(
    origin: Origin, make_fetcher: Callable[..., Fetcher], temporary: int
) -> None:
    base = f"/temp{temporary}"
    redirect(origin, f"{base}/a", 301, f"{base}/b")
    redirect(origin, f"{base}/b", temporary, f"{base}/c")
    redirect(origin, f"{base}/c", 308, f"{base}/final")
    origin.serve(f"{base}/final", BODY)
    result = await make_fetcher().fetch(origin.url(f"{base}/a"))
    assert result.outcome == "fetched"
    assert result.body == BODY
    assert result.moved_to is None


async def test_redirect_loop_fails_clearly(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    redirect(origin, "/loop/a", 301, "/loop/b")
    redirect(origin, "/loop/b", 302, "/loop/a")
    result = await make_fetcher(max_redirects=10).fetch(origin.url("/loop/a"))
    assert result.outcome == "failed"
    assert result.error == f"redirect loop at {origin.url('/loop/a')}"
    assert origin.hits("/loop/a") == 1 and origin.hits("/loop/b") == 1


async def test_redirect_to_itself_is_a_loop(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    redirect(origin, "/self", 307, "/self")
    result = await make_fetcher().fetch(origin.url("/self"))
    assert result.outcome == "failed"
    assert result.error.startswith("redirect loop at ")
    assert origin.hits("/self") == 1


async def test_too_many_redirects_fail_and_stop_following(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    for i in range(8):
        redirect(origin, f"/many/{i}", 301, f"/many/{i + 1}")
    origin.serve("/many/8", BODY)
    result = await make_fetcher(max_redirects=3).fetch(origin.url("/many/0"))
    assert result.outcome == "failed"
    assert result.error == "more than 3 redirects"
    assert [origin.hits(f"/many/{i}") for i in range(6)] == [1, 1, 1, 1, 0, 0]


async def test_exactly_max_redirects_is_allowed(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    for i in range(3):
        redirect(origin, f"/three/{i}", 301, f"/three/{i + 1}")
    origin.serve("/three/3", BODY)
    result = await make_fetcher(max_redirects=3).fetch(origin.url("/three/0"))
    assert result.outcome == "fetched"
    assert result.moved_to == origin.url("/three/3")
    zero = await make_fetcher(max_redirects=0).fetch(origin.url("/three/2"))
    assert zero.outcome == "failed" and zero.error == "more than 0 redirects"


async def test_redirect_to_another_scheme_is_refused(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    redirect(origin, "/to-file", 301, "file:///etc/passwd")
    result = await make_fetcher().fetch(origin.url("/to-file"))
    assert result.outcome == "failed"
    assert result.status == 301
    assert result.error == "redirect to file"


@pytest.mark.parametrize("location", ["http://[]@/x", "http://[", "http://h:99999/"])
async def test_unreadable_redirect_is_a_failed_fetch(
    origin: Origin, make_fetcher: Callable[..., Fetcher], location: str
) -> None:
    """yarl raises IndexError for the first (not only ValueError): any exception of
    the URL parser on an origin's Location is a failed fetch, never an escape."""
    redirect(origin, "/odd", 302, location)
    result = await make_fetcher().fetch(origin.url("/odd"))
    assert result.outcome == "failed" and result.status == 302
    assert result.error == f"unreadable redirect to {location!r}"


# --- Retry-After --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_in_seconds(
    origin: Origin, make_fetcher: Callable[..., Fetcher], status: int
) -> None:
    origin.serve(f"/busy{status}", b"slow down", status=status, headers={"Retry-After": "120"})
    result = await make_fetcher().fetch(origin.url(f"/busy{status}"))
    assert result.outcome == "failed"
    assert result.status == status
    assert result.retry_after == 120.0
    assert str(status) in result.error


async def test_retry_after_as_http_date(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    when = email.utils.formatdate(time.time() + 600, usegmt=True)
    origin.serve("/busy-date", b"", status=503, headers={"Retry-After": when})
    result = await make_fetcher().fetch(origin.url("/busy-date"))
    assert result.outcome == "failed"
    assert result.retry_after is not None
    assert 590 <= result.retry_after <= 601


NOW = 1445412450.0  # Wed, 21 Oct 2015 07:27:30 GMT


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0),  # IMF-fixdate
        ("Wednesday, 21-Oct-15 07:28:00 GMT", 30.0),  # obsolete RFC 850 form
        ("Wed, 21 Oct 2015 07:00:00 GMT", 0.0),  # in the past: retry at once
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


@pytest.fixture
def tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_parse_retry_after_asctime_is_gmt_whatever_the_local_zone(tokyo: None) -> None:
    # RFC 9110 §5.6.7: recipients must accept asctime dates, which are always GMT
    assert parse_retry_after("Wed Oct 21 07:28:00 2015", NOW) == 30.0


# --- size and time caps -------------------------------------------------------------------


async def test_body_over_max_bytes_with_content_length_fails(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    origin.serve("/big.ics", b"x" * 5000)
    result = await make_fetcher(max_bytes=4096).fetch(origin.url("/big.ics"))
    assert result.outcome == "failed"
    assert result.body == b""
    assert result.error == "origin body of 5000 bytes exceeds 4096"


async def test_chunked_body_over_max_bytes_fails(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    origin.serve("/big-chunked.ics", b"y" * 6000, drip_seconds=0.001)
    result = await make_fetcher(max_bytes=4096).fetch(origin.url("/big-chunked.ics"))
    assert result.outcome == "failed"
    assert result.error == "origin body exceeds max_bytes (4096)"
    assert last_headers(origin, "/big-chunked.ics")  # it was really fetched


@pytest.mark.parametrize("drip", [0.0, 0.001])
async def test_body_of_exactly_max_bytes_is_accepted(
    origin: Origin, make_fetcher: Callable[..., Fetcher], drip: float
) -> None:
    path = f"/exact-{drip}.ics"
    origin.serve(path, b"z" * 4096, drip_seconds=drip)
    result = await make_fetcher(max_bytes=4096).fetch(origin.url(path))
    assert result.outcome == "fetched"
    assert result.body == b"z" * 4096


async def test_decompressed_size_is_what_counts(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    # a gzip bomb: about 1 KB on the wire, 1 MB once decompressed
    bomb = gzip.compress(b"\0" * (1024 * 1024))
    assert len(bomb) < 4096
    origin.serve("/bomb.ics", bomb, headers={"Content-Encoding": "gzip"})
    result = await make_fetcher(max_bytes=64 * 1024).fetch(origin.url("/bomb.ics"))
    assert result.outcome == "failed"
    assert result.error == f"origin body exceeds max_bytes ({64 * 1024})"


async def test_slow_drip_origin_fails_within_fetch_timeout(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    # 1 KB every 0.1 s for 20 KB would take 2 s
    origin.serve("/drip.ics", b"d" * 20 * 1024, drip_seconds=0.1)
    started = time.monotonic()
    result = await make_fetcher(fetch_timeout=0.5).fetch(origin.url("/drip.ics"))
    elapsed = time.monotonic() - started
    assert result.outcome == "failed"
    assert result.error == "no complete answer within 0.5 s"
    assert 0.4 <= elapsed < 1.5


async def test_timeout_covers_the_whole_redirect_chain(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    redirect(origin, "/drip-hop", 301, "/drip-target.ics")
    origin.serve("/drip-target.ics", b"d" * 20 * 1024, drip_seconds=0.1)
    started = time.monotonic()
    result = await make_fetcher(fetch_timeout=0.5).fetch(origin.url("/drip-hop"))
    assert result.outcome == "failed"
    assert "within 0.5 s" in result.error
    assert time.monotonic() - started < 1.5


async def test_connection_refused_is_a_failure_not_an_exception(
    make_fetcher: Callable[..., Fetcher],
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await make_fetcher().fetch(f"http://127.0.0.1:{port}/x.ics")
    assert result.outcome == "failed"
    assert result.error.startswith("cannot connect:")


# --- SSRF ---------------------------------------------------------------------------------


async def test_literal_loopback_origin_is_refused_without_a_request(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    origin.serve("/ssrf-literal.ics", BODY)
    before = len(origin.seen)
    result = await make_fetcher(allow_networks=()).fetch(origin.url("/ssrf-literal.ics"))
    assert result.outcome == "failed"
    assert result.error == "refused: 127.0.0.1 is not a public address; see [feeds] allow_networks"
    assert len(origin.seen) == before


async def test_name_resolving_to_loopback_is_refused_by_the_resolver(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    origin.serve("/ssrf-name.ics", BODY)
    before = len(origin.seen)
    url = f"http://localhost:{origin.port}/ssrf-name.ics"
    result = await make_fetcher(allow_networks=()).fetch(url)
    assert result.outcome == "failed"
    assert result.error.startswith("refused: localhost resolves only to non-public addresses")
    assert "127.0.0.1" in result.error
    assert len(origin.seen) == before
    # the same name is fetched once its network is allowed
    allowed = await make_fetcher(allow_networks=("127.0.0.0/8", "::1/128")).fetch(url)
    assert allowed.outcome == "fetched" and allowed.body == BODY
    assert origin.hits("/ssrf-name.ics") == 1


async def test_redirect_to_a_non_public_address_is_refused(
    origin: Origin, make_fetcher: Callable[..., Fetcher]
) -> None:
    for path, target in (("/ssrf-hop4", "127.0.0.2"), ("/ssrf-hop6", "[::1]")):
        redirect(origin, path, 301, f"http://{target}:{origin.port}/secret")
        before = len(origin.seen)
        result = await make_fetcher(allow_networks=("127.0.0.1/32",)).fetch(origin.url(path))
        assert result.outcome == "failed"
        assert result.error.startswith(f"refused: {target.strip('[]')} is not a public address")
        assert len(origin.seen) == before + 1  # the hop, nothing after it
        assert origin.hits("/secret") == 0


async def test_guarded_resolver_filters_addresses() -> None:
    closed = GuardedResolver(())
    try:
        with pytest.raises(OriginRefused, match=r"localhost resolves only to non-public"):
            await closed.resolve("localhost", 80, socket.AF_UNSPEC)
    finally:
        await closed.close()
    opened = GuardedResolver(("127.0.0.0/8",))
    try:
        found = await opened.resolve("localhost", 80, socket.AF_INET)
    finally:
        await opened.close()
    assert [r["host"] for r in found] == ["127.0.0.1"]
    assert found[0]["port"] == 80


@pytest.mark.parametrize(
    ("address", "allowed", "ok"),
    [
        ("8.8.8.8", (), True),
        ("2001:4860:4860::8888", (), True),
        ("127.0.0.1", (), False),
        ("::1", (), False),
        ("::ffff:127.0.0.1", (), False),  # IPv4-mapped loopback
        ("::ffff:8.8.8.8", (), True),
        ("10.1.2.3", (), False),
        ("172.16.0.1", (), False),
        ("192.168.1.1", (), False),
        ("169.254.169.254", (), False),  # cloud metadata
        ("fe80::1%eth0", (), False),  # link-local with a zone
        ("fd00::1", (), False),
        ("100.64.0.1", (), False),  # carrier-grade NAT
        ("0.0.0.0", (), False),
        ("224.0.0.1", (), False),
        ("not-an-address", (), False),
        ("", (), False),
        ("10.1.2.3", ("10.0.0.0/8",), True),
        ("192.168.1.1", ("10.0.0.0/8",), False),
        ("::ffff:127.0.0.1", ("127.0.0.0/8",), True),
        ("127.0.0.1", ("127.0.0.1",), True),  # a bare address is a /32
        ("::1", ("127.0.0.0/8",), False),
        ("fe80::1%eth0", ("fe80::/10",), True),
    ],
)
def test_address_allowed(address: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert address_allowed(address, allowed) is ok


async def test_check_origin() -> None:
    closed = Fetcher(replace(LOOPBACK, allow_networks=()))
    try:
        for url in (
            "http://127.0.0.1:8000/x.ics",
            "http://[::1]/x.ics",
            "https://10.0.0.1/x.ics",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:127.0.0.1]/x.ics",
            "http://localhost/x.ics",
        ):
            with pytest.raises(OriginRefused):
                await closed.check_origin(url)
        # public literals pass without a lookup; an unresolvable name is left to the fetches
        await closed.check_origin("http://8.8.8.8/x.ics")
        await closed.check_origin("https://does-not-exist.invalid/x.ics")
    finally:
        await closed.close()
    opened = Fetcher(replace(LOOPBACK, allow_networks=("127.0.0.0/8",)))
    try:
        await opened.check_origin("http://127.0.0.1:8000/x.ics")
        await opened.check_origin("http://localhost/x.ics")
        with pytest.raises(OriginRefused):
            await opened.check_origin("http://10.0.0.1/x.ics")
    finally:
        await opened.close()
