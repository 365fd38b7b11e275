"""Sessions of the sharing web page: server-side, in davproxy's store (migration 8).

Why the store and not memory: a restart of davproxy (a configuration change, an
upgrade) does not log everybody out, the table is bounded by expiry and a per-user
cap, and a session is one indexed row.  The browser holds only a random id (256 bits)
in an ``HttpOnly`` cookie; the store keeps its SHA-256, so a copy of the store opens
no session.  No password is written anywhere:

* ``proxy-auth``: the session is bound to a digest of the user's htpasswd hash when it
  was opened; a changed password or a removed user ends every session of that user at
  their next request.
* ``upstream-basic``: davproxy must speak to the upstream as the user, with the user's
  own credentials.  Those stay in this process's memory only (bounded like the verdict
  cache), so after a restart such a session ends and the user logs in again.

A session ends after ``IDLE_SECONDS`` without a request, ``MAX_SECONDS`` after login,
at logout, or when a user opens more than ``PER_USER`` (the oldest goes).  Each
session carries its own CSRF token (synchronizer token pattern), compared in constant
time.  ``last_seen`` is written at most once a minute, so reading pages costs no write.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from davproxy.store import Store

IDLE_SECONDS = 2 * 3600.0
MAX_SECONDS = 12 * 3600.0
PER_USER = 10
_TOUCH_EVERY = 60.0
_MAX_CREDENTIALS = 10_000


@dataclass(frozen=True, slots=True)
class Session:
    key: str  # SHA-256 of the cookie's id
    user: str
    csrf: str
    binding: str
    flash: str  # JSON [kind, text] or ""
    created: float
    last_seen: float

    def csrf_ok(self, token: str) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf.encode(), token.encode())


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


class WebSessions:
    """The page's sessions for one upstream."""

    def __init__(self, store: Store, upstream: str, clock: Callable[[], float] = time.time):
        self.store = store
        self.upstream = upstream
        self.clock = clock
        # upstream-basic only: the user's Authorization header, by session key
        self._credentials: OrderedDict[str, str] = OrderedDict()

    def open(self, user: str, binding: str, authorization: str | None) -> tuple[str, Session]:
        """A new session (never a reused id: no fixation); the cookie value and it."""
        cookie = secrets.token_urlsafe(32)
        now = self.clock()
        session = Session(_key(cookie), user, secrets.token_urlsafe(32), binding, "", now, now)
        with self.store.transaction():
            self._expire(now)
            self.store.execute(
                "INSERT INTO web_sessions (key, upstream, user, csrf, binding, flash, created,"
                " last_seen) VALUES (?, ?, ?, ?, ?, '', ?, ?)",
                (session.key, self.upstream, user, session.csrf, binding, now, now),
            )
            others = self.store.execute(  # the new one stays, with the newest others
                "SELECT key FROM web_sessions WHERE upstream = ? AND user = ? AND key != ?"
                " ORDER BY created DESC, last_seen DESC",
                (self.upstream, user, session.key),
            ).fetchall()
            for (old,) in others[PER_USER - 1 :]:
                self._delete(old)
        if authorization is not None:
            self._credentials[session.key] = authorization
            while len(self._credentials) > _MAX_CREDENTIALS:
                self._credentials.popitem(last=False)
        return cookie, session

    def find(self, cookie: str | None) -> Session | None:
        """The live session a cookie names (expired ones are ended here)."""
        if not cookie or len(cookie) > 128:
            return None
        key = _key(cookie)
        row = self.store.execute(
            "SELECT key, user, csrf, binding, flash, created, last_seen FROM web_sessions"
            " WHERE key = ? AND upstream = ?",
            (key, self.upstream),
        ).fetchone()
        if row is None:
            self._credentials.pop(key, None)
            return None
        session = Session(*row)
        now = self.clock()
        if now - session.last_seen > IDLE_SECONDS or now - session.created > MAX_SECONDS:
            self.end(session)
            return None
        if now - session.last_seen > _TOUCH_EVERY:
            with self.store.transaction():
                self.store.execute(
                    "UPDATE web_sessions SET last_seen = ? WHERE key = ?", (now, session.key)
                )
        return session

    def credentials(self, session: Session) -> str | None:
        """The user's own Authorization header (upstream-basic), while this process has it."""
        return self._credentials.get(session.key)

    def end(self, session: Session) -> None:
        with self.store.transaction():
            self._delete(session.key)

    def end_user(self, user: str) -> int:
        """End every session of a user (how many there were)."""
        with self.store.transaction():
            rows = self.store.execute(
                "SELECT key FROM web_sessions WHERE upstream = ? AND user = ?",
                (self.upstream, user),
            ).fetchall()
            for (key,) in rows:
                self._delete(key)
        return len(rows)

    def count(self) -> int:
        row = self.store.execute(
            "SELECT COUNT(*) FROM web_sessions WHERE upstream = ?", (self.upstream,)
        ).fetchone()
        return int(row[0])

    def flash(self, session: Session, kind: str, text: str) -> None:
        """A message for the next page this session shows (after a redirect)."""
        with self.store.transaction():
            self.store.execute(
                "UPDATE web_sessions SET flash = ? WHERE key = ?",
                (json.dumps([kind, text[:2000]]), session.key),
            )

    def take_flash(self, session: Session) -> tuple[str, str] | None:
        if not session.flash:
            return None
        with self.store.transaction():
            self.store.execute("UPDATE web_sessions SET flash = '' WHERE key = ?", (session.key,))
        kind, text = json.loads(session.flash)
        return str(kind), str(text)

    def _delete(self, key: str) -> None:
        self.store.execute("DELETE FROM web_sessions WHERE key = ?", (key,))
        self._credentials.pop(key, None)

    def _expire(self, now: float) -> None:
        rows = self.store.execute(
            "SELECT key FROM web_sessions WHERE upstream = ? AND (last_seen < ? OR created < ?)",
            (self.upstream, now - IDLE_SECONDS, now - MAX_SECONDS),
        ).fetchall()
        for (key,) in rows:
            self._delete(key)
