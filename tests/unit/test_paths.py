from yarl import URL

from davproxy.dav.paths import PathMap, quote_segment

UP = URL("http://127.0.0.1:5232")


def test_identity_map_changes_nothing() -> None:
    m = PathMap("/", "/")
    assert m.identity
    assert m.to_upstream("/alice/cal/") == "/alice/cal/"
    assert m.to_public("/alice/cal/") == "/alice/cal/"


def test_prefix_map_both_ways_keeps_encoding() -> None:
    m = PathMap("/dav/", "/radicale/")
    assert m.to_upstream("/dav/alice%40corp/my%20cal/") == "/radicale/alice%40corp/my%20cal/"
    assert m.to_public("/radicale/alice%40corp/my%20cal/") == "/dav/alice%40corp/my%20cal/"
    # the prefix itself without its trailing slash
    assert m.to_upstream("/dav") == "/radicale/"
    assert m.to_public("/radicale") == "/dav"
    # outside the prefix: not ours to map
    assert m.to_upstream("/davx/a") is None
    assert m.to_public("/elsewhere/a") == "/elsewhere/a"


def test_absolute_hrefs_map_for_both_origins() -> None:
    m = PathMap("/dav/", "/")
    public = "https://cal.example.org"
    assert m.href_to_public("http://127.0.0.1:5232/alice/x.ics", UP, public) == (
        "https://cal.example.org/dav/alice/x.ics"
    )
    assert m.href_to_public("https://cal.example.org/alice/x.ics?a=1", UP, public) == (
        "https://cal.example.org/dav/alice/x.ics?a=1"
    )
    # a foreign absolute URL is left alone
    assert (
        m.href_to_public("http://other.example/alice/", UP, public) == "http://other.example/alice/"
    )
    assert m.href_to_public("mailto:bob@example.org", UP, public) == "mailto:bob@example.org"


def test_client_hrefs_map_to_upstream() -> None:
    m = PathMap("/dav/", "/up/")
    assert m.href_to_upstream("/dav/alice/a.ics") == "/up/alice/a.ics"
    assert m.href_to_upstream("https://cal.example.org/dav/alice/a%20b.ics") == (
        "https://cal.example.org/up/alice/a%20b.ics"
    )
    assert m.href_to_upstream("/other/x") == "/other/x"
    assert m.href_to_upstream("relative/x") == "relative/x"


def test_quote_segment_keeps_at_and_encodes_slash() -> None:
    assert quote_segment("alice@corp.example") == "alice@corp.example"
    assert quote_segment("a/b c") == "a%2Fb%20c"
