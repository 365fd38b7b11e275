"""davproxy.dav.untrusted: whatever a third-party parser raises on hostile input becomes one
``Refused``, logged once per kind; davproxy's own code outside the guard is never hidden."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from davproxy.dav import untrusted


@pytest.fixture(autouse=True)
def fresh_warnings() -> Iterator[None]:
    untrusted.forget_warned()
    yield
    untrusted.forget_warned()


def library_call(error: BaseException) -> None:
    raise error


@pytest.mark.parametrize(
    "error",
    [
        AttributeError("'list' object has no attribute 'upper'"),  # icalendar 7.3, VALUE=,
        KeyError("FREQ"),
        IndexError("list index out of range"),
        RecursionError("maximum recursion depth exceeded"),
        RuntimeError("anything a future release raises"),
        ValueError("documented"),
    ],
)
def test_every_exception_of_the_library_call_becomes_refused(error: BaseException) -> None:
    with pytest.raises(untrusted.Refused) as caught, untrusted.parsing("somelib", "a thing"):
        library_call(error)
    assert caught.value.error is error and caught.value.__cause__ is error
    assert caught.value.library == "somelib"
    assert str(caught.value).startswith(f"somelib refused a thing: {type(error).__name__}")


def test_code_after_the_guard_is_not_hidden() -> None:
    def caller() -> str:
        with untrusted.parsing("somelib"):
            value = "parsed"
        return value.no_such_method()  # type: ignore[attr-defined] # davproxy's own bug

    with pytest.raises(AttributeError):
        caller()


def test_not_exceptions_pass_through() -> None:
    with pytest.raises(KeyboardInterrupt), untrusted.parsing("somelib"):
        raise KeyboardInterrupt


def test_a_guard_inside_a_guard_does_not_wrap_twice() -> None:
    error = TypeError("x")
    with pytest.raises(untrusted.Refused) as caught, untrusted.parsing("outer"):
        with untrusted.parsing("inner"):
            library_call(error)
    assert caught.value.library == "inner" and caught.value.error is error


def test_a_kind_of_failure_is_a_warning_once_then_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="davproxy.untrusted")
    for _ in range(3):
        with pytest.raises(untrusted.Refused), untrusted.parsing("somelib", "a feed object"):
            library_call(AttributeError("boom"))
    with pytest.raises(untrusted.Refused), untrusted.parsing("somelib", "a feed object"):
        library_call(KeyError("other kind"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    debugs = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(warnings) == 2 and len(debugs) == 2
    first = warnings[0].getMessage()
    assert "somelib refused a feed object: AttributeError: boom" in first
    assert "test_untrusted.py:" in first  # where it was raised, without the full path
    assert "/work/" not in first and "/tmp/" not in first


def test_the_message_quoting_hostile_input_stays_one_short_line() -> None:
    hostile = "x\n2026-01-01 ERROR forged log line\r" + "y" * 1000
    with pytest.raises(untrusted.Refused) as caught, untrusted.parsing("somelib"):
        library_call(ValueError(hostile))
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message and len(message) < 300
    assert "x\\n2026-01-01 ERROR forged" in message


def test_documented_refusals_are_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="davproxy.untrusted")
    with pytest.raises(untrusted.Refused), untrusted.parsing("lxml", expected=(ValueError,)):
        library_call(ValueError("malformed"))
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


def test_each_guards_the_library_steps_not_the_loop_body() -> None:
    def lazy() -> Iterator[int]:
        yield 1
        yield 2
        raise AttributeError("the library broke on the third item")

    seen = []
    with pytest.raises(untrusted.Refused):
        for item in untrusted.each("somelib", lazy()):
            seen.append(item)
    assert seen == [1, 2]

    with pytest.raises(ZeroDivisionError):  # the caller's own bug inside the loop
        for item in untrusted.each("somelib", lazy()):
            item / 0  # noqa: B018
    assert list(untrusted.each("somelib", iter([3, 4]))) == [3, 4]
    with pytest.raises(untrusted.Refused):
        untrusted.each("somelib", 5).__next__()  # type: ignore[arg-type] # not iterable
