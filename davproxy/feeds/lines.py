"""RFC 5545 §3.1 content lines of a feed: unfolding, decoding, names, parameters, values.

Unfolding is done on the raw octets (a fold may split a multi-octet UTF-8 sequence)
before decoding; a line that is not UTF-8 is read as Windows-1252 and said so; control
characters XML cannot carry are dropped.  Each line keeps the origin's physical text,
so what davproxy serves is the origin's own bytes (``feeds/split.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CRLF = "\r\n"
_FOLD_OCTETS = 75  # RFC 5545 §3.1: lines SHOULD NOT be longer than 75 octets
_BOM = b"\xef\xbb\xbf"
_NAME = re.compile(r"[^;:]*")
#: characters XML 1.0 cannot carry (C0 controls but tab, LF, CR; U+FFFE, U+FFFF)
_NOT_IN_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass(frozen=True, slots=True)
class FeedWarning:
    """Something the splitter tolerated; ``line`` is the 1-based physical line (0: whole feed)."""

    code: str
    line: int
    detail: str


@dataclass(slots=True)
class Line:
    name: str  # upper-cased property name (or BEGIN/END)
    text: str  # unfolded logical line
    raw: str  # the origin's physical lines, CRLF-joined
    lineno: int


def to_utf8_bytes(raw: bytes) -> bytes:
    if raw.startswith(_BOM):
        return raw[len(_BOM) :]
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with BOM (rare, some exporters)
        return raw.decode("utf-16", errors="replace").encode("utf-8")
    return raw


def decode(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def fallback_decode(data: bytes) -> str:
    # Non-UTF-8 feeds are nearly always Windows-1252; latin-1 never fails.
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def refold(text: str) -> str:
    """Fold at <= 75 octets on character boundaries (RFC 5545 §3.1)."""
    if len(text.encode("utf-8")) <= _FOLD_OCTETS:
        return text
    parts: list[str] = []
    cur: list[str] = []
    size = 0
    limit = _FOLD_OCTETS
    for ch in text:
        n = len(ch.encode("utf-8"))
        if size + n > limit:
            parts.append("".join(cur))
            cur, size, limit = [], 0, _FOLD_OCTETS - 1  # continuation lines start with a space
        cur.append(ch)
        size += n
    parts.append("".join(cur))
    return (_CRLF + " ").join(parts)


def prop_name(text: str) -> str:
    m = _NAME.match(text)
    return m.group().strip().upper() if m else ""


def lex(raw: bytes, warnings: list[FeedWarning], first_line: int = 1) -> list[Line]:
    """Unfold physical lines (CRLF, LF or CR) into logical lines, decoding each one;
    ``first_line``: the number of the first physical line (a part of a feed)."""
    physical = to_utf8_bytes(raw).splitlines()
    groups: list[tuple[int, list[bytes]]] = []
    for no, line in enumerate(physical, first_line):
        if line[:1] in (b" ", b"\t") and groups:
            groups[-1][1].append(line)
        elif line.strip():
            # (a leading blank with nothing to continue would fold onto whatever precedes
            # the line where davproxy serves it)
            groups.append((no, [line.lstrip(b" \t")]))
    lines: list[Line] = []
    bad_first = 0
    bad = 0
    controls = 0
    for no, parts in groups:
        logical_b = (
            parts[0] if len(parts) == 1 else b"".join([parts[0], *(p[1:] for p in parts[1:])])
        )
        text = decode(logical_b)
        if text is None:
            text = fallback_decode(logical_b)
            bad += 1
            bad_first = bad_first or no
        if _NOT_IN_XML.search(text):
            # calendar data is served inside XML (calendar-data, displayname...), which
            # cannot carry these: dropped, not passed on to fail every PROPFIND; the line
            # is folded afresh (what is left of the origin's folds could fold wrongly),
            # and must not start blank (it would read as a fold)
            text = _NOT_IN_XML.sub("", text).lstrip(" \t")
            controls += 1
            if text.strip():
                lines.append(Line(prop_name(text), text, refold(text), no))
            continue
        if len(parts) == 1:
            raw_text = text
        else:
            decoded = [decode(p) for p in parts]
            if all(d is not None for d in decoded):
                raw_text = _CRLF.join(d for d in decoded if d is not None)
            else:
                # a fold splitting a UTF-8 sequence, or a non-UTF-8 line: re-fold the decoded text
                raw_text = refold(text)
        lines.append(Line(prop_name(text), text, raw_text, no))
    if bad:
        warnings.append(
            FeedWarning("decode", bad_first, f"{bad} line(s) not UTF-8, read as Windows-1252")
        )
    if controls:
        warnings.append(
            FeedWarning("control-characters", 0, f"{controls} line(s) had control characters")
        )
    return lines


def value_start(text: str) -> int:
    """Index just after the ':' separating parameters from the value (quotes respected)."""
    quoted = False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == ":" and not quoted:
            return i + 1
    return len(text)


def params(text: str) -> list[tuple[str, str]]:
    """The parameters of a content line as (NAME, value) pairs, quotes removed (RFC 5545 §3.2)."""
    semi = text.find(";")
    colon = text.find(":")
    if semi == -1 or (colon != -1 and colon < semi):
        return []
    out: list[tuple[str, str]] = []
    quoted = False
    start = semi + 1
    for i in range(start, len(text) + 1):
        ch = text[i] if i < len(text) else ":"
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in ";:":
            name, _, value = text[start:i].partition("=")
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            out.append((name.strip().upper(), value))
            start = i + 1
            if ch == ":":
                break
    return out


def value_of(text: str) -> str:
    return text[value_start(text) :]


def unescape(value: str) -> str:
    """TEXT value unescaping (RFC 5545 §3.3.11)."""
    out: list[str] = []
    it = iter(value)
    for ch in it:
        if ch == "\\":
            nxt = next(it, "")
            out.append("\n" if nxt in ("n", "N") else nxt)
        else:
            out.append(ch)
    return "".join(out).strip()


# --- structure --------------------------------------------------------------------------------
