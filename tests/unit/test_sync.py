"""One RFC 6578 engine (davproxy.dav.sync), the same tests for every collection that uses it.

Each scenario runs against the notification collection's change log and a feed's change
log, both over a real SQLite store: three members, then one removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from davproxy.dav import davxml, sync
from davproxy.dav.davxml import PropRequest
from davproxy.dav.errors import DavError
from davproxy.feeds.split import split_feed
from davproxy.feeds.store import FeedStore
from davproxy.feeds.views import FeedLog
from davproxy.sharing.notifications import NotificationLog
from davproxy.store import Store
from tests.feed_origin import calendar, event

NS = {"D": "DAV:"}
BASE = "/c/"


@dataclass
class Collection:
    """A sync source with three live members a, b, c, and a way to remove one."""

    log: Callable[[], Any]  # a fresh view: revisions are read when asked
    remove: Callable[[str], None]
    name_of: Callable[[Any], str]


def _notifications(store: Store) -> Collection:
    with store.transaction():
        for name in ("a", "b", "c"):
            store.notification_put("u", "bob", name, "share-reply", "{}")

    def remove(name: str) -> None:
        with store.transaction():
            store.notification_delete("u", "bob", name)

    return Collection(lambda: NotificationLog(store, "u", "bob"), remove, lambda n: n.name)


def _feed(store: Store) -> Collection:
    feeds = FeedStore(store)
    events = {name: event(f"{name}@x", name) for name in ("a", "b", "c")}
    with feeds.transaction():
        source = feeds.source_ensure("https://origin.example/f.ics")
        resources = split_feed(calendar(*events.values()).encode()).resources
        revision = feeds.record_changes(source, list(resources.values()), (), 0.0)
        feeds.source_update(source.id, revision=revision, status="ok")
    hrefs = {r.uid.split("@")[0]: href for href, r in resources.items()}

    def log() -> FeedLog:
        current = feeds.source(source.id)
        assert current is not None
        return FeedLog(feeds, current)

    def remove(name: str) -> None:
        with feeds.transaction():
            current = log().source
            revision = feeds.record_changes(current, (), [hrefs[name]], 0.0)
            feeds.source_update(current.id, revision=revision)

    return Collection(log, remove, lambda item: item.uid.split("@")[0])


@pytest.fixture(params=["notifications", "feed"])
def collection(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Collection]:
    store = Store.open(tmp_path / "s.sqlite3")
    yield (_notifications if request.param == "notifications" else _feed)(store)
    store.close()


def report(collection: Collection, body: str) -> etree._Element:
    log = collection.log()
    return sync.report(
        log,
        sync.parse_request(davxml.parse(body.encode())),
        BASE,
        lambda change: BASE + collection.name_of(change),
        lambda change, wanted: davxml.answer(
            BASE + collection.name_of(change),
            {"{DAV:}getetag": davxml.element("{DAV:}getetag", text='"e"')},
            wanted,
        ),
    )


def body(token: str = "", prop: str = "<D:getetag/>", extra: str = "") -> str:
    return (
        f'<D:sync-collection xmlns:D="DAV:"><D:sync-token>{token}</D:sync-token>'
        f"<D:sync-level>1</D:sync-level>{extra}<D:prop>{prop}</D:prop></D:sync-collection>"
    )


def members(root: etree._Element) -> dict[str, str | None]:
    """href -> the response's own status (None for a propstat answer)."""
    return {
        r.findtext("D:href", namespaces=NS) or "": r.findtext("D:status", namespaces=NS)
        for r in root.findall("D:response", NS)
    }


def test_initial_sync_lists_live_members_and_a_token(collection: Collection) -> None:
    collection.remove("b")
    root = report(collection, body())
    assert members(root) == {BASE + "a": None, BASE + "c": None}
    assert root.findtext("D:sync-token", namespaces=NS) == sync.token(collection.log())


