"""Third-party parsers fed hostile text: the one place where what they raise is caught.

davproxy hands text it does not trust to libraries: feed objects from any origin to
icalendar and recurring-ical-events (calendar-query), request and upstream bodies to
lxml, hrefs, subscription URLs and redirect targets to yarl.  Which exceptions those
raise on hostile input is no part of their API and changes between releases (icalendar
7.3 raises ``AttributeError`` for a ``VALUE=,`` parameter where davproxy expected
``ValueError``), so a caller that lists exception types breaks on the next release.

Only the library call goes inside the block, never davproxy's own code around it::

    with untrusted.parsing("icalendar", "a feed object"):
        calendar = icalendar.Calendar.from_ical(text)

Any ``Exception`` raised inside becomes :class:`Refused` (the original chained as its
cause), which the caller turns into its documented answer: "does not match", "not
iCalendar", 400.  A bug in davproxy's own code outside such a block still surfaces as a
traceback and a 500.  Each refusal is logged (logger ``davproxy.untrusted``): a warning
the first time this process sees a kind of failure — library, exception type and the
line that raised it — and debug after that, so one hostile feed queried all day does not
flood the log while every new way a library fails still reaches the operator.
Exceptions a library documents for bad input (``expected``) are logged at debug only.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import PurePath
from typing import TypeVar

log = logging.getLogger("davproxy.untrusted")

T = TypeVar("T")

#: kinds of failure already warned about (bounded: past this, refusals log at debug only)
_MAX_KINDS = 256
_warned: set[tuple[str, str, str]] = set()
_lock = threading.Lock()


class Refused(Exception):
    """A third-party library could not read hostile input (its exception is the cause)."""

    def __init__(self, library: str, what: str, error: BaseException) -> None:
        # the library's message may quote the hostile input: short, one line, escaped
        detail = repr(str(error)[:200])[1:-1]
        super().__init__(f"{library} refused {what}: {type(error).__name__}: {detail}")
        self.library = library
        self.what = what
        self.error = error


def _where(error: BaseException) -> str:
    """The line that raised, as ``package/module.py:line`` (no absolute paths in logs)."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    parts = PurePath(last.filename).parts
    packages = [n for n, part in enumerate(parts) if part in ("site-packages", "dist-packages")]
    inside = parts[packages[-1] + 1 :] if packages else parts[-3:]
    return f"{'/'.join(inside)}:{last.lineno}"


def _record(refused: Refused, expected: bool) -> None:
    if expected and not log.isEnabledFor(logging.DEBUG):
        return  # documented bad input, not logged: no traceback walk for nothing
    error = refused.error
    where = _where(error)
    kind = (refused.library, type(error).__name__, where)
    with _lock:
        first = not expected and kind not in _warned and len(_warned) < _MAX_KINDS
        if first:
            _warned.add(kind)
    if first:
        log.warning(
            "%s (at %s); treated as unreadable input; further failures of this kind "
            "are logged at debug level",
            refused,
            where,
        )
    else:
        log.debug("%s (at %s)", refused, where)


@contextmanager
def parsing(
    library: str, what: str = "input", expected: tuple[type[BaseException], ...] = ()
) -> Iterator[None]:
    """Run one third-party call on untrusted input; whatever it raises becomes
    :class:`Refused`.  ``expected``: exceptions the library documents for bad input
    (refused all the same, but logged at debug level only)."""
    try:
        yield
    except Refused:
        raise  # already converted by a guard further in
    except Exception as exc:
        refused = Refused(library, what, exc)
        _record(refused, isinstance(exc, expected))
        raise refused from exc


def each(library: str, items: Iterable[T], what: str = "input") -> Iterator[T]:
    """Iterate a library's lazy result (a generator doing the parsing as it goes): each
    step of the library runs guarded, the caller's loop body does not."""
    with parsing(library, what):
        iterator = iter(items)
    while True:
        with parsing(library, what):
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item


def forget_warned() -> None:
    """Warn afresh about every kind of failure (tests)."""
    with _lock:
        _warned.clear()
