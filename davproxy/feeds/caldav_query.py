"""CALDAV:calendar-query filters (RFC 4791 §9.7) evaluated against stored resources.

Supported: nested ``comp-filter`` (VCALENDAR > VEVENT/VTODO/VJOURNAL/...), ``is-not-defined``,
``time-range`` on components (§9.9, recurrence-aware), and ``prop-filter`` with
``is-not-defined``, ``time-range`` or ``text-match`` (§9.7.5, i;ascii-casemap substring,
``negate-condition``).  ``param-filter`` is refused with ``CALDAV:supported-filter`` rather
than answered wrongly.

Recurrence expansion uses recurring-ical-events (RRULE, RDATE, EXDATE, overrides and the
VEVENT/VTODO overlap rules), so a weekly event matches a window years after its DTSTART.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import icalendar
import recurring_ical_events
from lxml import etree

from davproxy.dav import untrusted
from davproxy.dav.davxml import CALDAV
from davproxy.dav.errors import DavError

SUPPORTED_FILTER = f"{{{CALDAV}}}supported-filter"
VALID_FILTER = f"{{{CALDAV}}}valid-filter"
_COMP = f"{{{CALDAV}}}comp-filter"
_PROP = f"{{{CALDAV}}}prop-filter"
_PARAM = f"{{{CALDAV}}}param-filter"
_RANGE = f"{{{CALDAV}}}time-range"
_UNDEFINED = f"{{{CALDAV}}}is-not-defined"
_TEXT = f"{{{CALDAV}}}text-match"
_FAR_PAST = dt.datetime(1, 1, 2, tzinfo=dt.UTC)
_FAR_FUTURE = dt.datetime(9999, 12, 30, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class TimeRange:
    start: dt.datetime
    end: dt.datetime


@dataclass(frozen=True, slots=True)
class TextMatch:
    text: str
    negate: bool
    collation: str = "i;ascii-casemap"

    def found_in(self, value: str) -> bool:
        if self.collation == "i;octet":
            return self.text in value
        if self.collation == "i;ascii-casemap":  # RFC 4790 §9.2: ASCII letters only
            return _ascii_lower(self.text) in _ascii_lower(value)
        return self.text.casefold() in value.casefold()


@dataclass(frozen=True, slots=True)
class PropFilter:
    name: str
    undefined: bool = False
    time_range: TimeRange | None = None
    text: TextMatch | None = None


@dataclass(frozen=True, slots=True)
class CompFilter:
    name: str
    undefined: bool = False
    time_range: TimeRange | None = None
    comps: tuple[CompFilter, ...] = ()
    props: tuple[PropFilter, ...] = ()

    @property
    def trivial(self) -> bool:
        return not (self.undefined or self.time_range or self.comps or self.props)


@dataclass(frozen=True, slots=True)
class Query:
    """The object-level part of a filter: which kind, and what it must satisfy."""

    kind: str | None  # None: any kind
    comp: CompFilter | None
    negated_calendar: bool = False

    @property
    def needs_parsing(self) -> bool:
        return self.comp is not None and not self.comp.trivial


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _ascii_lower(value: str) -> str:
    return value.translate(_ASCII_LOWER)


def _utc(value: str | None, fallback: dt.datetime) -> dt.datetime:
    if value is None:
        return fallback
    try:
        parsed = dt.datetime.strptime(value.strip(), "%Y%m%dT%H%M%SZ")
    except ValueError:
        raise DavError(400, VALID_FILTER, f"time-range needs UTC date-times: {value!r}") from None
    return parsed.replace(tzinfo=dt.UTC)


def _time_range(node: etree._Element | None) -> TimeRange | None:
    if node is None:
        return None
    start, end = node.get("start"), node.get("end")
    if start is None and end is None:
        raise DavError(400, VALID_FILTER, "time-range needs start or end")
    found = TimeRange(_utc(start, _FAR_PAST), _utc(end, _FAR_FUTURE))
    if found.end <= found.start:
        raise DavError(400, VALID_FILTER, "time-range end must be after its start")
    return found


def _prop_filter(node: etree._Element) -> PropFilter:
    if node.find(_PARAM) is not None:
        raise DavError(403, SUPPORTED_FILTER, "param-filter is not supported here")
    text_node = node.find(_TEXT)
    text = None
    if text_node is not None:
        collation = text_node.get("collation", "i;ascii-casemap")
        if collation not in ("i;ascii-casemap", "i;octet", "i;unicode-casemap"):
            raise DavError(403, f"{{{CALDAV}}}supported-collation", collation)
        text = TextMatch(
            text_node.text or "", text_node.get("negate-condition") == "yes", collation
        )
    return PropFilter(
        name=(node.get("name") or "").upper(),
        undefined=node.find(_UNDEFINED) is not None,
        time_range=_time_range(node.find(_RANGE)),
        text=text,
    )


def _comp_filter(node: etree._Element) -> CompFilter:
    name = node.get("name")
    if not name:
        raise DavError(400, VALID_FILTER, "comp-filter needs a name")
    return CompFilter(
        name=name.upper(),
        undefined=node.find(_UNDEFINED) is not None,
        time_range=_time_range(node.find(_RANGE)),
        comps=tuple(_comp_filter(c) for c in node.findall(_COMP)),
        props=tuple(_prop_filter(p) for p in node.findall(_PROP)),
    )


def parse_filter(report: etree._Element) -> Query:
    node = report.find(f"{{{CALDAV}}}filter")
    if node is None:
        raise DavError(400, VALID_FILTER, "calendar-query needs a filter")
    tops = node.findall(_COMP)
    if len(tops) != 1 or (tops[0].get("name") or "").upper() != "VCALENDAR":
        raise DavError(400, VALID_FILTER, "the filter must hold one VCALENDAR comp-filter")
    top = _comp_filter(tops[0])
    if top.undefined:
        return Query(None, None, negated_calendar=True)
    if top.props or top.time_range:
        raise DavError(403, SUPPORTED_FILTER, "filters on VCALENDAR itself are not supported")
    if not top.comps:
        return Query(None, None)
    if len(top.comps) > 1:
        raise DavError(403, SUPPORTED_FILTER, "one component filter below VCALENDAR, please")
    comp = top.comps[0]
    return Query(comp.name, comp)


def matches(query: Query, kind: str, text: str) -> bool:
    """Whether a stored object (of ``kind``) satisfies the query.  An object the iCalendar
    libraries cannot read, whatever they raise, matches no filter (``untrusted``)."""
    if query.negated_calendar:
        return False
    comp = query.comp
    if comp is None:
        return True
    if comp.undefined:
        return kind != query.kind
    if kind != query.kind:
        return False
    if comp.trivial:
        return True
    try:
        with untrusted.parsing(_ICAL, "a feed object", expected=(ValueError,)):
            calendar = icalendar.Calendar.from_ical(text)
        return _component_matches(calendar, comp)
    except untrusted.Refused:
        return False  # e.g. VALUE=, (icalendar 7.3: AttributeError), DUE:202301


#: rules whose expansion from a distant start costs seconds (a CPU denial of service by
#: anyone who can publish a feed): matched by their bounds instead of expanded
_DENSE = frozenset({"SECONDLY", "MINUTELY", "HOURLY"})
_DAILY_HORIZON = dt.timedelta(days=366 * 50)
_ICAL = "icalendar"
_RIE = "recurring-ical-events"


def _walk(component: icalendar.cal.Component, name: str) -> list[icalendar.cal.Component]:
    with untrusted.parsing(_ICAL, "a feed object"):
        return list(component.walk(name))


def _values(component: icalendar.cal.Component, name: str) -> list[object]:
    """Every value of a property (a repeated property comes as a list); [] if absent."""
    with untrusted.parsing(_ICAL, "a feed object"):
        found = component.get(name)
    if found is None:
        return []
    return list(found) if isinstance(found, list) else [found]


def _when(value: object) -> dt.datetime | None:
    """A DATE or DATE-TIME value in UTC; None for any other kind of value (a duration, a
    period, a list).  A value the library kept as broken raises ``Refused``."""
    with untrusted.parsing(_ICAL, "a feed object"):
        found = getattr(value, "dt", None)
    if not isinstance(found, dt.date):
        return None
    return _as_utc(found)


def _frequencies(component: icalendar.cal.Component) -> list[str]:
    """The FREQ of each RRULE of a component, upper case (a broken rule has none)."""
    found = []
    for rule in _values(component, "RRULE"):
        if not isinstance(rule, dict):  # vRecur is a dict; a broken rule is text
            continue
        with untrusted.parsing(_ICAL, "a feed object"):
            freq = rule.get("FREQ")
        first = freq[0] if isinstance(freq, list) and freq else freq
        found.append(str(first or "").upper())
    return found


def _by_bounds(calendar: icalendar.Calendar, kind: str, span: TimeRange) -> bool | None:
    """Decide without expanding where that is safe or expansion would be too costly;
    None: expand.  A series starting after the window cannot match; a dense or very old
    daily rule that started before the window's end is answered as a match (a superset:
    clients read the objects themselves)."""
    components = _walk(calendar, kind)
    found = (_when(v) for c in components for v in _values(c, "DTSTART"))
    starts = [start for start in found if start is not None]
    if not starts:
        return None
    if min(starts) >= span.end:
        return False
    for component in components:
        for freq in _frequencies(component):
            if freq in _DENSE or (freq == "DAILY" and span.start - min(starts) > _DAILY_HORIZON):
                return True
    return None


def _instances(calendar: icalendar.Calendar, kind: str, span: TimeRange) -> bool:
    decided = _by_bounds(calendar, kind, span)
    if decided is not None:
        return decided
    # Lazily, in start order: the first occurrence not over before the window decides.
    # (``between`` would build every occurrence of an endless rule up to year 9999 when a
    # client sends only a start.)  A broken series is skipped by the library itself.
    with untrusted.parsing(_RIE, "a feed object"):
        query = recurring_ical_events.of(calendar, components=[kind], skip_bad_series=True)
        occurrences = query.after(span.start)
    for occurrence in untrusted.each(_RIE, occurrences, "a feed object"):
        starts = _values(occurrence, "DTSTART")
        if not starts:
            return True
        start = _when(starts[0])
        return start is not None and start < span.end
    return False


def _component_matches(calendar: icalendar.Calendar, comp: CompFilter) -> bool:
    candidates = _walk(calendar, comp.name)
    if not candidates:
        return False
    if comp.time_range is not None and not _instances(calendar, comp.name, comp.time_range):
        return False
    for sub in comp.comps:
        children = [c for parent in candidates for c in _walk(parent, sub.name) if c is not parent]
        if sub.undefined:
            if children:
                return False
            continue
        if not children:
            return False
        if sub.time_range is not None and not any(
            _value_in_range(child, sub.time_range) for child in children
        ):
            return False
    return all(any(_prop_matches(c, p) for c in candidates) for p in comp.props)


def _value_in_range(component: icalendar.cal.Component, span: TimeRange) -> bool:
    # VALARM trigger times (§9.9) are not expanded; a component inside the window by its
    # own DTSTART counts.
    starts = _values(component, "DTSTART")
    if not starts:
        return True
    start = _when(starts[0])
    return start is not None and span.start <= start < span.end


def _as_utc(value: dt.date | dt.datetime) -> dt.datetime:
    if not isinstance(value, dt.date):
        raise TypeError(f"not a date: {value!r}")
    if not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)  # floating: read as UTC (server's choice, §9.9)
    # the zone comes from the feed's VTIMEZONE through the library; year 1 or 9999 in a
    # zone east or west of UTC has no UTC time (OverflowError)
    with untrusted.parsing(_ICAL, "a feed object"):
        return value.astimezone(dt.UTC)


def _prop_matches(component: icalendar.cal.Component, prop: PropFilter) -> bool:
    items = _values(component, prop.name)
    if prop.undefined:
        return not items
    if not items:
        return False
    if prop.time_range is not None:
        span = prop.time_range
        return any((when := _when(v)) is not None and span.start <= when < span.end for v in items)
    if prop.text is not None:
        with untrusted.parsing(_ICAL, "a feed object"):
            texts = [str(v) for v in items]
        found = any(prop.text.found_in(t) for t in texts)
        return found != prop.text.negate
    return True
