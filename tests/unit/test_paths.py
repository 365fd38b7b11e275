import posixpath
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from radicale.pathutils import sanitize_path
from yarl import URL

from davproxy.dav.paths import (
    PathMap,
    PathRejected,
    canonical,
    quote_segment,
    resolve_href,
    resolve_path,
    within,
)

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


# -- the canonical form of request paths (resolve_path) ---------------------------------


@pytest.mark.parametrize(
    "raw, resolved",
    [
        ("/", "/"),
        ("//", "/"),
        ("/bob/shared-alice/", "/bob/shared-alice/"),
        ("/bob/shared-alice//", "/bob/shared-alice/"),  # CS:shared-as + "/" by a client
        ("/bob/shared-alice//event.ics", "/bob/shared-alice/event.ics"),
        ("/bob/shared-alice///", "/bob/shared-alice/"),
        ("//bob/shared-alice/", "/bob/shared-alice/"),
        ("/bob//shared-alice", "/bob/shared-alice"),  # no trailing slash stays without
        ("/bob/shared-alice/event.ics//", "/bob/shared-alice/event.ics/"),  # one kept
        ("/bob/a%20b//x.ics", "/bob/a%20b/x.ics"),  # the client's encoding is kept
        ("/%7Ebob//caf%C3%A9/", "/%7Ebob/caf%C3%A9/"),
    ],
)
def test_canonical_form_of_paths_the_upstreams_accept(raw: str, resolved: str) -> None:
    assert resolve_path(raw) == resolved
    assert resolve_path(resolved) == resolved  # idempotent: a fixed point


@pytest.mark.parametrize(
    "raw, why",
    [
        ("bob/x/", "must start with '/'"),
        ("/bob/../alice/", "'.' and '..'"),
        ("/bob/./x/", "'.' and '..'"),
        ("/bob/%2e%2e/alice/", "'.' and '..'"),
        ("/bob/%2E%2e//alice/", "'.' and '..'"),
        ("/bob//..//alice/", "'.' and '..'"),
        ("/bob/copy/..%2falice/", "encoded separators"),
        ("/bob/copy%2F/x", "encoded separators"),
        ("/bob/copy/..%5Calice/", "encoded separators"),
        ("/bob/%00.ics", "control characters"),
        ("/bob/a%0ab.ics", "control characters"),
        ("/bob/%ff.ics", "UTF-8"),
        ("/bob/a b.ics", "percent-encoded"),
        ("/bob/\u00e9.ics", "percent-encoded"),
        ("/bob/a\tb", "percent-encoded"),
    ],
)
def test_what_stays_refused(raw: str, why: str) -> None:
    with pytest.raises(PathRejected, match=why):
        resolve_path(raw)


def test_hrefs_and_destinations_resolve_like_paths() -> None:
    assert resolve_href("http://dav.example:8080//bob//x.ics?a=1") == (
        "http://dav.example:8080/bob/x.ics?a=1"
    )
    assert resolve_href(" /bob/copy//x.ics ") == "/bob/copy/x.ics"
    assert resolve_href("https://dav.example") == "https://dav.example/"
    with pytest.raises(PathRejected):
        resolve_href("https://dav.example/bob/copy/../private/x.ics")
    with pytest.raises(PathRejected):
        resolve_href("relative/x.ics")


def test_canonical_keys_collapse_empty_segments_too() -> None:
    assert canonical("bob//copy/") == canonical("bob/copy/") == "bob/copy/"
    assert canonical("/%7Ebob//x%40y") == "/~bob/x@y"
    assert canonical("") == "" and canonical("/") == "/" and canonical("//") == "/"
    assert within("bob/copy/x.ics", "bob/copy/") == "x.ics"
    assert within("bob/copy", "bob/copy/") == ""
    assert within("bob/copy-2/x.ics", "bob/copy/") is None


# Path pieces that make the upstreams resolve differently if davproxy got them wrong.
_PIECES = ["", "", ".", "..", "%2e", "%2E%2e", "%2f", "%2F", "%5c", "%00", "%ff", "%25",
           "%2e%2e%2f", "a", "x.ics", "copy", "bob", "alice", "work", "%7E", "~", "a%20b"]  # fmt: skip
PATHS = st.one_of(
    st.lists(st.sampled_from(_PIECES), max_size=9).map(lambda parts: "/" + "/".join(parts)),
    st.text(alphabet="/.%2eEfFa5c~", max_size=30).map(lambda tail: "/" + tail),
)
# A copy at /bob/copy/ of alice's /alice/work/, as the store keeps them.
MOUNT, COLLECTION = "bob/copy/", "alice/work/"


def radicale_resolves(path: str) -> str:
    """What Radicale does with a request path: WSGI decodes it, sanitize_path resolves."""
    return sanitize_path(unquote(path))


def xandikos_resolves(path: str) -> str:
    """What Xandikos does: aiohttp decodes it, its store maps normpath of the path."""
    return posixpath.normpath("/" + unquote(path).lstrip("/"))


@settings(max_examples=600, deadline=None)
@given(PATHS)
def test_resolved_paths_are_what_the_upstreams_resolve(raw: str) -> None:
    try:
        resolved = resolve_path(raw)
    except PathRejected:
        return
    segments = resolved.split("/")[1:]
    assert "" not in segments[:-1] and "." not in segments and ".." not in segments
    # the upstream resolves the raw path and davproxy's form to the same resource, and
    # leaves davproxy's form as it is: there is nothing left for it to reinterpret
    assert radicale_resolves(resolved) == radicale_resolves(raw) == unquote(resolved)
    assert xandikos_resolves(resolved) == xandikos_resolves(raw)


@settings(max_examples=600, deadline=None)
@given(PATHS)
def test_no_canonical_form_leaves_a_copy(raw: str) -> None:
    """A path routed into bob's copy is forwarded as alice's collection plus the part
    below the copy; whatever the client wrote, the upstream never resolves that to
    anything outside alice's collection."""
    try:
        resolved = resolve_path("/bob/copy" + raw)
    except PathRejected:
        return
    below = within(canonical(resolved[1:]), MOUNT)
    if below is None:  # not under the copy (e.g. /bob/copy-x): passthrough as bob
        assert not canonical(resolved[1:]).startswith(MOUNT)
        return
    forwarded = "/" + COLLECTION + below
    for resolves in (radicale_resolves, xandikos_resolves):
        landed = resolves(forwarded)
        assert landed.rstrip("/") == "/alice/work" or landed.startswith("/alice/work/"), (
            raw,
            landed,
        )