def test_removed_member_is_a_404_response_after_a_token(collection: Collection) -> None:
    token = report(collection, body()).findtext("D:sync-token", namespaces=NS) or ""
    collection.remove("a")
    root = report(collection, body(token))
    assert members(root) == {BASE + "a": "HTTP/1.1 404 Not Found"}
    assert (
        report(collection, body(root.findtext("D:sync-token", namespaces=NS) or "")).find(
            "D:response", NS
        )
        is None
    )


def test_limit_pages_with_507_and_a_token_for_exactly_that_page(collection: Collection) -> None:
    seen: list[str] = []
    token = ""
    for _ in range(5):
        root = report(
            collection, body(token, extra="<D:limit><D:nresults>2</D:nresults></D:limit>")
        )
        found = members(root)
        cut = found.pop(BASE, None)
        assert len(found) <= 2
        seen += list(found)
        token = root.findtext("D:sync-token", namespaces=NS) or ""
        if cut is None:
            break
        assert cut == "HTTP/1.1 507 Insufficient Storage"
        error = root.find("D:response/D:error/D:number-of-matches-within-limits", NS)
        assert error is not None
    assert sorted(seen) == [BASE + "a", BASE + "b", BASE + "c"]
    assert token == sync.token(collection.log())


def test_empty_prop_still_gives_every_changed_member_a_propstat(collection: Collection) -> None:
    root = report(collection, body(prop=""))
    responses = root.findall("D:response", NS)
    assert len(responses) == 3
    for node in responses:
        assert node.find("D:propstat/D:status", NS) is not None


@pytest.mark.parametrize("level, status", [("infinite", None), ("2", 400), ("0", 400)])
def test_sync_level(collection: Collection, level: str, status: int | None) -> None:
    text = body().replace("<D:sync-level>1</D:sync-level>", f"<D:sync-level>{level}</D:sync-level>")
    if status is None:
        assert len(members(report(collection, text))) == 3
        return
    with pytest.raises(DavError) as error:
        report(collection, text)
    assert error.value.status == status


@pytest.mark.parametrize("nresults", ["0", "-1", "x", "", "1.5"])
def test_unusable_limit_is_400(collection: Collection, nresults: str) -> None:
    with pytest.raises(DavError) as error:
        report(collection, body(extra=f"<D:limit><D:nresults>{nresults}</D:nresults></D:limit>"))
    assert error.value.status == 400


def test_tokens_of_other_collections_or_times_are_403(collection: Collection) -> None:
    log = collection.log()
    good = sync.token(log)
    assert sync.since(log, good) == log.revision
    assert sync.since(log, "") == 0
    for bad in (
        sync.token(log, log.revision + 1),  # from the future
        good.replace(log.tag, "0" * len(log.tag)),  # another collection's
        "http://radicale.org/ns/sync/abc",
        good + "x",
        good[:-1] + "\u00b2",  # a digit isdigit() accepts and int() refuses
        good[:-1] + "9" * 5000,
    ):
        with pytest.raises(DavError) as error:
            sync.since(log, bad)
        assert error.value.status == 403 and error.value.condition == "{DAV:}valid-sync-token"


def test_another_users_notification_token_is_not_valid(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.sqlite3")
    mine, theirs = NotificationLog(store, "u", "bob"), NotificationLog(store, "u", "carol")
    assert mine.tag != theirs.tag
    with pytest.raises(DavError):
        sync.since(mine, sync.token(theirs))
    store.close()


def test_other_reports_are_refused_as_unsupported() -> None:
    with pytest.raises(DavError) as error:
        sync.parse_request(davxml.parse(b'<D:propfind xmlns:D="DAV:"/>'))
    assert error.value.condition == "{DAV:}supported-report"


def test_prop_request_ignores_comments() -> None:
    request = sync.parse_request(davxml.parse(body(prop="<!-- x --><D:getetag/>").encode()))
    assert request.wanted == PropRequest("prop", ("{DAV:}getetag",))
