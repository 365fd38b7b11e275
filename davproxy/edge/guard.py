"""Slowing down password guessing: a bounded delay after failed logins.

Every request that carries Basic credentials is a login attempt, whoever checks it
(davproxy's htpasswd in proxy-auth, its credential probe or the upstream itself in
upstream-basic).  A 401 to such a request is a failed login; it is counted against the
client's address and against the user name it claimed.

After ``free`` failures, later attempts from that address and for that name wait before
they are looked at: ``base`` seconds, doubling per further failure, at most
``ceiling``.  Attempts from one address are taken one after another in that rhythm
(each reserves the next slot), so parallel connections do not multiply the guesses; an
address whose queue is already ``ceiling`` long is refused at once (429, no password
checked).  A user name attacked from many addresses makes each check for that name wait
at most ``ceiling``, never refused, so the owner of the name is slowed, not locked out.
Credentials that succeeded within the last hour (kept as an HMAC with a per-process
key, never the password) are not delayed at all: clients already logged in go on as
before, also behind the same address as a guesser (a NAT, a front without
``forwarded_allow_ips``); only credentials not seen working wait their turn.

The waiting is ``asyncio.sleep`` in the request's own task; the event loop never
blocks.  The tables hold at most ``capacity`` entries each (oldest dropped first), and
failures are forgotten ``forget`` seconds after the last one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web


@dataclass(slots=True)
class _Record:
    failures: int
    last_failure: float
    next_slot: float  # when the next attempt for this key may be looked at


class LoginGuard:
    def __init__(
        self,
        ceiling: float = 8.0,
        *,
        base: float = 0.5,
        free: int = 3,
        forget: float = 900.0,
        remember_success: float = 3600.0,
        capacity: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ceiling = ceiling
        self.base = base
        self.free = free
        self.forget = forget
        self.remember_success = remember_success
        self.capacity = capacity
        self.clock = clock
        self._records: OrderedDict[tuple[str, str], _Record] = OrderedDict()
        self._succeeded: OrderedDict[bytes, float] = OrderedDict()  # digest -> until
        self._key = secrets.token_bytes(32)

    @property
    def enabled(self) -> bool:
        return self.ceiling > 0

    def delay_after(self, failures: int) -> float:
        """The pause between attempts once a key has ``failures`` failures."""
        if not self.enabled or failures < self.free:
            return 0.0
        return min(self.ceiling, self.base * 2.0 ** (failures - self.free))

    def digest(self, user: str, password: str) -> bytes:
        material = user.encode() + b"\0" + password.encode()
        return hmac.new(self._key, material, hashlib.sha256).digest()

    def _record(self, key: tuple[str, str], now: float) -> _Record | None:
        record = self._records.get(key)
        if record is not None and now - record.last_failure > self.forget:
            del self._records[key]
            return None
        return record

    def admit(self, address: str, user: str, password: str) -> float | None:
        """How long this attempt must wait before it is looked at (0: at once), or None:
        refused (the address has a full queue).  Reserves the attempt's slot."""
        if not self.enabled or not self._records:
            return 0.0
        now = self.clock()
        until = self._succeeded.get(self.digest(user, password))
        if until is not None and until > now:
            return 0.0  # these very credentials worked a moment ago
        by_address = self._record(("address", address), now)
        by_user = self._record(("user", user), now)
        wait = 0.0
        if by_address is not None:
            queued = by_address.next_slot - now
            if queued > self.ceiling:
                return None
            wait = max(wait, queued)
        if by_user is not None:
            wait = max(wait, min(self.ceiling, by_user.next_slot - now))
        for record in (by_address, by_user):
            if record is not None and record.failures >= self.free:
                later = max(record.next_slot, now + wait) + self.delay_after(record.failures)
                # bounded: a queue never reaches further than one ceiling past this wait
                record.next_slot = min(later, now + wait + self.ceiling)
        return max(0.0, wait)

    @property
    def quiet(self) -> bool:
        """No failure is remembered: ``admit`` lets every attempt in at once."""
        return not self.enabled or not self._records

    def failed(self, address: str, user: str) -> None:
        """A 401 to credentials from ``address`` claiming ``user``."""
        if not self.enabled:
            return
        now = self.clock()
        for key in (("address", address), ("user", user)):
            record = self._record(key, now)
            if record is None:
                record = _Record(0, now, now)
                self._records[key] = record
            record.failures += 1
            record.last_failure = now
            record.next_slot = max(record.next_slot, now + self.delay_after(record.failures))
            self._records.move_to_end(key)
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)  # the longest without a failure

    def succeeded(self, user: str, password: str) -> None:
        """Credentials that were accepted: not delayed for ``remember_success`` seconds."""
        if not self.enabled:
            return
        digest = self.digest(user, password)
        self._succeeded[digest] = self.clock() + self.remember_success
        self._succeeded.move_to_end(digest)
        while len(self._succeeded) > self.capacity:
            self._succeeded.popitem(last=False)

    def size(self) -> int:
        return len(self._records) + len(self._succeeded)


# The application's guard; and the outcome of a login made without a Basic header (the
# sharing web page's form checks its credentials itself), for the access log and metrics.
GUARD = web.AppKey("guard", LoginGuard)
FORM_LOGIN = web.RequestKey("form_login", str)
