"""The client address in access lines and for login throttling: the TCP peer, or what a
trusted front (``forwarded_allow_ips``) says in X-Forwarded-For, read from the right."""

from __future__ import annotations

from unittest import mock

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from davproxy.upstream.proxy import client_address


def request(peer: str, *forwarded: str):  # type: ignore[no-untyped-def]
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 40000) if name == "peername" else default
    )
    headers = CIMultiDict(("X-Forwarded-For", value) for value in forwarded)
    return make_mocked_request("GET", "/alice/", headers=headers, transport=transport)


FRONT = ("127.0.0.1/32", "10.0.0.0/8")


def test_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    assert client_address(request("203.0.113.9"), ()) == "203.0.113.9"
    assert client_address(request("203.0.113.9", "198.51.100.1"), FRONT) == "203.0.113.9"


def test_trusted_front_names_the_client() -> None:
    assert client_address(request("127.0.0.1", "198.51.100.1"), FRONT) == "198.51.100.1"
    # a chain of trusted fronts is walked from the right
    assert client_address(request("127.0.0.1", "198.51.100.1, 10.1.2.3"), FRONT) == "198.51.100.1"
    assert client_address(request("127.0.0.1", "198.51.100.1", "10.1.2.3"), FRONT) == "198.51.100.1"
    # what the client wrote left of its own address is not believed
    forged = client_address(request("127.0.0.1", "192.0.2.66, 198.51.100.1"), FRONT)
    assert forged == "198.51.100.1"
    assert client_address(request("127.0.0.1", "[2001:db8::1]"), FRONT) == "2001:db8::1"


def test_garbage_stops_at_the_last_real_address() -> None:
    assert client_address(request("127.0.0.1", "not-an-ip"), FRONT) == "127.0.0.1"
    assert client_address(request("127.0.0.1", "bad, 10.1.2.3"), FRONT) == "10.1.2.3"
    assert client_address(request("127.0.0.1"), FRONT) == "127.0.0.1"
