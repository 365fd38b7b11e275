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

import contextlib
import gc
import hashlib
import re
import threading
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from davproxy.feeds.blocks import Frame, segment
from davproxy.feeds.components import (
    OBJECT_KINDS,
    Comp,
    Facts,
    add_uid,
    components,
    facts_of,
)
from davproxy.feeds.lines import (
    FeedWarning,
    Line,
    lex,
    prop_name,
    to_utf8_bytes,
    value_of,
)
from davproxy.feeds.memo import (
    FINGERPRINTED,
    SplitMemo,
    Tables,
    fingerprint_of,
    refs_of,
    with_fingerprint,
    without_fingerprint,
    zone_set_of,
)
from davproxy.feeds.normal import (
    FeedMeta,
    calendar_meta,
    canonical_form,
    digest,
    href_for,
)

_CRLF = "\r\n"


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
    #: every resource's fingerprint, by UID (resources may be built only when read)
    fingerprint_map: Mapping[str, str] = field(default_factory=dict)
    #: what this split learnt, for the next split of the same feed
    memo: SplitMemo | None = None

    def fingerprints(self) -> dict[str, str]:
        return dict(self.fingerprint_map)


# Feeds of this many bytes of components or more are split in bounded memory: their
# lines are read again when a resource is built, and a resource the memo does not
# know is fingerprinted when first asked for (at the latest as it is written), once.
_KEEP_LINES_BELOW = 1 << 20


class _Parts:
    """The feed's top-level components by number: where their bytes are, the digests
    that key their records in the memo, and the lines of those that keep them."""

    __slots__ = ("feed", "memo", "spans", "digests", "comps", "facts_of")

    def __init__(self, feed: bytes, memo: SplitMemo) -> None:
        self.feed, self.memo = feed, memo
        self.spans = array("q")  # start and end of each in ``feed``
        self.digests: list[bytes | None] = []  # None: read line by line
        self.comps: dict[int, Comp] = {}
        self.facts_of: dict[int, Facts] = {}  # those the memo holds no record of

    def add(
        self, digest: bytes | None, span: tuple[int, int], comp: Comp | None, facts: Facts | None
    ) -> int:
        number = len(self.digests)
        self.digests.append(digest)
        self.spans.extend(span)
        if comp is not None:
            self.comps[number] = comp
        if facts is not None:
            self.facts_of[number] = facts
        return number

    def record(self, number: int) -> bytes | None:
        digest = self.digests[number]
        return None if digest is None else self.memo.records.get(digest)

    def facts(self, number: int) -> Facts:
        found = self.facts_of.get(number)
        if found is None:
            record = self.record(number)
            assert record is not None
            found = self.memo.facts(record)
        return found

    def refs(self, number: int) -> tuple[str, ...]:
        found = self.facts_of.get(number)
        if found is not None:
            return found.refs
        record = self.record(number)
        assert record is not None
        return self.memo.tables.refs[refs_of(record)]

    def lines(self, number: int, keep: bool = False) -> list[Line]:
        """Its lines; lexed (again) if they were not kept, and kept if ``keep``."""
        comp = self.comps.get(number)
        if comp is not None:
            return comp.lines
        start, end = self.spans[2 * number], self.spans[2 * number + 1]
        comp = components(lex(self.feed[start:end], []), [])[0][0]  # one, as before
        facts = self.facts(number)
        if facts.synthetic:
            add_uid(comp, facts.uid)
        if keep:
            self.comps[number] = comp
        return comp.lines


class _Group:
    """The components of a resource of more than one (most have one: their number)."""

    __slots__ = ("kind", "synthetic", "master", "overrides")

    def __init__(self, kind: str, synthetic: bool) -> None:
        self.kind, self.synthetic = kind, synthetic
        self.master: int | None = None
        self.overrides: dict[str, int] = {}

    def members(self) -> list[int]:
        return ([] if self.master is None else [self.master]) + list(self.overrides.values())


