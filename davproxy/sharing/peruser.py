"""Per-user calendar data in shared calendars: which parts of an object are a user's own.

caldav-sharing (CalendarServer) §5.5.4 and draft-pot-caldav-sharing §4: in a shared
calendar, ``VALARM`` components and ``TRANSP`` belong to the user who set them.  This
module splits one iCalendar object, at the level of RFC 5545 content lines, into its
*shared* part and the *personal* parts of each top-level component (master or overridden
instance), and puts an object together again for one viewer.  It works on the origin's
own lines (``feeds/lines.py``): what is shared reaches every viewer byte for byte, and a
viewer's personal lines come back exactly as that viewer wrote them.

Personal, besides ``VALARM`` and ``TRANSP``: the client bookkeeping properties the
per-user-data digest §11.1 lists (Thunderbird's ``X-MOZ-LASTACK``/``X-MOZ-SNOOZE-TIME*``,
Apple's travel time, ``X-APPLE-NEEDS-REPLY``, ``X-APPLE-DEFAULT-ALARM``); every other
``X-`` property stays shared, so an owner's ``X-ALT-DESC`` still reaches sharees.

Per-instance entries are keyed by the UTC RECURRENCE-ID (a DATE stays a DATE), so they
match instances an upstream expands to UTC.  An instance that differs from the one the
master gives only in personal data is kept as a personal entry alone ("most compact
representation", caldav-sharing §5.5.4) and derived from the master again when its
owner reads it.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass, field

from dateutil import rrule  # icalendar's own dependency: RRULE membership of an instance

from davproxy.feeds.lines import Line, lex, params, value_of

CRLF = "\r\n"
COMPONENTS = frozenset({"VEVENT", "VTODO", "VJOURNAL"})
PERSONAL_PROPS = frozenset(
    {"TRANSP", "X-MOZ-LASTACK", "X-MOZ-SNOOZE-TIME", "X-APPLE-NEEDS-REPLY", "X-APPLE-DEFAULT-ALARM"}
)
PERSONAL_PREFIXES = ("X-MOZ-SNOOZE-TIME-", "X-APPLE-TRAVEL-")
PERSONAL_COMPONENTS = frozenset({"VALARM"})
# CalendarServer's in-band storage: a client must never be able to pass it off as data.
FORBIDDEN_COMPONENTS = frozenset({"X-CALENDARSERVER-PERUSER", "X-CALENDARSERVER-PERINSTANCE"})
# Lines a client rewrites on every save: they do not make an edit a shared change.
IGNORABLE = frozenset({"DTSTAMP", "LAST-MODIFIED", "CREATED", "SEQUENCE", "X-MOZ-GENERATION"})
# What tells one instance of a recurring component from the master it derives from.
RECURRENCE = frozenset({"RRULE", "RDATE", "EXDATE", "EXRULE", "DTSTART", "DTEND", "DURATION"})
_CHEAP_MARKERS = ("VALARM", "TRANSP", "X-MOZ-", "X-APPLE-")
_DATE = re.compile(r"^\d{8}$")


class NotCalendarData(ValueError):
    """The text is no iCalendar object this module can split."""


class InjectedData(ValueError):
    """The text carries another server's per-user storage (CalendarServer's blocks)."""


@dataclass(slots=True)
class Component:
    """A top-level VEVENT/VTODO/VJOURNAL: its shared lines and its personal ones."""

    kind: str
    uid: str = ""
    rid: str = ""  # UTC RECURRENCE-ID key, "" for the master
    rid_line: str = ""  # the RECURRENCE-ID line as written
    shared: list[Line] = field(default_factory=list)  # BEGIN..END included
    personal: list[str] = field(default_factory=list)  # raw physical text, in order

    def lines(self, name: str) -> list[Line]:
        return [line for line in self.shared if line.name == name]

    def signature(self, drop: frozenset[str] = IGNORABLE) -> tuple[str, ...]:
        """The shared content, order aside, without what clients rewrite on every save."""
        return tuple(sorted(line.text for line in self.shared if line.name not in drop))


@dataclass(slots=True)
class CalendarObject:
    """An object as a sequence of verbatim top-level lines and components."""

    parts: list[Line | Component]

    @property
    def components(self) -> list[Component]:
        return [part for part in self.parts if isinstance(part, Component)]

    @property
    def uid(self) -> str:
        return next((c.uid for c in self.components if c.uid), "")

    def personal(self) -> dict[str, str]:
        """Each component's personal text by instance key (only where there is some)."""
        return {c.rid: CRLF.join(c.personal) for c in self.components if c.personal}


