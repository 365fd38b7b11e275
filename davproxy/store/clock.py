"""PostgreSQL's change clock, read for requests without holding up the event loop.

Each request must see every commit made anywhere before it arrived (a revocation on
another host applies from the next request), so it needs a read of the clock *sent
after it arrived*.  Reads go out on a connection of their own, one at a time, and are
shared: the requests that arrive while a read is on its way wait for the next one, and
one read serves them all.  The event loop serves other requests meanwhile, where a read
on the store's own (synchronous) connection would stop it for the round trip.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from davproxy.store.engines import StoreError, first_line

log = logging.getLogger("davproxy.store")


class ChangeClock:
    QUERY = "SELECT version FROM store_clock"

    def __init__(self, url: str, password: str | None, location: str) -> None:
        self.url, self.password, self.location = url, password, location
        self._conn: Any = None
        self._started = 0  # reads sent so far, numbered 1, 2, ...
        self._finished = 0  # the number of the last read that answered
        self._value = -1  # what it answered
        self._flight: asyncio.Future[None] | None = None
        self.reads = 0  # for tests and benchmarks: round trips made

    async def read(self) -> int:
        """The clock as it stood at some moment after this call began."""
        needed = self._started + 1  # any read started from now on will do
        while self._finished < needed:
            if self._flight is None:
                self._started += 1
                self._flight = asyncio.ensure_future(self._read(self._started))
            flight = self._flight
            await asyncio.shield(flight)  # a cancelled request leaves the read to the others
        return self._value

    async def _read(self, number: int) -> None:
        try:
            conn = await self._connection()
            cursor = await conn.execute(self.QUERY)
            row = await cursor.fetchone()
        except StoreError:
            raise
        except Exception as exc:  # psycopg's errors: the next read connects afresh
            await self._drop()
            raise StoreError(first_line(exc)) from exc
        finally:
            self._flight = None
        self.reads += 1
        self._finished, self._value = number, int(row[0]) if row else 0

    async def _connection(self) -> Any:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        import psycopg

        extra: dict[str, Any] = {}
        if self.password is not None:
            extra["password"] = self.password
        try:
            self._conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=10, application_name="davproxy-clock",
                **extra,
            )  # fmt: skip
        except psycopg.Error as exc:
            raise StoreError(f"cannot open store {self.location}: {first_line(exc)}") from None
        return self._conn

    async def _drop(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.close()
            except Exception as exc:  # already broken: nothing more to do
                log.debug("closing the clock connection: %s", exc)
            self._conn = None

    async def close(self) -> None:
        await self._drop()
