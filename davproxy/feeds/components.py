"""A feed's top-level components read line by line, and what grouping needs of each.

- RFC 5545 §3.4/§3.6: a VCALENDAR holds calendar properties and components; a
  component runs from its BEGIN to the END of the same name, possibly holding others
  (VALARM); the object components and VTIMEZONE only ever stand at the top level.
- RFC 5545 §3.8.4.7 UID, §3.8.4.4 RECURRENCE-ID and §3.2.19 TZID: what groups a
  component into a resource and which time zones it needs.

Tolerant: a component that lost its END is dropped and reported, never the rest
(``feeds/split.py`` turns the components into resources).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from davproxy.feeds.lines import FeedWarning, Line, params, value_of
from davproxy.feeds.normal import canonical_form, digest

#: Top-level components that become resources (VAVAILABILITY: RFC 7953).
OBJECT_KINDS = frozenset({"VEVENT", "VTODO", "VJOURNAL", "VFREEBUSY", "VAVAILABILITY"})
#: Components that can only appear at the top level: meeting one inside another component means
#: the open one lost its END line.
_TOP_ONLY = OBJECT_KINDS | {"VTIMEZONE", "VCALENDAR"}
_HAS_TZID = re.compile(r";\s*tzid\s*=", re.IGNORECASE)  # cheap pre-check before parsing params


class Facts(NamedTuple):
    """What grouping needs of one top-level component: a pure function of its bytes."""

    kind: str
    uid: str  # VTIMEZONE: its TZID ('' when it has none)
    synthetic: bool
    rid: str | None  # the RECURRENCE-ID line after its name (the override's key); None: master
    refs: tuple[str, ...]  # TZIDs it references, in order


@dataclass(slots=True)
class Comp:
    kind: str
    lineno: int
    lines: list[Line]
    broken: str | None = None


def components(
    lines: list[Line], warnings: list[FeedWarning]
) -> tuple[list[Comp], list[Line], bool]:
    """Delimit top-level components; returns them, the calendar-level lines and completeness."""
    comps: list[Comp] = []
    cal_lines: list[Line] = []
    cur: Comp | None = None
    stack: list[str] = []  # open components inside ``cur``, outermost first
    calendars = 0
    open_cal = False

    def drop(comp: Comp, why: str) -> None:
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
            cur, stack = Comp(word, line.lineno, [line]), [word]
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


# --- splitting --------------------------------------------------------------------------------


def first_property(comp: Comp, name: str) -> Line | None:
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


def tzid_refs(comps: Iterable[Comp]) -> list[str]:
    seen: dict[str, None] = {}
    for comp in comps:
        for line in comp.lines:
            if _HAS_TZID.search(line.text) is None:
                continue
            for pname, pvalue in params(line.text):
                if pname == "TZID" and pvalue:
                    seen.setdefault(pvalue, None)
    return list(seen)


def add_uid(comp: Comp, uid: str) -> None:
    comp.lines.insert(1, Line("UID", f"UID:{uid}", f"UID:{uid}", comp.lineno))


def _shared(kind: str) -> str:
    return sys.intern(kind) if len(kind) < 40 else kind


def facts_of(comp: Comp, warnings: list[FeedWarning]) -> Facts:
    if comp.kind == "VTIMEZONE":
        tzline = first_property(comp, "TZID")
        tzid = value_of(tzline.text).strip() if tzline is not None else ""
        return Facts(comp.kind, tzid, False, None, ())
    uid_line = first_property(comp, "UID")
    uid = value_of(uid_line.text).strip() if uid_line is not None else ""
    synthetic = not uid
    if synthetic:
        # same content -> same UID on every fetch, so no delete/add churn (spec §4)
        uid = f"{digest(canonical_form(comp.lines))[:32]}@synthetic.davproxy"
        add_uid(comp, uid)
        warnings.append(FeedWarning("synthetic-uid", comp.lineno, uid))
    rid_line = first_property(comp, "RECURRENCE-ID")
    rid = rid_line.text[len("RECURRENCE-ID") :] if rid_line is not None else None
    return Facts(_shared(comp.kind), uid, synthetic, rid, tuple(tzid_refs([comp])))
