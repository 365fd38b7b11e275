"""Time questions about a sharee's calendar copy, answered from their own view.

``C:free-busy-query`` (RFC 4791 §7.10), and the time-range of a ``VALARM`` filter (§9.9:
when the alarm triggers), both of which depend on personal data the upstream does not
hold for sharees.

Transparency is personal in a shared calendar (caldav-sharing §5.5.4): the upstream
only knows the owner's, so a sharee's free-busy query is answered here.  The events
overlapping the range are fetched from the upstream (a ``calendar-query`` with that
time-range), each shown as the sharee sees it (``peruser_view``), expanded with
recurring-ical-events, and every instance that is neither ``TRANSP:TRANSPARENT`` nor
``STATUS:CANCELLED`` becomes a busy period (``BUSY-TENTATIVE`` when tentative), clipped
to the range, as §7.10 describes.  The owner's own query passes through untouched.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

import icalendar
import recurring_ical_events
from aiohttp import web
from lxml import etree

from davproxy.dav import davxml, untrusted
from davproxy.dav.davxml import CALDAV, DAV
from davproxy.dav.errors import DavError, PlainError
from davproxy.sharing.peruser_store import Entry, PerUserStore
from davproxy.store.records import Share
from davproxy.upstream.proxy import Forward

FREE_BUSY_QUERY = f"{{{CALDAV}}}free-busy-query"
CALENDAR_DATA = f"{{{CALDAV}}}calendar-data"
_RANGE = f"{{{CALDAV}}}time-range"
_LIBRARY = "icalendar"


class View(Protocol):
    """What this needs of ``peruser_view.View`` (which calls it)."""

    share: Share
    spec: Forward
    store: PerUserStore

    async def send(
        self, method: str, headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> tuple[int, object, bytes]: ...

    def member_of(self, href: str) -> str | None: ...

    def text(self, text: str, entry: Entry | None) -> str: ...


def _when(value: str | None) -> dt.datetime:
    try:
        return dt.datetime.strptime((value or "").strip(), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise DavError(
            400, f"{{{CALDAV}}}valid-filter", "time-range needs UTC start and end"
        ) from None


def _utc(value: dt.date) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


async def serve(view: View, root: etree._Element) -> web.StreamResponse:
    span = root.find(_RANGE)
    if span is None:
        raise DavError(400, f"{{{CALDAV}}}valid-filter", "free-busy-query needs a time-range")
    start, end = _when(span.get("start")), _when(span.get("end"))
    if end <= start:
        raise DavError(400, f"{{{CALDAV}}}valid-filter", "the time-range ends before it starts")
    query = etree.Element(f"{{{CALDAV}}}calendar-query", nsmap={"D": DAV, "C": CALDAV})
    prop = etree.SubElement(query, davxml.PROP)
    etree.SubElement(prop, CALENDAR_DATA)
    top = etree.SubElement(
        etree.SubElement(query, f"{{{CALDAV}}}filter"), f"{{{CALDAV}}}comp-filter", name="VCALENDAR"
    )
    events = etree.SubElement(top, f"{{{CALDAV}}}comp-filter", name="VEVENT")
    etree.SubElement(events, _RANGE, start=span.get("start", ""), end=span.get("end", ""))
    status, _, body = await view.send(
        "REPORT",
        {"Depth": "1", "Content-Type": "application/xml; charset=utf-8"},
        davxml.serialize(query),
    )
    if status != 207:
        if status in (401, 403, 404):
            raise DavError(403 if status == 401 else status, None, "the upstream refused the query")
        raise PlainError(502, f"Upstream answered {status} to a calendar-query")
    entries = view.store.entries(view.share)
    busy: list[tuple[dt.datetime, dt.datetime, str]] = []
    for node in davxml.parse(body).findall(davxml.RESPONSE):
        link, data = node.findtext(davxml.HREF) or "", node.findtext(f".//{CALENDAR_DATA}")
        if view.spec.response_hrefs is not None:
            link = view.spec.response_hrefs(link)
        member = view.member_of(link)
        if data and member:
            busy += _periods(view.text(data, entries.get(member)), start, end)
    return web.Response(
        body=_freebusy(sorted(busy), start, end), content_type="text/calendar", charset="utf-8"
    )


def _periods(
    text: str, start: dt.datetime, end: dt.datetime
) -> list[tuple[dt.datetime, dt.datetime, str]]:
    """The busy instances of one object in the range (an unreadable one has none)."""
    found = []
    try:
        with untrusted.parsing(_LIBRARY, "a shared object"):
            calendar = icalendar.Calendar.from_ical(text)
            instances = recurring_ical_events.of(calendar, components=["VEVENT"]).between(
                start, end
            )
        for event in instances:
            with untrusted.parsing(_LIBRARY, "a shared object"):
                transp = str(event.get("TRANSP", "OPAQUE")).upper()
                state = str(event.get("STATUS", "CONFIRMED")).upper()
                first = _utc(event["DTSTART"].dt)
                last = _utc(event["DTEND"].dt) if "DTEND" in event else first + event.duration
            if transp == "TRANSPARENT" or state == "CANCELLED":
                continue
            kind = "BUSY-TENTATIVE" if state == "TENTATIVE" else "BUSY"
            found.append((max(first, start), min(last, end), kind))
    except (untrusted.Refused, KeyError, TypeError):
        return []
    return [(a, b, kind) for a, b, kind in found if a < b]


def _freebusy(
    busy: list[tuple[dt.datetime, dt.datetime, str]], start: dt.datetime, end: dt.datetime
) -> bytes:
    calendar = icalendar.Calendar()
    calendar.add("prodid", "-//davproxy//per-user free-busy//EN")
    calendar.add("version", "2.0")
    component = icalendar.FreeBusy()
    component.add("dtstamp", dt.datetime.now(dt.UTC).replace(microsecond=0))
    component.add("dtstart", start)
    component.add("dtend", end)
    merged: list[tuple[dt.datetime, dt.datetime, str]] = []
    for first, last, kind in busy:  # overlapping periods of one type become one
        if merged and merged[-1][2] == kind and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last), kind)
        else:
            merged.append((first, last, kind))
    for first, last, kind in merged:
        component.add("freebusy", (first, last), parameters={"FBTYPE": kind})
    calendar.add_component(component)
    return calendar.to_ical()


#: how far before or after its instance an alarm may trigger and still be found
_MAX_LEAD = dt.timedelta(days=366)


def alarm_in_range(text: str, start: dt.datetime, end: dt.datetime) -> bool:
    """Whether an alarm of the object triggers in [start, end) (RFC 4791 §9.9): relative
    triggers from each instance's start (or end, ``RELATED=END``), absolute ones as they
    are; repetitions aside.  An object the libraries cannot read has none."""
    try:
        with untrusted.parsing(_LIBRARY, "a shared object"):
            calendar = icalendar.Calendar.from_ical(text)
            instances = recurring_ical_events.of(calendar, components=["VEVENT", "VTODO"])
            window = instances.between(start - _MAX_LEAD, end + _MAX_LEAD)
        for instance in window:
            with untrusted.parsing(_LIBRARY, "a shared object"):
                for alarm in instance.walk("VALARM"):
                    trigger = alarm.get("TRIGGER")
                    when = getattr(trigger, "dt", None)
                    if isinstance(when, dt.timedelta):
                        related = str(trigger.params.get("RELATED", "START")).upper()
                        anchor = instance.get("DTEND" if related == "END" else "DTSTART")
                        if anchor is None:
                            continue
                        when = _utc(anchor.dt) + when
                    if isinstance(when, dt.date) and start <= _utc(when) < end:
                        return True
    except (untrusted.Refused, TypeError):
        return False
    return False