def might_hold_personal(text: str | bytes) -> bool:
    """Cheap test before splitting: text without any personal marker has nothing to strip
    (bytes: a whole answer, any object in it)."""
    if isinstance(text, bytes):
        upper_bytes = text.upper()
        return any(marker.encode() in upper_bytes for marker in _CHEAP_MARKERS)
    upper = text.upper()
    return any(marker in upper for marker in _CHEAP_MARKERS)


def parse(text: str | bytes) -> CalendarObject:
    """Split an object (or a whole-collection export) into shared and personal lines.

    Bytes (a client's or the upstream's body) go through the feeds' lexer, which copes
    with any encoding; text (``calendar-data`` out of an XML answer, already decoded and
    free of what XML cannot carry) is unfolded directly: a REPORT holds hundreds."""
    lines = lex(text, []) if isinstance(text, bytes) else _unfold(text)
    if not lines or lines[0].text.upper() != "BEGIN:VCALENDAR":
        raise NotCalendarData("not an iCalendar object")
    parts: list[Line | Component] = []
    current: Component | None = None
    nested: list[str] = []  # open subcomponents inside the current component
    personal_depth = 0  # >0 while inside a VALARM (its lines are collected raw)
    for line in lines:
        name = line.name
        value = line.text[len(name) + 1 :].strip().upper() if name in ("BEGIN", "END") else ""
        if name == "BEGIN" and value in FORBIDDEN_COMPONENTS:
            raise InjectedData(f"{value} is not accepted in calendar data")
        if current is None:
            if name == "BEGIN" and value in COMPONENTS:
                current = Component(value, shared=[line])
            else:
                parts.append(line)
            continue
        if personal_depth:
            current.personal[-1] += CRLF + line.raw
            personal_depth += 1 if name == "BEGIN" else -1 if name == "END" else 0
            continue
        if name == "BEGIN":
            if not nested and value in PERSONAL_COMPONENTS:
                current.personal.append(line.raw)
                personal_depth = 1
                continue
            nested.append(value)
        elif name == "END":
            if nested:
                nested.pop()
            else:  # the component itself ends
                current.shared.append(line)
                parts.append(current)
                current = None
                continue
        elif not nested and is_personal(name):
            current.personal.append(line.raw)
            continue
        elif not nested and name == "UID":
            current.uid = value_of(line.text).strip()
        elif not nested and name == "RECURRENCE-ID":
            current.rid, current.rid_line = rid_key(line.text), line.raw
        current.shared.append(line)
    if current is not None or personal_depth:
        raise NotCalendarData("a component is not closed")
    return CalendarObject(parts)


def _unfold(text: str) -> list[Line]:
    lines: list[Line] = []
    for physical in text.splitlines():
        if physical[:1] in (" ", "\t") and lines:
            last = lines[-1]
            last.text += physical[1:]
            last.raw += CRLF + physical
        elif physical.strip():
            physical = physical.lstrip(" \t")
            name = physical.partition(":")[0].partition(";")[0].strip().upper()
            lines.append(Line(name, physical, physical, 0))
    return lines


def is_personal(name: str) -> bool:
    return name in PERSONAL_PROPS or name.startswith(PERSONAL_PREFIXES)


def rid_key(text: str) -> str:
    """A RECURRENCE-ID (or DTSTART, EXDATE value) as a UTC key: ``20300103T080000Z``,
    a DATE as it is, a floating or unknown-zone time as written."""
    value = value_of(text).strip().upper()
    if value.endswith("Z") or _DATE.match(value):
        return value
    tzid = next((v for n, v in params(text) if n == "TZID"), None)
    if tzid is None:
        return value
    try:
        local = dt.datetime.strptime(value, "%Y%m%dT%H%M%S")
        zone = zoneinfo.ZoneInfo(tzid.strip())
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        return value
    return local.replace(tzinfo=zone).astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


