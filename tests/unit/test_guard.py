"""The failed-login delay (davproxy/edge/guard.py), on a clock the test moves by hand."""

from __future__ import annotations

import pytest

from davproxy.edge.guard import LoginGuard


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def guard(clock: Clock, **options: float) -> LoginGuard:
    return LoginGuard(clock=clock, **options)  # type: ignore[arg-type]


def test_delay_grows_per_failure_and_is_bounded() -> None:
    g = LoginGuard(8.0)
    delays = [g.delay_after(n) for n in range(0, 12)]
    assert delays[:3] == [0.0, 0.0, 0.0]  # a mistyped password or two costs nothing
    assert delays[3:8] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert all(d == 8.0 for d in delays[8:])  # never more than the ceiling
    assert delays == sorted(delays)
    assert LoginGuard(0.0).delay_after(50) == 0.0 and not LoginGuard(0.0).enabled


def test_a_sequential_guesser_waits_longer_and_longer(clock: Clock) -> None:
    g = guard(clock)
    waits = []
    for _ in range(12):
        wait = g.admit("203.0.113.9", "alice", "guess")
        assert wait is not None
        waits.append(wait)
        clock.now += wait  # the attempt waits its turn, then fails
        g.failed("203.0.113.9", "alice")
    assert waits[:3] == [0.0, 0.0, 0.0]  # three free failures
    assert waits[3:9] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert all(w <= 8.0 for w in waits)
    # 50 guesses: at least the sum of the delays, far from the 0.7 s measured before
    g2, total = guard(Clock()), 0.0
    for _ in range(50):
        wait = g2.admit("198.51.100.1", "bob", "guess")
        assert wait is not None
        total += wait
        g2.clock.now += wait  # type: ignore[attr-defined]
        g2.failed("198.51.100.1", "bob")
    assert total >= sum(g2.delay_after(n) for n in range(1, 50)) - 1e-6
    assert total > 300


def test_parallel_attempts_from_one_address_queue_then_are_refused(clock: Clock) -> None:
    g = guard(clock)
    for _ in range(6):
        g.failed("203.0.113.9", "alice")  # delay now 2 s per attempt
    waits = [g.admit("203.0.113.9", f"user{n}", "guess") for n in range(10)]
    admitted = [w for w in waits if w is not None]
    assert admitted == sorted(admitted) and len(set(admitted)) == len(admitted)  # one by one
    assert max(admitted) <= 8.0
    assert None in waits  # the queue is full: refused unchecked
    # another address is not affected
    assert g.admit("198.51.100.7", "carol", "pw") == 0.0


def test_a_name_under_attack_slows_its_checks_but_never_refuses_them(clock: Clock) -> None:
    g = guard(clock)
    for n in range(40):  # many addresses, one name
        g.failed(f"203.0.113.{n}", "alice")
    waits = [g.admit(f"198.51.100.{n}", "alice", "guess") for n in range(20)]
    assert None not in waits
    assert all(0 < w <= 8.0 for w in waits)  # type: ignore[operator]


def test_credentials_that_worked_are_not_delayed(clock: Clock) -> None:
    g = guard(clock)
    g.succeeded("alice", "right")
    for _ in range(10):
        g.failed("203.0.113.9", "alice")  # someone guesses alice's password
    assert g.admit("203.0.113.9", "alice", "right") == 0.0  # alice herself: no wait
    assert g.admit("203.0.113.9", "alice", "guess")  # the guesser waits


def test_failures_are_forgotten_and_the_table_is_bounded(clock: Clock) -> None:
    g = guard(clock, capacity=100)
    for _ in range(10):
        g.failed("203.0.113.9", "alice")
    assert g.admit("203.0.113.9", "alice", "x")
    clock.now += 901  # 15 minutes without a failure
    assert g.admit("203.0.113.9", "alice", "x") == 0.0
    for n in range(1000):
        g.failed(f"10.0.{n // 250}.{n % 250}", f"user{n}")
        g.succeeded(f"user{n}", "pw")
    assert g.size() <= 200
    # the newest are kept, the oldest dropped
    assert g.admit("10.0.3.249", "user999", "y") is not None


def test_disabled_guard_never_waits(clock: Clock) -> None:
    g = guard(clock, ceiling=0.0)
    for _ in range(50):
        g.failed("203.0.113.9", "alice")
    assert g.admit("203.0.113.9", "alice", "guess") == 0.0
    assert g.size() == 0