class _Grouping:
    """Components to resources by UID, and time zones by TZID, with what that reports."""

    def __init__(self, parts: _Parts, warnings: list[FeedWarning]) -> None:
        self.parts, self.warnings = parts, warnings
        self.linenos = array("q")
        self.zones: dict[str, int] = {}
        self.groups: dict[str, int | _Group] = {}

    def add(self, number: int, facts: Facts, lineno: int) -> None:
        self.linenos.append(lineno)
        warnings = self.warnings
        if facts.kind == "VTIMEZONE":
            if not facts.uid:
                warnings.append(FeedWarning("no-tzid", lineno, "VTIMEZONE without TZID"))
                return
            if facts.uid in self.zones:
                warnings.append(FeedWarning("duplicate-timezone", lineno, facts.uid))
            self.zones[facts.uid] = number
            return
        if facts.kind not in OBJECT_KINDS:
            warnings.append(FeedWarning("unsupported-component", lineno, facts.kind))
            return
        uid = facts.uid
        found = self.groups.get(uid)
        if found is None:
            self.groups[uid] = number
            return
        if isinstance(found, int):
            first = self.parts.facts(found)
            group = _Group(first.kind, first.synthetic)
            if first.rid is None:
                group.master = found
            else:
                group.overrides[first.rid] = found
            self.groups[uid] = found = group
        if found.kind != facts.kind:
            # RFC 4791 §4.1: one component type per resource; the first type seen keeps the UID
            detail = f"{facts.kind} dropped, {uid} is a {found.kind}"
            warnings.append(FeedWarning("mixed-types", lineno, detail))
        elif facts.rid is None:
            if found.master is not None:
                warnings.append(FeedWarning("duplicate-master", lineno, uid))
            found.master = number
        else:
            if found.overrides.pop(facts.rid, None) is not None:
                warnings.append(FeedWarning("duplicate-override", lineno, f"{uid} {facts.rid}"))
            found.overrides[facts.rid] = number

    def first_line(self, group: int | _Group) -> int:
        if isinstance(group, int):
            return self.linenos[group]
        first = group.master if group.master is not None else next(iter(group.overrides.values()))
        return self.linenos[first]


# The zones a set of referenced TZIDs brings (feed order), the missing TZIDs, how the
# signature of a resource that references them begins, and that beginning's code.
_ZoneSet = tuple[list[int], tuple[str, ...], bytes | None, int | None]


class _Resources(Mapping[str, Resource]):
    """The feed's resources, built when read; each fingerprint comes from the memo when
    it knows it, else from building the resource (and is then kept in the memo)."""

    def __init__(
        self,
        parts: _Parts,
        grouping: _Grouping,
        meta: FeedMeta,
        head: list[Line],
        header_key: bytes,
        keep: bool,
    ) -> None:
        self.parts, self.memo, self.meta, self.head = parts, parts.memo, meta, head
        self.groups, self.zones, self.header_key = grouping.groups, grouping.zones, header_key
        self.keep = keep  # a small feed's lines and resources are kept as built
        self.zone_sets: dict[tuple[str, ...], _ZoneSet] = {}
        self.built: dict[str, Resource] = {}

    def refs(self, group: int | _Group) -> tuple[str, ...]:
        """The TZIDs a resource's components reference, in order."""
        if isinstance(group, int):
            return self.parts.refs(group)
        return tuple(dict.fromkeys(r for m in group.members() for r in self.parts.refs(m)))

    def zone_set(self, refs: tuple[str, ...]) -> _ZoneSet:
        found = self.zone_sets.get(refs)
        if found is None:
            used = [z for t, z in self.zones.items() if t in refs]  # feed order
            missing = tuple(t for t in refs if t not in self.zones)
            digests = [self.parts.digests[z] for z in used]
            start = None if None in digests else b"".join([self.header_key, *digests])  # type: ignore[list-item]
            code = None if start is None else self.memo.tables.start_code(start)
            found = self.zone_sets[refs] = (used, missing, start, code)
        return found

    def signature(self, group: _Group) -> bytes | None:
        """A digest of everything a resource of several components is made of."""
        start = self.zone_set(self.refs(group))[2]
        digests = [self.parts.digests[m] for m in group.members()]
        if start is None or None in digests:
            return None
        return hashlib.blake2b(b"".join([start, *digests]), digest_size=16).digest()  # type: ignore[list-item]

    def known(self, uid: str) -> bytes | None:
        """The resource's fingerprint (raw) if the memo knows it."""
        group = self.groups[uid]
        if isinstance(group, int):
            record = self.parts.record(group)
            found = fingerprint_of(record) if record is not None else None
            if found is not None:
                return found
        else:
            signature = self.signature(group)
            value = self.memo.groups.get(signature) if signature is not None else None
            if value is not None:
                return value[:32]
        return self.memo.loose.get(uid)

    def _learn(self, uid: str, group: int | _Group, raw: bytes) -> None:
        memo = self.memo
        if isinstance(group, int):
            record, code = self.parts.record(group), self.zone_set(self.refs(group))[3]
            digest = self.parts.digests[group]
            if record is not None and code is not None and digest is not None:
                memo.records[digest] = with_fingerprint(record, code, raw)
                return
        else:
            signature = self.signature(group)
            if signature is not None:
                memo.groups[signature] = raw + uid.encode("utf-8", "surrogatepass")
                return
        memo.loose[uid] = raw

    def fingerprint(self, uid: str) -> str:
        raw = self.known(uid)
        return raw.hex() if raw is not None else self.build(uid, self.keep).fingerprint

    def build(self, uid: str, keep: bool) -> Resource:
        """The resource of ``uid``, kept for later reads if ``keep`` (a big feed's are
        written one by one as they are built: holding all took several times its size)."""
        group = self.groups[uid]
        parts = self.parts
        if isinstance(group, int):
            members, facts = [group], parts.facts(group)
            kind, synthetic, master = facts.kind, facts.synthetic, facts.rid is None
            rids: tuple[str, ...] = () if facts.rid is None else (facts.rid,)
        else:
            members, kind, synthetic = group.members(), group.kind, group.synthetic
            master, rids = group.master is not None, tuple(group.overrides)
        refs = self.refs(group)
        used, missing, _, _ = self.zone_set(refs)
        zone_lines = [ln for z in used for ln in parts.lines(z, keep=True)]  # a few, for many
        member_lines = [ln for m in members for ln in parts.lines(m)]
        meta = self.meta
        prefix = _CRLF.join(["BEGIN:VCALENDAR", *meta.header, *(ln.raw for ln in zone_lines), ""])
        body = _CRLF.join([*(ln.raw for ln in member_lines), ""])
        tail = Line("END", "END:VCALENDAR", "END:VCALENDAR", 0)
        resource = Resource(
            uid=uid,
            kind=kind,
            text=prefix + body + "END:VCALENDAR" + _CRLF,
            fingerprint=digest(canonical_form([*self.head, *zone_lines, *member_lines, tail])),
            href=href_for(uid),
            master=master,
            recurrence_ids=tuple(value_of("X" + k).strip() for k in rids),
            tzids=tuple(refs),
            missing_tzids=missing,
            synthetic_uid=synthetic,
            body_start=len(prefix),
        )
        if keep:
            self.built[uid] = resource
        if self.known(uid) is None:
            self._learn(uid, group, bytes.fromhex(resource.fingerprint))
        return resource

    def __getitem__(self, uid: str) -> Resource:
        found = self.built.get(uid)
        return found if found is not None else self.build(uid, keep=False)

    def __contains__(self, uid: object) -> bool:
        return uid in self.groups  # (Mapping's would build the resource)

    def __iter__(self) -> Iterator[str]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)