# -- reading: one viewer's object --------------------------------------------------------


def render(obj: CalendarObject, personal: dict[str, str] | None, synthesize: bool = True) -> str:
    """The object as one viewer sees it: shared lines, then the viewer's personal ones.

    ``personal`` maps instance keys to that viewer's personal text.  A component without
    an entry of its own takes the master's (the viewer's alarm applies to every instance,
    the owner's overrides included); an entry for an instance the object does not hold
    is derived from the master (``synthesize``).  None: nobody's personal data."""
    personal = personal or {}
    out: list[str] = []
    present = {(c.uid, c.rid) for c in obj.components}
    for part in obj.parts:
        if not isinstance(part, Component):
            if part.name == "END" and synthesize:  # END:VCALENDAR: derived instances first
                out.extend(_derived(obj, personal, present))
            out.append(part.raw)
            continue
        out.extend(line.raw for line in part.shared[:-1])
        mine = personal.get(part.rid, personal.get("", "") if part.rid else "")
        if mine:
            out.append(mine)
        out.append(part.shared[-1].raw)
    return CRLF.join(out) + CRLF


def _derived(
    obj: CalendarObject, personal: dict[str, str], present: set[tuple[str, str]]
) -> list[str]:
    masters = [c for c in obj.components if not c.rid and _recurs(c)]
    if not masters:
        return []
    out: list[str] = []
    for key, text in personal.items():
        if not key.startswith("RID "):
            continue
        rid, _, rid_line = key[4:].partition(" ")
        for master in masters:
            if (master.uid, rid) in present or not _occurs(master, rid):
                continue
            out.extend(derive(master, rid_line))
            if text:
                out.insert(-1, text)
    return out


def derive(master: Component, rid_line: str) -> list[str]:
    """The instance at ``rid_line`` as the master gives it (raw lines, BEGIN..END)."""
    rid_text = rid_line.replace(CRLF + " ", "").replace(CRLF + "\t", "")
    head, _, rid_value = rid_text.partition(":")
    rid_params = head[len("RECURRENCE-ID") :]
    start = _parse_time(rid_value.strip())
    out: list[str] = []
    for line in master.shared:
        if line.name in ("RRULE", "RDATE", "EXDATE", "EXRULE"):
            continue
        if line.name == "DTSTART":
            out.append(f"DTSTART{rid_params}:{rid_value.strip()}")
            out.append(rid_line)
            continue
        if line.name == "DTEND":
            length = _length(master)
            if start is not None and length is not None:
                out.append(f"DTEND{rid_params}:{_format_time(start + length, rid_value.strip())}")
                continue
        out.append(line.raw)
    return out


def _recurs(component: Component) -> bool:
    return bool(component.lines("RRULE") or component.lines("RDATE"))


def _occurs(master: Component, rid: str) -> bool:
    """Whether ``rid`` may be an instance of the master: not excluded, and on its rule
    when the rule can be read (an RDATE-only or unreadable rule is given the benefit)."""
    for line in master.lines("EXDATE"):
        head = line.text[: line.text.find(":") + 1]
        if any(rid_key(head + value) == rid for value in value_of(line.text).split(",")):
            return False
    rules, starts = master.lines("RRULE"), master.lines("DTSTART")
    if len(rules) != 1 or len(starts) != 1 or master.lines("RDATE"):
        return True
    # the rule runs in the master's own zone (a 09:00 Berlin weekly is 08:00Z or 07:00Z)
    begin, wanted = _parse_time(value_of(starts[0].text)), _parse_time(rid)
    tzid = next((v for n, v in params(starts[0].text) if n == "TZID"), None)
    if begin is None or wanted is None:
        return True
    if tzid is not None and rid.endswith("Z"):
        try:
            zone = zoneinfo.ZoneInfo(tzid.strip())
        except (ValueError, zoneinfo.ZoneInfoNotFoundError):
            return True
        wanted = wanted.replace(tzinfo=dt.UTC).astimezone(zone).replace(tzinfo=None)
    try:
        rule = rrule.rrulestr(value_of(rules[0].text).strip(), dtstart=begin, ignoretz=True)
        return wanted in rule
    except (ValueError, TypeError, OverflowError):
        return True


