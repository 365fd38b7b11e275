"""Splitting an ``.ics`` feed into CalDAV resources, fingerprinting and diffing them.

Pure functions over bytes and text: no network, no store.

- RFC 5545 §3.1: content lines are folded with CRLF + one space/tab; unfolding is done on the
  raw octets (a fold may split a multi-octet UTF-8 sequence) before decoding.
- RFC 5545 §3.4/§3.6: a VCALENDAR holds calendar properties and components; the components
  (VEVENT §3.6.1, VTODO §3.6.2, VJOURNAL §3.6.3, VFREEBUSY §3.6.4) become resources, VTIMEZONE
  (§3.6.5) is attached only where a ``TZID=`` parameter (§3.2.19) references it.
- RFC 5545 §3.8.4.7 UID and §3.8.4.4 RECURRENCE-ID: a master and its overrides share one
  resource (RFC 4791 §4.1), which carries no METHOD (§3.7.2).
- RFC 5545 §3.3.6 DURATION values for REFRESH-INTERVAL (RFC 7986 §5.7) and X-PUBLISHED-TTL.

The served text is built from the origin's own content lines, never re-serialised by a
library: vobject truncates text at unescaped commas and rewrites trailing backslashes, and real
feeds carry oddities (``RRULE:``, ``BYDAY=MO, TU``) that a round trip would change or reject.
Parsing here only delimits, groups and compares.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from davproxy.feeds.lines import (
    FeedWarning,
    Line,
    lex,
    params,
    prop_name,
    unescape,
    value_of,
)

#: Top-level components that become resources (VAVAILABILITY: RFC 7953).
OBJECT_KINDS = frozenset({"VEVENT", "VTODO", "VJOURNAL", "VFREEBUSY", "VAVAILABILITY"})
#: Components that can only appear at the top level: meeting one inside another component means
#: the open one lost its END line.
_TOP_ONLY = OBJECT_KINDS | {"VTIMEZONE", "VCALENDAR"}
#: Calendar properties repeated in every resource (RFC 5545 §3.7); METHOD is dropped.
HEADER_PROPS = ("VERSION", "PRODID", "CALSCALE")
#: Fields that change without the object changing: DTSTAMP is regenerated on every download by
#: some feeds; LAST-MODIFIED is likewise rewritten by generators that stamp "now", and anything a
#: client would see changes some other line too (iCloud even leaves it stale on an added EXDATE,
#: so it is no evidence either way); PRODID moves with the generator's version, not the data.
#: SEQUENCE is kept: a bump is how organisers announce a change.
VOLATILE_PROPS = frozenset({"DTSTAMP", "LAST-MODIFIED", "PRODID"})

_DEFAULT_HEADER = ("VERSION:2.0", "PRODID:-//davproxy//feeds//EN")
_CRLF = "\r\n"
_HAS_TZID = re.compile(r";\s*tzid\s*=", re.IGNORECASE)  # cheap pre-check before parsing params

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
    header: tuple[str, ...] = _DEFAULT_HEADER
    #: every other calendar-level raw line except METHOD (X-WR-*, NAME, COLOR, ...), for serving
    #: the whole feed again
    properties: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Resource:
    """One calendar object resource: the components sharing one UID."""

    uid: str
    kind: str
    text: str
    fingerprint: str
    href: str
    #: True if a component without RECURRENCE-ID is present (override-only objects are legal)
    master: bool
    recurrence_ids: tuple[str, ...]
    tzids: tuple[str, ...]
    #: referenced TZIDs the feed does not define (passed through as they are)
    missing_tzids: tuple[str, ...] = ()
    synthetic_uid: bool = False
    #: where the object's own components start in ``text`` (after header and VTIMEZONEs)
    body_start: int = 0

    @property
    def components(self) -> str:
        return self.text[self.body_start : len(self.text) - len("END:VCALENDAR\r\n")]


@dataclass(frozen=True, slots=True)
class FeedSplit:
    resources: Mapping[str, Resource]
    meta: FeedMeta
    warnings: tuple[FeedWarning, ...]
    #: raw VTIMEZONE texts by TZID (CRLF lines), to rebuild a whole feed or a delta
    timezones: Mapping[str, str] = field(default_factory=dict)
    #: False when no VCALENDAR was found or one was not closed: a truncated or garbage download,
    #: which should keep the last good data rather than delete objects
    complete: bool = True

    def fingerprints(self) -> dict[str, str]:
        return {uid: r.fingerprint for uid, r in self.resources.items()}


@dataclass(frozen=True, slots=True)
class Diff:
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


@dataclass(slots=True)
class _Comp:
    kind: str
    lineno: int
    lines: list[Line]
    broken: str | None = None


def _components(
    lines: list[Line], warnings: list[FeedWarning]
) -> tuple[list[_Comp], list[Line], bool]:
    """Delimit top-level components; returns them, the calendar-level lines and completeness."""
    comps: list[_Comp] = []
    cal_lines: list[Line] = []
    cur: _Comp | None = None
    stack: list[str] = []  # open components inside ``cur``, outermost first
    calendars = 0
    open_cal = False

    def drop(comp: _Comp, why: str) -> None:
        warnings.append(FeedWarning("truncated", comp.lineno, f"{comp.kind} skipped: {why}"))

    for line in lines:
        word = line.text.partition(":")[2].strip().upper() if line.name in ("BEGIN", "END") else ""
        if cur is not None:
            if line.name == "BEGIN" and word in _TOP_ONLY:
                drop(cur, f"no END:{cur.kind} before line {line.lineno}")
                cur, stack = None, []
            elif line.name == "END" and word == "VCALENDAR":
                drop(cur, f"no END:{cur.kind} before END:VCALENDAR")
                cur, stack = None, []
            else:
                cur.lines.append(line)
                if line.name == "BEGIN":
                    stack.append(word)
                elif line.name == "END":
                    if stack and stack[-1] == word:
                        stack.pop()
                    else:
                        cur.broken = cur.broken or f"unbalanced END:{word} at line {line.lineno}"
                        if word == cur.kind:
                            stack = []
                    if not stack:
                        if cur.broken:
                            drop(cur, cur.broken)
                        else:
                            comps.append(cur)
                        cur = None
                continue
        # top level (possibly right after a truncated component)
        if line.name == "BEGIN" and word == "VCALENDAR":
            calendars += 1
            open_cal = True
        elif line.name == "END" and word == "VCALENDAR":
            open_cal = False
        elif line.name == "BEGIN":
            cur, stack = _Comp(word, line.lineno, [line]), [word]
        elif line.name == "END":
            warnings.append(FeedWarning("stray-line", line.lineno, line.text))
        elif ":" not in line.text:
            warnings.append(FeedWarning("stray-line", line.lineno, line.text[:80]))
        else:
            cal_lines.append(line)
    if cur is not None:
        drop(cur, "end of data inside the component")
        open_cal = True
    return comps, cal_lines, calendars > 0 and not open_cal


def _meta(cal_lines: list[Line], warnings: list[FeedWarning]) -> FeedMeta:
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
        header.insert(0, _DEFAULT_HEADER[0])
    if "PRODID" not in first:
        header.insert(1, _DEFAULT_HEADER[1])

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


# --- normalisation ----------------------------------------------------------------------------


def _canonical(lines: Iterable[Line]) -> str:
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


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def fingerprint(resource_text: str) -> str:
    """A hash of a resource that ignores DTSTAMP, LAST-MODIFIED, PRODID, folding and ordering.

    Equal fingerprints mean "keep the stored bytes and ETag" (subscriptions spec §4, B).
    """
    return _digest(_canonical(lex(resource_text.encode("utf-8", "surrogatepass"), [])))


def href_for(uid: str) -> str:
    """Stable member name: 128 bits of SHA-256 of the UID, hex (never leaks the UID's bytes)."""
    return _digest(uid)[:32] + ".ics"


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


# --- splitting --------------------------------------------------------------------------------


def _first(comp: _Comp, name: str) -> Line | None:
    # only the component's own properties, not those of a nested VALARM
    depth = 0
    for line in comp.lines[1:]:
        if line.name == "BEGIN":
            depth += 1
        elif line.name == "END":
            depth -= 1
        elif depth == 0 and line.name == name:
            return line
    return None


def _tzid_refs(comps: Iterable[_Comp]) -> list[str]:
    seen: dict[str, None] = {}
    for comp in comps:
        for line in comp.lines:
            if _HAS_TZID.search(line.text) is None:
                continue
            for pname, pvalue in params(line.text):
                if pname == "TZID" and pvalue:
                    seen.setdefault(pvalue, None)
    return list(seen)


@dataclass(slots=True)
class _Group:
    kind: str
    synthetic: bool
    master: _Comp | None = None
    overrides: dict[str, _Comp] = field(default_factory=dict)


def split_feed(raw: bytes) -> FeedSplit:
    """Split a feed into one resource per UID (master + overrides) plus calendar metadata.

    Tolerant: a component that cannot be delimited is skipped and reported, everything else is
    kept. ``FeedSplit.complete`` tells a truncated or non-iCalendar body from an empty calendar.
    """
    warnings: list[FeedWarning] = []
    lines = lex(raw, warnings)
    comps, cal_lines, complete = _components(lines, warnings)
    meta = _meta(cal_lines, warnings)

    zones: dict[str, _Comp] = {}
    groups: dict[str, _Group] = {}
    for comp in comps:
        if comp.kind == "VTIMEZONE":
            tzline = _first(comp, "TZID")
            if tzline is None:
                warnings.append(FeedWarning("no-tzid", comp.lineno, "VTIMEZONE without TZID"))
                continue
            tzid = value_of(tzline.text).strip()
            if tzid in zones:
                warnings.append(FeedWarning("duplicate-timezone", comp.lineno, tzid))
            zones[tzid] = comp
            continue
        if comp.kind not in OBJECT_KINDS:
            warnings.append(FeedWarning("unsupported-component", comp.lineno, comp.kind))
            continue
        uid_line = _first(comp, "UID")
        uid = value_of(uid_line.text).strip() if uid_line is not None else ""
        synthetic = not uid
        if synthetic:
            # same content -> same UID on every fetch, so no delete/add churn (spec §4)
            uid = f"{_digest(_canonical(comp.lines))[:32]}@synthetic.davproxy"
            comp.lines.insert(1, Line("UID", f"UID:{uid}", f"UID:{uid}", comp.lineno))
            warnings.append(FeedWarning("synthetic-uid", comp.lineno, uid))
        group = groups.get(uid)
        if group is None:
            group = groups[uid] = _Group(comp.kind, synthetic)
        elif group.kind != comp.kind:
            # RFC 4791 §4.1: one component type per resource; the first type seen keeps the UID
            warnings.append(
                FeedWarning(
                    "mixed-types", comp.lineno, f"{comp.kind} dropped, {uid} is a {group.kind}"
                )
            )
            continue
        rid_line = _first(comp, "RECURRENCE-ID")
        if rid_line is None:
            if group.master is not None:
                warnings.append(FeedWarning("duplicate-master", comp.lineno, uid))
            group.master = comp
        else:
            key = rid_line.text[len("RECURRENCE-ID") :]
            if group.overrides.pop(key, None) is not None:
                warnings.append(FeedWarning("duplicate-override", comp.lineno, f"{uid} {key}"))
            group.overrides[key] = comp

    # the fingerprint reads unfolded lines, as fingerprint() of the served text does
    unfolded = [re.sub(r"\r\n[ \t]", "", h) for h in ("BEGIN:VCALENDAR", *meta.header)]
    head = [Line(prop_name(h), h, h, 0) for h in unfolded]
    tail = Line("END", "END:VCALENDAR", "END:VCALENDAR", 0)
    resources: dict[str, Resource] = {}
    missing_seen: set[str] = set()
    for uid, group in groups.items():
        members = ([group.master] if group.master else []) + list(group.overrides.values())
        refs = _tzid_refs(members)
        used = [z for t, z in zones.items() if t in refs]  # feed order, not reference order
        missing = tuple(t for t in refs if t not in zones)
        for t in missing:
            if t not in missing_seen:
                missing_seen.add(t)
                warnings.append(FeedWarning("missing-timezone", members[0].lineno, t))
        all_lines = [ln for c in (*used, *members) for ln in c.lines]
        prefix = _CRLF.join(
            ["BEGIN:VCALENDAR", *meta.header, *(ln.raw for c in used for ln in c.lines), ""]
        )
        body = _CRLF.join([*(ln.raw for c in members for ln in c.lines), ""])
        text = prefix + body + "END:VCALENDAR" + _CRLF
        canon_lines = [*head, *all_lines, tail]
        resources[uid] = Resource(
            uid=uid,
            kind=group.kind,
            text=text,
            fingerprint=_digest(_canonical(canon_lines)),
            href=href_for(uid),
            master=group.master is not None,
            recurrence_ids=tuple(value_of("X" + k).strip() for k in group.overrides),
            tzids=tuple(refs),
            missing_tzids=missing,
            synthetic_uid=group.synthetic,
            body_start=len(prefix),
        )
    timezones = {
        tzid: _CRLF.join([*(ln.raw for ln in comp.lines), ""]) for tzid, comp in zones.items()
    }
    return FeedSplit(resources, meta, tuple(warnings), timezones, complete)


# --- comparing --------------------------------------------------------------------------------


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
