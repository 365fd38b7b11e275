"""Leases (store/leases.py): claim, renewal, expiry, release, across two connections."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from davproxy.store import Store
from davproxy.store.leases import Leases, exclusive
from tests import pg


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def two(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Two connections to one store (a SQLite file, a PostgreSQL database), as two
    processes have."""
    where = pg.fresh_url() if request.param == "postgresql" else tmp_path / "s.sqlite3"
    first = Store.open(where)
    second = Store.open(where)
    yield first, second
    first.close()
    second.close()


def test_one_claim_wins_until_release_or_expiry(two: tuple[Store, Store]) -> None:
    clock = Clock()
    a, b = Leases(two[0], clock), Leases(two[1], clock)
    lease = a.claim("feed:1", 60)
    assert lease is not None
    assert b.claim("feed:1", 60) is None
    assert a.claim("feed:1", 60) is None  # not re-entrant: every claim is a new holder
    assert b.held_elsewhere("feed:1")
    clock.now += 59
    assert b.claim("feed:1", 60) is None
    clock.now += 2  # the holder died without releasing: expired
    taken = b.claim("feed:1", 60)
    assert taken is not None and taken.holder != lease.holder
    assert not a.renew(lease, 60)  # the old holder learns it lost the lease
    assert b.renew(taken, 60)
    a.release(lease)  # a lost lease's release changes nothing
    assert a.claim("feed:1", 60) is None
    b.release(taken)
    assert a.claim("feed:1", 60) is not None
    assert a.claim("feed:2", 60) is not None  # names are independent


def test_renewal_extends_and_completion_is_recorded(two: tuple[Store, Store]) -> None:
    clock = Clock()
    a, b = Leases(two[0], clock), Leases(two[1], clock)
    lease = a.claim("startup", 10)
    assert lease is not None
    clock.now += 8
    assert a.renew(lease, 10)
    clock.now += 8  # past the first expiry, within the renewed one
    assert b.claim("startup", 10) is None
    assert not b.done_since("startup", 1000.0)
    a.release(lease, completed=True)
    state = b.state("startup")
    assert state is not None and state.completed == 1000.0  # when that run began
    assert b.done_since("startup", 1000.0) and not b.done_since("startup", 1000.5)
    again = b.claim("startup", 10)
    assert again is not None
    b.release(again, completed=False)  # a failed run does not count as done
    assert not a.done_since("startup", 1000.5)


async def test_exclusive_runs_once_and_renews_while_the_job_runs(
    two: tuple[Store, Store],
) -> None:
    a, b = Leases(two[0]), Leases(two[1])
    started = asyncio.Event()
    calls: list[str] = []

    async def long_job() -> str:
        calls.append("a")
        started.set()
        await asyncio.sleep(0.5)  # longer than the lease: renewed meanwhile
        return "done"

    async def other() -> tuple[bool, str | None]:
        await started.wait()
        for _ in range(8):  # the lease stays held, although it lasts only 0.2 s
            ran, _ = await exclusive(b, "job", _never, seconds=0.2)
            assert not ran
            await asyncio.sleep(0.05)
        return True, None

    first, _ = await asyncio.gather(exclusive(a, "job", long_job, seconds=0.2), other())
    assert first == (True, "done") and calls == ["a"]
    # released at once: the next claim needs no expiry
    assert await exclusive(b, "job", _value, seconds=0.2) == (True, 7)


async def test_waiting_for_a_job_done_elsewhere(two: tuple[Store, Store]) -> None:
    a, b = Leases(two[0]), Leases(two[1])
    since = a.clock()
    order: list[str] = []

    async def job(who: str) -> None:
        order.append(who)
        await asyncio.sleep(0.2)

    results = await asyncio.gather(
        exclusive(a, "startup", lambda: job("a"), wait=True, done_since=since),
        exclusive(b, "startup", lambda: job("b"), wait=True, done_since=since),
    )
    assert len(order) == 1  # the second waited, then found the job done since it began
    assert sorted(ran for ran, _ in results) == [False, True]


async def test_a_failed_job_releases_for_the_next(two: tuple[Store, Store]) -> None:
    a, b = Leases(two[0]), Leases(two[1])

    async def fails() -> None:
        raise RuntimeError("upstream down")

    since = a.clock()
    with pytest.raises(RuntimeError):
        await exclusive(a, "startup", fails, wait=True, done_since=since)
    assert await exclusive(b, "startup", _value, wait=True, done_since=since) == (True, 7)


async def _never() -> None:
    raise AssertionError("must not run")


async def _value() -> int:
    return 7


async def test_a_run_finished_between_look_and_claim_is_not_repeated(
    two: tuple[Store, Store],
) -> None:
    """The holder finishes just after the waiter looked and just before it claims: the
    waiter, now holding the lease, sees the finished run and does not do it again."""
    clock = Clock()
    a, b = Leases(two[0], clock), Leases(two[1], clock)
    since = clock.now
    held = a.claim("startup", 60)
    assert held is not None
    looks = 0
    real_done_since = b.done_since

    def done_since(name: str, when: float) -> bool:
        nonlocal looks
        looks += 1
        if looks == 1:  # the look before the claim: a is still at work ...
            answer = real_done_since(name, when)
            a.release(held)  # ... and finishes right after it
            return answer
        return real_done_since(name, when)

    b.done_since = done_since  # type: ignore[method-assign]
    ran = []

    async def work() -> bool:
        ran.append(1)
        return True

    done, _ = await exclusive(b, "startup", work, wait=True, done_since=since, poll=0.01)
    assert (done, ran) == (False, [])
    assert not b.held_elsewhere("startup")  # given back for whoever comes next
