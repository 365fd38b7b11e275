"""Cutting a feed into its top-level components at the octet level.

A refresh of a 10,000-event feed in which one event changed should not lex, group and
fingerprint 10,000 events again.  ``segment`` finds the components' boundaries with one
regular-expression pass over the bytes, so the splitter can key everything it learns
about a component by a digest of that component's own bytes (``feeds/split.py``).

Only plainly regular text is segmented: one VCALENDAR, CRLF or LF line ends, every
component closed by its own END, nothing folded onto a BEGIN or END line.  Anything
else returns None, and the line-based splitter, which tolerates and reports every
oddity, reads the whole feed as before.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

# A whole top-level component, from its BEGIN line to the END line of the same name
# (RFC 5545 §3.1: names are case-insensitive).  What is inside is checked by the line
# reader when the component is lexed, exactly as in a whole-feed read.
_KINDS = rb"VEVENT|VTODO|VJOURNAL|VFREEBUSY|VAVAILABILITY|VTIMEZONE"
KINDS = tuple(kind.decode("ascii") for kind in _KINDS.split(b"|"))
_KIND_CODES = {kind.encode("ascii"): code for code, kind in enumerate(KINDS)}
# Lazily by whole lines (not by characters, which tried an END at every one: 3x slower).
_COMPONENT = re.compile(
    rb"^BEGIN:(" + _KINDS + rb")[ \t]*\r?\n(?:[^\n]*\n)*?END:\1[ \t]*(?:\r?\n|\Z)",
    re.MULTILINE | re.IGNORECASE,
)
_BARE_CR = re.compile(rb"\r(?!\n)")
# Any top-level BEGIN/END line: between components only the calendar's own may stand.
_BOUNDARY = re.compile(
    rb"^(?:BEGIN|END):(?:" + _KINDS + rb"|VCALENDAR)[ \t]*\r?$", re.MULTILINE | re.IGNORECASE
)


class Block(tuple[str, int, int, int]):
    """One top-level component: its kind (upper case: VEVENT, VTIMEZONE ...), the
    1-based physical line of its BEGIN, and where it is in the feed."""

    __slots__ = ()

    @property
    def kind(self) -> str:
        return self[0]

    @property
    def first_line(self) -> int:
        return self[1]

    @property
    def start(self) -> int:
        return self[2]

    @property
    def end(self) -> int:
        return self[3]


@dataclass(frozen=True, slots=True)
class Frame:
    """A feed cut into the calendar's own lines and its top-level components.

    The components are kept packed (a kind code and three integers each in arrays: an
    object per component took half the feed's size for a feed of small events)."""

    #: BEGIN/END:VCALENDAR and the calendar properties: (first line, bytes) pieces in order
    calendar: tuple[tuple[int, bytes], ...]
    kinds: bytes  # a code in KINDS per component
    numbers: array[int]  # first line, start, end per component
    data: bytes  # the feed the components are in

    @property
    def size(self) -> int:
        """Bytes of all components together."""
        numbers = self.numbers
        return sum(numbers[2::3]) - sum(numbers[1::3])

    @property
    def blocks(self) -> Iterator[Block]:
        numbers = self.numbers
        for n, code in enumerate(self.kinds):
            yield Block((KINDS[code], numbers[3 * n], numbers[3 * n + 1], numbers[3 * n + 2]))


class _Lines:
    """Physical line numbers of positions met in increasing order."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.line = data, 0, 1

    def at(self, pos: int) -> int:
        self.line += self.data.count(b"\n", self.pos, pos)
        self.pos = pos
        return self.line


def segment(data: bytes) -> Frame | None:
    """The top-level components of one regular VCALENDAR, else None."""
    if _BARE_CR.search(data) is not None:
        return None  # bare CR line ends: only the line-based reader splits those
    lines = _Lines(data)
    calendar: list[tuple[int, bytes]] = []
    kinds = bytearray()
    numbers = array("q")
    bounds: list[tuple[int, bytes]] = []  # (piece, BEGIN/END) of VCALENDAR lines
    outside = 0  # where the calendar's own text resumes
    for match in _COMPONENT.finditer(data):
        start = match.start()
        if start > outside and not _calendar_text(data, outside, start, calendar, bounds, lines):
            return None
        kinds.append(_KIND_CODES[match.group(1).upper()])
        outside = match.end()
        numbers.extend((lines.at(start), start, outside))
    if not _calendar_text(data, outside, len(data), calendar, bounds, lines):
        return None
    # one calendar: opened by the first line, closed by the last
    if bounds != [(0, b"BEGIN"), (len(calendar) - 1, b"END")]:
        return None
    if (
        data[: data.index(b":")].strip().upper() != b"BEGIN"
        or data[data.rindex(b":") :].strip(b": \t\r\n").upper() != b"VCALENDAR"
    ):
        return None  # anything before the BEGIN or after the END line
    return Frame(tuple(calendar), bytes(kinds), numbers, data)


def _calendar_text(
    data: bytes,
    start: int,
    end: int,
    into: list[tuple[int, bytes]],
    bounds: list[tuple[int, bytes]],
    lines: _Lines,
) -> bool:
    """Keep the text between components; False if it is not the calendar's own: the
    BEGIN/END of a component (one without its END), or a fold onto the END before."""
    piece = data[start:end]
    if piece[:1] in (b" ", b"\t"):
        return False
    for match in _BOUNDARY.finditer(piece):
        word, _, name = match.group().partition(b":")
        if name.strip().upper() != b"VCALENDAR":
            return False
        bounds.append((len(into), word.upper()))
    into.append((lines.at(start), piece))
    return True
