"""What a feed's objects are compared by, and its calendar-level data.

- RFC 5545 §3.6: property and component order carry no meaning, so an object's
  fingerprint is taken over an order-free normal form without volatile fields.
- RFC 5545 §3.7: the calendar properties (VERSION, PRODID, CALSCALE repeated in every
  resource; the rest kept to serve the whole feed again); RFC 7986 §5.7 REFRESH-INTERVAL
  and X-PUBLISHED-TTL as RFC 5545 §3.3.6 durations.
- Two fetches compared: UIDs added, changed and removed, and whether a loss is
  plausible or needs a second fetch to be believed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from davproxy.feeds.lines import FeedWarning, Line, lex, unescape, value_of

#: Calendar properties repeated in every resource (RFC 5545 §3.7); METHOD is dropped.
HEADER_PROPS = ("VERSION", "PRODID", "CALSCALE")
#: Fields that change without the object changing: DTSTAMP is regenerated on every download by
#: some feeds; LAST-MODIFIED is likewise rewritten by generators that stamp "now", and anything a
#: client would see changes some other line too (iCloud even leaves it stale on an added EXDATE,
#: so it is no evidence either way); PRODID moves with the generator's version, not the data.
#: SEQUENCE is kept: a bump is how organisers announce a change.
VOLATILE_PROPS = frozenset({"DTSTAMP", "LAST-MODIFIED", "PRODID"})

DEFAULT_HEADER = ("VERSION:2.0", "PRODID:-//davproxy//feeds//EN")
DEFAULT_HEADER = ("VERSION:2.0", "PRODID:-//davproxy//feeds//EN")
_DURATION = re.compile(
    r"([+-])?P(?:(\d+)W)?(?:(\d+)D)?(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class FeedMeta:
    """Calendar-level data of a feed, kept once instead of per resource."""

    name: str | None = None
    description: str | None = None
    color: str | None = None
    timezone: str | None = None
    #: REFRESH-INTERVAL, else X-PUBLISHED-TTL, in seconds (a floor for polling); None if absent
    #: or not a positive duration.
    refresh_seconds: int | None = None
    source: str | None = None
    #: raw VERSION/PRODID/CALSCALE lines repeated in each resource
    header: tuple[str, ...] = DEFAULT_HEADER
    #: every other calendar-level raw line except METHOD (X-WR-*, NAME, COLOR, ...), for serving
    #: the whole feed again
    properties: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Diff:
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


def calendar_meta(cal_lines: list[Line], warnings: list[FeedWarning]) -> FeedMeta:
    first: dict[str, Line] = {}
    header: list[str] = []
    props: list[str] = []
    for line in cal_lines:
        if line.name == "METHOD":  # RFC 4791 §4.1: not allowed in stored resources
            continue
        if line.name in first:
            if line.name in HEADER_PROPS:
                continue  # a second VCALENDAR's header
        else:
            first[line.name] = line
        (header if line.name in HEADER_PROPS else props).append(line.raw)
    if "VERSION" not in first:
        header.insert(0, DEFAULT_HEADER[0])
    if "PRODID" not in first:
        header.insert(1, DEFAULT_HEADER[1])

    def text(*names: str) -> str | None:
        for n in names:
            if n in first:
                value = unescape(value_of(first[n].text))
                if value:
                    return value
        return None

    refresh: int | None = None
    for n in ("REFRESH-INTERVAL", "X-PUBLISHED-TTL"):
        if n in first:
            secs = parse_duration_seconds(value_of(first[n].text))
            if secs is not None and secs > 0:
                refresh = secs
                break
            warnings.append(FeedWarning("bad-refresh", first[n].lineno, first[n].text[:80]))
    return FeedMeta(
        name=text("NAME", "X-WR-CALNAME"),
        description=text("DESCRIPTION", "X-WR-CALDESC"),
        color=text("COLOR", "X-APPLE-CALENDAR-COLOR"),
        timezone=text("X-WR-TIMEZONE"),
        refresh_seconds=refresh,
        source=text("SOURCE"),
        header=tuple(header),
        properties=tuple(props),
    )


def canonical_form(lines: Iterable[Line]) -> str:
    """Order-free normal form: properties and sub-components sorted, volatile fields dropped.

    Property and component order carry no meaning (RFC 5545 §3.6), so reordering by the origin
    (or a VTIMEZONE block moved) must not look like a change; folding is gone already.
    """
    stack: list[tuple[str, list[str], list[str]]] = [("", [], [])]
    for line in lines:
        if line.name == "BEGIN":
            stack.append((line.text.upper().strip(), [], []))
        elif line.name == "END" and len(stack) > 1:
            begin, props, children = stack.pop()
            block = "\n".join([begin, *sorted(props), *sorted(children), line.text.upper()])
            stack[-1][2].append(block)
        elif line.name not in VOLATILE_PROPS:
            stack[-1][1].append(line.name + line.text[len(line.name) :])
    while len(stack) > 1:  # unbalanced input: fold what is open into its parent
        begin, props, children = stack.pop()
        stack[-1][2].append("\n".join([begin, *sorted(props), *sorted(children)]))
    _, props, children = stack[0]
    return "\n".join([*sorted(props), *sorted(children)])


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def fingerprint(resource_text: str) -> str:
    """A hash of a resource that ignores DTSTAMP, LAST-MODIFIED, PRODID, folding and ordering.

    Equal fingerprints mean "keep the stored bytes and ETag" (subscriptions spec §4, B).
    """
    return digest(canonical_form(lex(resource_text.encode("utf-8", "surrogatepass"), [])))


def href_for(uid: str) -> str:
    """Stable member name: 128 bits of SHA-256 of the UID, hex (never leaks the UID's bytes)."""
    return digest(uid)[:32] + ".ics"


def parse_duration_seconds(value: str) -> int | None:
    """Seconds in an RFC 5545 §3.3.6 DURATION (``PT1H``, ``P1D``, ``P1W``, ``-PT5M``) or None.

    Liberal: lower case and ``P1W2D`` (ISO 8601, not RFC 5545) are accepted; years and months
    are not (no fixed length).
    """
    m = _DURATION.fullmatch(value.strip())
    if m is None or not any(m.group(i) for i in range(2, 7)):
        return None
    w, d, h, mi, s = (int(m.group(i) or 0) for i in range(2, 7))
    secs = (((w * 7 + d) * 24 + h) * 60 + mi) * 60 + s
    return -secs if m.group(1) == "-" else secs


def diff(old: Mapping[str, str], new: Mapping[str, str]) -> Diff:
    """UIDs added, changed (fingerprint differs) and removed between two fetches, sorted."""
    return Diff(
        added=tuple(sorted(new.keys() - old.keys())),
        changed=tuple(sorted(u for u in new.keys() & old.keys() if new[u] != old[u])),
        removed=tuple(sorted(old.keys() - new.keys())),
    )


def plausible(
    old_count: int, new_count: int, *, min_count: int = 10, max_loss: float = 0.5
) -> bool:
    """False when a fetch lost suspiciously many objects and a second fetch should confirm it.

    Losing more than ``max_loss`` of at least ``min_count`` objects is suspicious, and so is any
    non-empty feed turning empty: an empty 200 is a classic origin failure, and confirming it
    costs one more fetch.
    """
    if old_count > 0 and new_count == 0:
        return False
    lost = old_count - new_count
    return not (old_count >= min_count and lost > old_count * max_loss)