def _parse_time(value: str) -> dt.datetime | None:
    value = value.strip().upper().rstrip("Z")
    for pattern in ("%Y%m%dT%H%M%S", "%Y%m%d"):
        try:
            return dt.datetime.strptime(value, pattern)
        except ValueError:
            continue
    return None


def _format_time(when: dt.datetime, like: str) -> str:
    if _DATE.match(like):
        return when.strftime("%Y%m%d")
    return when.strftime("%Y%m%dT%H%M%S") + ("Z" if like.upper().endswith("Z") else "")


def _length(component: Component) -> dt.timedelta | None:
    starts, ends = component.lines("DTSTART"), component.lines("DTEND")
    if len(starts) != 1 or len(ends) != 1:
        return None
    begin, end = _parse_time(value_of(starts[0].text)), _parse_time(value_of(ends[0].text))
    return None if begin is None or end is None else end - begin


# -- writing: a user's new object against the stored one ---------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    """A user's PUT taken apart: what goes upstream and what the user keeps."""

    shared: CalendarObject  # the new object, compacted (personal lines are ignored)
    personal: dict[str, str]  # the writer's entries by instance key
    shared_changed: bool  # compared with what is stored (False: personal data only)


def entry_key(component: Component) -> str:
    """Entries of instances carry their RECURRENCE-ID line, to derive them again."""
    return "" if not component.rid else f"RID {component.rid} {component.rid_line}"


def split_write(new: CalendarObject, old: CalendarObject | None) -> Write:
    """Take the writer's personal data out of ``new``; drop instances that differ from
    the master only in personal data and that the stored object does not hold as
    instances of their own (they live on as the writer's entries)."""
    stored = {(c.uid, c.rid) for c in old.components} if old is not None else set()
    masters = {c.uid: c for c in new.components if not c.rid}
    kept: list[Line | Component] = []
    personal: dict[str, str] = {}
    master_text = {c.uid: CRLF.join(c.personal) for c in masters.values()}
    for part in new.parts:
        if not isinstance(part, Component):
            kept.append(part)
            continue
        text = CRLF.join(part.personal)
        master = masters.get(part.uid)
        if not part.rid:
            if text:
                personal[""] = text
            kept.append(part)
            continue
        compact = (
            master is not None
            and (part.uid, part.rid) not in stored
            and same_instance(part, master)
        )
        if compact or text != master_text.get(part.uid, ""):
            personal[entry_key(part)] = text
        if not compact:
            kept.append(part)
    shared = CalendarObject(kept)
    changed = old is None or _signature(shared) != _signature(old)
    return Write(shared, personal, changed)


def lookup(personal: dict[str, str]) -> dict[str, str]:
    """Entries keyed for ``render``: by UTC key, plus the raw keys for derived instances."""
    out: dict[str, str] = {}
    for key, text in personal.items():
        if key.startswith("RID "):
            out[key.split(" ", 2)[1]] = text
        out[key] = text
    return out


def with_owner(shared: CalendarObject, old: CalendarObject | None) -> str:
    """What goes upstream: the new shared object with the stored personal lines (the
    owner's) on each component that still exists; a new instance takes the master's."""
    if old is None:
        return render(shared, None, synthesize=False)
    owner = {c.rid: CRLF.join(c.personal) for c in old.components}
    return render(shared, owner, synthesize=False)


def same_instance(override: Component, master: Component) -> bool:
    """The override is exactly what the master gives at its RECURRENCE-ID, personal
    data and the lines clients rewrite on every save aside."""
    drop = IGNORABLE | RECURRENCE | {"RECURRENCE-ID"}
    if override.signature(drop) != master.signature(drop):
        return False
    starts = override.lines("DTSTART")
    if len(starts) != 1 or rid_key(starts[0].text) != override.rid:
        return False
    if override.lines("DURATION") or master.lines("DURATION"):
        return [x.text for x in override.lines("DURATION")] == [
            x.text for x in master.lines("DURATION")
        ]
    return _length(override) == _length(master)


def _signature(obj: CalendarObject) -> dict[tuple[str, str, str], tuple[str, ...]]:
    """The shared content of an object, component by component (VTIMEZONE and the
    calendar's own properties aside: clients regenerate them)."""
    return {(c.kind, c.uid, c.rid): c.signature() for c in obj.components}
