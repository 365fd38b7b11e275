"""RFC 6578 collection synchronisation: one engine for every collection davproxy serves.

A collection that davproxy serves from its own store (the notification collection, a
feed, and later anything else) describes itself as a ``SyncSource``: a random or
derived *tag* that ties tokens to that one collection, its current *revision*, the
oldest revision it can still report changes from, and a way to list the members that
changed after a revision.  This module does the rest the same way for all of them:

- tokens: ``<prefix><tag>-<revision>``; a token of another collection, a malformed one,
  one from the future or one older than the kept history is 403 ``DAV:valid-sync-token``
  (§3.2);
- ``DAV:sync-level`` 1 (and ``infinite``, which is the same for collections without
  child collections, §3.3);
- ``DAV:limit``/``DAV:nresults``: at most that many members, then the request-URI with
  507 and ``DAV:number-of-matches-within-limits``, and a token for exactly that page
  (§3.6);
- an initial sync (empty token) lists only members that exist; later syncs report
  removed members as a 404 response (§3.5);
- every changed member carries at least one propstat, even when the client asks for
  an empty ``DAV:prop`` (RFC 4918 §14.24: a response holds a status or propstats).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from lxml import etree

from davproxy.dav import davxml
from davproxy.dav.davxml import DAV, PropRequest, element
from davproxy.dav.errors import SUPPORTED_REPORT, VALID_SYNC_TOKEN, DavError

SYNC_COLLECTION = f"{{{DAV}}}sync-collection"
SYNC_TOKEN = f"{{{DAV}}}sync-token"
SYNC_LEVEL = f"{{{DAV}}}sync-level"
NRESULTS = f"{{{DAV}}}limit/{{{DAV}}}nresults"
WITHIN_LIMITS = f"{{{DAV}}}number-of-matches-within-limits"
# A client may ask for no more than this many members in one page.
MAX_LIMIT = 100_000


class Change(Protocol):
    """A member as the collection's change log holds it."""

    @property
    def revision(self) -> int: ...

    @property
    def deleted(self) -> bool: ...


C = TypeVar("C", bound=Change)
C_co = TypeVar("C_co", bound=Change, covariant=True)


class Tokens(Protocol):
    """What tokens of a collection are tied to: its tag and the revisions it can name."""

    @property
    def token_prefix(self) -> str: ...

    @property
    def tag(self) -> str: ...

    @property
    def revision(self) -> int: ...

    @property
    def min_revision(self) -> int: ...


class SyncSource(Tokens, Protocol[C_co]):
    """What a collection tells the engine about itself: its tokens and its change log."""

    def changes(self, since: int, limit: int | None, live_only: bool) -> Sequence[C_co]:
        """Members changed after ``since``, oldest first, at most ``limit``."""
        ...


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """A parsed ``DAV:sync-collection`` report."""

    token: str
    limit: int | None
    wanted: PropRequest


@dataclass(frozen=True, slots=True)
class Page(Generic[C]):
    changes: Sequence[C]
    revision: int  # what a token for exactly this page stands for
    truncated: bool


def token(source: Tokens, revision: int | None = None) -> str:
    return f"{source.token_prefix}{source.tag}-{source.revision if revision is None else revision}"


def token_revision(value: str, source: Tokens) -> int | None:
    """The revision a client's token stands for ('' = 0), or None when it is not valid
    for this collection: another one's, malformed, in the future, or older than history."""
    value = value.strip()
    if not value:
        return 0
    prefix = f"{source.token_prefix}{source.tag}-"
    digits = value[len(prefix) :]
    if not value.startswith(prefix) or not (digits.isascii() and digits.isdigit()):
        return None
    if len(digits) > 18:
        return None
    revision = int(digits)
    if revision > source.revision or revision < source.min_revision:
        return None
    return revision


def positive_limit(value: str | None) -> int | None:
    """A client's page size (``D:nresults`` or ``Prefer: limit``); None if not usable."""
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        return None
    return min(int(value), MAX_LIMIT)


def parse_request(root: etree._Element) -> SyncRequest:
    """A ``DAV:sync-collection`` body; 400 for a sync-level or limit the engine cannot do."""
    if root.tag != SYNC_COLLECTION:
        raise DavError(403, SUPPORTED_REPORT, f"report {root.tag} is not supported here")
    level = (root.findtext(SYNC_LEVEL) or "1").strip()
    if level not in ("1", "infinite"):
        raise DavError(400, None, f"sync-level must be 1 or infinite, not {level!r}")
    limit = None
    nresults = root.findtext(NRESULTS)
    if nresults is not None:
        limit = positive_limit(nresults)
        if limit is None:
            raise DavError(400, None, "D:nresults must be a positive integer")
    prop = root.find(davxml.PROP)
    names = tuple(str(p.tag) for p in prop if isinstance(p.tag, str)) if prop is not None else ()
    return SyncRequest(root.findtext(SYNC_TOKEN) or "", limit, PropRequest("prop", names))


def check_depth(depth: str | None) -> None:
    """RFC 6578 §3.2 wants Depth: 0, but python-caldav sends 1 and Radicale and Xandikos
    accept it: davproxy's collections must sync like the calendars next to them."""
    if (depth or "0").strip() not in ("0", "1"):
        raise DavError(400, None, "sync-collection is a Depth: 0 report (RFC 6578 §3.2)")


def since(source: Tokens, value: str) -> int:
    """The revision a client's token stands for, or 403 ``DAV:valid-sync-token``."""
    revision = token_revision(value, source)
    if revision is None:
        raise DavError(403, VALID_SYNC_TOKEN, "unknown or expired sync token")
    return revision


def page(source: SyncSource[C], after: int, limit: int | None) -> Page[C]:
    """Changes after ``after`` (live members only on an initial sync), cut at ``limit``."""
    rows = source.changes(after, None if limit is None else limit + 1, after == 0)
    if limit is not None and len(rows) > limit:
        rows = rows[:limit]
        return Page(rows, rows[-1].revision, True)
    newest = max([source.revision, *(r.revision for r in rows[-1:])])
    return Page(rows, newest, False)


def report(
    source: SyncSource[C],
    request: SyncRequest,
    base: str,
    path_of: Callable[[C], str],
    member_answer: Callable[[C, PropRequest], etree._Element],
) -> etree._Element:
    """The whole ``DAV:multistatus`` answer to a sync-collection report on ``base``."""
    found = page(source, since(source, request.token), request.limit)
    responses = []
    for change in found.changes:
        if change.deleted:
            responses.append(davxml.status_response(path_of(change), 404))
            continue
        node = member_answer(change, request.wanted)
        if node.find(davxml.PROPSTAT) is None:  # empty D:prop: still one propstat
            node.append(davxml.propstat(200, []))
        responses.append(node)
    if found.truncated:
        cut = davxml.status_response(base, 507)
        cut.append(element(davxml.ERROR, element(WITHIN_LIMITS)))
        responses.append(cut)
    document = davxml.multistatus(*responses)
    document.append(element(SYNC_TOKEN, text=token(source, found.revision)))
    return document
