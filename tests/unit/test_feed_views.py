"""FeedServer's whole-feed cache against the store (no HTTP needed)."""

from __future__ import annotations

from pathlib import Path

from davproxy.feeds.split import split_feed
from davproxy.feeds.store import FeedStore
from davproxy.feeds.views import FeedServer
from davproxy.store import Store
from tests.feed_origin import calendar, event


def _import(feeds: FeedStore, url: str, body: str) -> int:
    with feeds.transaction():
        source = feeds.source_ensure(url)
        split = split_feed(body.encode())
        revision = feeds.record_changes(source, split.resources.values(), (), 0.0)
        feeds.source_update(source.id, revision=revision, status="ok")
    return source.id


def test_whole_feed_cache_never_serves_a_deleted_source_under_a_reused_id(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.sqlite3")
    feeds = FeedStore(store)
    server = FeedServer(feeds, 1 << 20)
    first = _import(feeds, "https://a.example/a.ics", calendar(event("a@x", "From A")))
    body_a, etag_a = server.full(feeds.source(first))  # type: ignore[arg-type]
    with feeds.transaction():
        feeds.drop_unused_sources()  # no subscription refers to it
    second = _import(feeds, "https://b.example/b.ics", calendar(event("b@x", "From B")))
    assert second == first  # SQLite reused the row id: the cache must not care
    body_b, etag_b = server.full(feeds.source(second))  # type: ignore[arg-type]
    assert b"From A" in body_a
    assert b"From B" in body_b and b"From A" not in body_b
    assert etag_b != etag_a
    store.close()