class _Fingerprints(Mapping[str, str]):
    """Every resource's fingerprint by UID, from the memo or by building the resource."""

    def __init__(self, resources: _Resources) -> None:
        self.resources = resources

    def __getitem__(self, uid: str) -> str:
        return self.resources.fingerprint(uid)

    def __contains__(self, uid: object) -> bool:
        return uid in self.resources.groups  # (Mapping's would fingerprint it)

    def __iter__(self) -> Iterator[str]:
        return iter(self.resources.groups)

    def __len__(self) -> int:
        return len(self.resources.groups)


_collector_lock = threading.Lock()
_collector_pauses = 0
_collector_was_on = True


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a split runs (threads may overlap).

    A split allocates tens of thousands of small objects and frees them by reference
    counting; it makes no cycles.  With the collector on, its passes over everything
    the process holds cost as much as the split itself (measured: 175 ms against 90 ms
    for a 10,000-event feed with one change)."""
    global _collector_pauses, _collector_was_on
    with _collector_lock:
        if _collector_pauses == 0:
            _collector_was_on = gc.isenabled()
            gc.disable()
        _collector_pauses += 1
    try:
        yield
    finally:
        with _collector_lock:
            _collector_pauses -= 1
            if _collector_pauses == 0 and _collector_was_on:
                gc.enable()


def split_feed(raw: bytes, memo: SplitMemo | None = None) -> FeedSplit:
    """Split a feed into one resource per UID (master + overrides) plus calendar metadata.

    Tolerant: a component that cannot be delimited is skipped and reported, everything else is
    kept. ``FeedSplit.complete`` tells a truncated or non-iCalendar body from an empty calendar.
    With the ``memo`` of an earlier split of the same feed, components and resources
    whose bytes are unchanged are neither lexed nor fingerprinted again (their warnings
    are not repeated); ``FeedSplit.memo`` is the memo for the next split.
    """
    with _collector_paused():
        data = to_utf8_bytes(raw)
        frame = segment(data)
        found = _octet_split(frame, memo) if frame is not None else None
        return found if found is not None else _line_split(data)


def _line_split(data: bytes) -> FeedSplit:
    """A feed with anything irregular (a component that lost its END, a line that is
    not UTF-8 ...), read line by line as a whole."""
    warnings: list[FeedWarning] = []
    comps, cal_lines, complete = components(lex(data, warnings), warnings)
    parts = _Parts(data, SplitMemo())
    meta = calendar_meta(cal_lines, warnings)
    grouping = _Grouping(parts, warnings)
    for comp in comps:
        facts = facts_of(comp, warnings)
        grouping.add(parts.add(None, (0, 0), comp, facts), facts, comp.lineno)
    return _finish(parts, grouping, meta, warnings, complete, True, {})


def _octet_split(frame: Frame, old: SplitMemo | None) -> FeedSplit | None:
    """A regular feed, cut at the octet level: only components whose bytes the memo
    does not know are lexed.  None: something a whole read reports in its own words."""
    said: list[FeedWarning] = []  # lexing must say nothing: else a whole read says it
    warnings: list[FeedWarning] = []
    calendar = [ln for first, piece in frame.calendar for ln in lex(piece, said, first)]
    # components the octet level does not delimit (X-... ones) are among these lines
    others, cal_lines, complete = components(calendar, said)
    if said:
        return None
    fresh = old is None or old.tables.full
    memo = SplitMemo(Tables() if old is None or fresh else old.tables)
    known = {} if old is None or fresh else old.records
    parts = _Parts(frame.data, memo)
    meta = calendar_meta(cal_lines, warnings)
    grouping = _Grouping(parts, warnings)
    for comp in others:
        facts = facts_of(comp, warnings)
        grouping.add(parts.add(None, (0, 0), comp, facts), facts, comp.lineno)
    keep = frame.size < _KEEP_LINES_BELOW
    feed, records = frame.data, memo.records
    view = memoryview(feed)
    for block in frame.blocks:
        span = start, end = block.start, block.end
        digest = hashlib.blake2b(view[start:end], digest_size=16).digest()
        record = records.get(digest) or known.get(digest)
        if record is not None:
            records[digest] = record
            facts = memo.facts(record)
            grouping.add(parts.add(digest, span, None, None), facts, block.first_line)
            continue
        comps, _, _ = components(lex(feed[start:end], said, block.first_line), said)
        if said or len(comps) != 1 or comps[0].kind != block.kind:
            return None
        comp = comps[0]
        facts = facts_of(comp, warnings)
        record = memo.pack(facts)
        if record is not None:
            records[digest] = record
        # a big feed's lines are read again when its resource is built (they take
        # about fifteen times the feed's size); a small feed's are kept
        kept = comp if keep or facts.kind == "VTIMEZONE" else None
        number = parts.add(digest, span, kept, None if record is not None else facts)
        grouping.add(number, facts, comp.lineno)
    carried = {} if old is None or fresh else old.groups
    return _finish(parts, grouping, meta, warnings, complete, keep, carried)


def _finish(
    parts: _Parts,
    grouping: _Grouping,
    meta: FeedMeta,
    warnings: list[FeedWarning],
    complete: bool,
    keep: bool,
    carried: Mapping[bytes, bytes],
) -> FeedSplit:
    """Zones for every resource, the memo made true for this feed, fingerprints."""
    # the fingerprint reads unfolded lines, as fingerprint() of the served text does
    unfolded = [re.sub(r"\r\n[ \t]", "", h) for h in ("BEGIN:VCALENDAR", *meta.header)]
    head = [Line(prop_name(h), h, h, 0) for h in unfolded]
    header_key = "\n".join(unfolded).encode("utf-8", "surrogatepass")
    resources = _Resources(parts, grouping, meta, head, header_key, keep)
    memo, groups = parts.memo, grouping.groups
    memo.resources = len(groups)
    missing_seen: set[str] = set()
    # a record may carry the fingerprint of the resource it alone makes with the same
    # zones; its flag is cleared anywhere else (a record from an earlier split)
    alone = bytearray(len(parts.digests))
    for group in groups.values():
        refs = resources.refs(group)
        _, missing, _, code = resources.zone_set(refs)
        for t in missing:
            if t not in missing_seen:
                missing_seen.add(t)
                warnings.append(FeedWarning("missing-timezone", grouping.first_line(group), t))
        if isinstance(group, int):
            record = parts.record(group)
            if record is not None and record[0] & FINGERPRINTED and zone_set_of(record) == code:
                alone[group] = 1
        else:
            signature = resources.signature(group)
            value = carried.get(signature) if signature is not None else None
            if value is not None:
                memo.groups[signature] = value  # type: ignore[index]
    records = memo.records
    for number, key in enumerate(parts.digests):
        if key is not None and not alone[number]:
            record = records.get(key)
            if record is not None and record[0] & FINGERPRINTED:
                records[key] = without_fingerprint(record)
    if keep:  # a small feed's resources are built (and kept) now, a big one's when read
        for uid in groups:
            resources.fingerprint(uid)
    timezones = {
        tzid: _CRLF.join([*(ln.raw for ln in parts.lines(number, keep=True)), ""])
        for tzid, number in grouping.zones.items()
    }
    return FeedSplit(
        resources,
        meta,
        tuple(warnings),
        timezones,
        complete,
        _Fingerprints(resources),
        memo,
    )
