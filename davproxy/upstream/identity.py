"""Who is asking: credential checks before anything davproxy owns is unlocked.

Two modes (chosen per upstream in its mapping file):

* ``upstream-basic`` — clients keep their upstream passwords.  davproxy forwards
  passthrough requests untouched (the upstream checks them) and, before serving or
  rewriting anything itself, proves the credentials with a PROPFIND on the user's
  principal at the upstream.
* ``proxy-auth`` — davproxy checks Basic credentials against its own htpasswd file
  (bcrypt, SHA-crypt or APR1 hashes) and tells the upstream who the user is in a
  trusted header.  The upstream must listen on loopback only; any client-sent copy of
  that header is stripped by the proxy.

Verdicts are cached briefly under an HMAC of the credentials with a per-process random
key, so neither passwords nor reversible forms of them are kept in memory tables.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from passlib.context import CryptContext
from passlib.hash import bcrypt, sha256_crypt, sha512_crypt

from davproxy.config import IdentityConfig
from davproxy.dav.errors import PlainError, unauthorized
from davproxy.upstream.client import Upstream

log = logging.getLogger("davproxy.identity")

# Schemes accepted in davproxy's own htpasswd file.  Plain text and DES crypt are
# refused on purpose: a leaked file must not hand out passwords.
_CONTEXT = CryptContext(schemes=["bcrypt", "sha512_crypt", "sha256_crypt", "apr_md5_crypt"])
# Verified when the user is unknown, so timing does not reveal which users exist.
_DUMMY_HASH = sha256_crypt.using(rounds=5000).hash("davproxy-dummy-password")
_NEGATIVE_TTL = 5.0


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    password: str
    authorization: str  # the header value, for forwarding in upstream-basic mode


def parse_basic(header: str | None) -> Credentials | None:
    """Decode an ``Authorization: Basic`` header; None when absent or not Basic."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    user, sep, password = text.partition(":")
    if not sep or not valid_user_id(user):
        return None
    return Credentials(user, password, header.strip())


def valid_user_id(user: str) -> bool:
    """A user id must be usable as one path segment and in a trusted header."""
    return (
        0 < len(user) <= 256
        and user not in (".", "..")
        and not user.startswith(".")
        and not any(c in user for c in "/\\")
        and all(c.isprintable() for c in user)
    )


class Htpasswd:
    """An htpasswd file, re-read when it changes so users can be added live.

    A change is noticed by the file's (mtime, size, inode): ``davproxy admin user``
    and editors that rename a new file into place change the inode, in-place writers
    the size or mtime.  ``refresh`` does the file I/O and is called from worker threads
    (``verify``) or through ``asyncio.to_thread``; ``users`` only reads what was loaded,
    so the event loop never waits for the disk or for a hash."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._hashes: dict[str, str] = {}
        self._dummy = _DUMMY_HASH
        self._dummy_stamp: tuple[int, int, int] | None = None
        self._last_error = ""
        self.generation = 0  # counts loads: a cache of verdicts is stale when it moves
        self._load()

    def _load(self) -> bool:
        """Re-read on change (True when something was loaded); a file that cannot be
        read or decoded keeps the last good copy (OSError/ValueError are raised)."""
        with self._lock:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if stamp == self._stamp:
                return False
            text = self.path.read_bytes().decode("utf-8")
            hashes: dict[str, str] = {}
            for number, line in enumerate(text.splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                user, sep, hashed = line.partition(":")
                if not sep or not _CONTEXT.identify(hashed, required=False):
                    log.warning(
                        "%s line %d (user %r): not a bcrypt/SHA-crypt/APR1 hash; entry ignored",
                        self.path,
                        number,
                        user,
                    )
                    continue
                hashes[user] = hashed
            self._hashes, self._stamp = hashes, stamp
            self.generation += 1
            log.info("loaded %d users from %s", len(hashes), self.path)
            return True

    def refresh(self) -> bool:
        """Blocking: notice a change of the file; errors are logged once each and the
        last good copy is kept.  True when a new version was loaded."""
        try:
            loaded = self._load()
        except (OSError, ValueError) as exc:
            message = str(exc)
            if message != self._last_error:
                log.error(
                    "cannot read htpasswd file %s (keeping the last good copy): %s",
                    self.path,
                    message,
                )
            self._last_error = message
            return False
        if self._last_error:
            self._last_error = ""
        return loaded

    def users(self) -> set[str]:
        """The users loaded last (no I/O: safe on the event loop)."""
        return set(self._hashes)

    def fingerprint(self, user: str) -> str | None:
        """A digest of the user's current hash (None when the user is not in the file):
        the web page's sessions end when it changes.  No I/O."""
        hashed = self._hashes.get(user)
        return hashlib.sha256(hashed.encode()).hexdigest() if hashed is not None else None

    def verify(self, user: str, password: str) -> bool:
        """Blocking (hashes are slow on purpose): call from a worker thread."""
        self.refresh()
        hashed = self._hashes.get(user)
        return _verify(password, hashed if hashed is not None else self._dummy_hash()) and (
            hashed is not None
        )

    def _dummy_hash(self) -> str:
        """Unknown users are checked against a hash of the same scheme and cost as the
        real entries, so timing does not tell which user names exist (made here, in a
        worker thread, not while loading)."""
        with self._lock:
            if self._dummy_stamp != self._stamp and self._hashes:
                self._dummy = _dummy_like(next(iter(self._hashes.values())))
                self._dummy_stamp = self._stamp
            return self._dummy


def _verify(password: str, hashed: str) -> bool:
    """A password check that never raises: odd input is simply a wrong password."""
    secret = password.encode("utf-8")
    if hashed.startswith(("$2a$", "$2b$", "$2y$")):
        secret = secret[:72]  # bcrypt reads 72 bytes; Apache's htpasswd truncates the same
    try:
        return bool(_CONTEXT.verify(secret, hashed))
    except (ValueError, TypeError):
        return False


def _dummy_like(hashed: str) -> str:
    try:
        scheme = _CONTEXT.identify(hashed)
        handler = _CONTEXT.handler(scheme)
        rounds = getattr(handler.from_string(hashed), "rounds", None)
        configured = handler.using(rounds=rounds) if rounds else handler
        return str(configured.hash("davproxy-dummy-password"))
    except (ValueError, TypeError):
        return _DUMMY_HASH


class VerdictCache:
    """Short-lived memory of credential verdicts, keyed by a keyed hash."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._key = secrets.token_bytes(32)
        self._entries: dict[bytes, tuple[bool, float]] = {}

    def _digest(self, credentials: Credentials) -> bytes:
        material = credentials.user.encode() + b"\0" + credentials.password.encode()
        return hmac.new(self._key, material, hashlib.sha256).digest()

    def get(self, credentials: Credentials) -> bool | None:
        digest = self._digest(credentials)
        entry = self._entries.get(digest)
        if entry is None:
            return None
        verdict, expires = entry
        if self.clock() >= expires:
            del self._entries[digest]
            return None
        return verdict

    def clear(self) -> None:
        self._entries.clear()

    def put(self, credentials: Credentials, verdict: bool) -> None:
        ttl = self.ttl if verdict else min(self.ttl, _NEGATIVE_TTL)
        if ttl <= 0:
            return
        if len(self._entries) > 10_000:  # bounded: drop expired, then everything
            now = self.clock()
            self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
            if len(self._entries) > 10_000:
                self._entries.clear()
        self._entries[self._digest(credentials)] = (verdict, self.clock() + ttl)


class Authenticator:
    """Verifies a request's credentials for one upstream, in its configured mode."""

    def __init__(self, config: IdentityConfig, upstream: Upstream) -> None:
        self.config = config
        self.upstream = upstream
        self.cache = VerdictCache(config.cache_seconds)
        self.htpasswd = Htpasswd(config.htpasswd) if config.htpasswd is not None else None
        # One verification in flight per credential digest: a burst of parallel
        # requests from one client costs one hash (or one upstream probe), not N.
        self._inflight: dict[bytes, asyncio.Task[bool]] = {}
        # The htpasswd file is looked at (in a worker thread) at most once a second
        # while requests arrive, so a changed or removed password stops working within
        # about a second rather than after cache_seconds.
        self._generation = self.htpasswd.generation if self.htpasswd is not None else 0
        self._next_look = 0.0

    @property
    def proxy_auth(self) -> bool:
        return self.config.mode == "proxy-auth"

    def headers_for(self, user: str, authorization: str | None = None) -> dict[str, str]:
        """Headers that make the upstream act for ``user``.

        proxy-auth: the trusted header.  upstream-basic: the client's own credentials
        when they are that user's, else the configured service account.
        """
        if self.proxy_auth:
            return {self.config.trusted_header: user}
        if authorization is not None:
            return {"Authorization": authorization}
        access = self.upstream.config.access
        if access.service_user and access.service_password is not None:
            token = f"{access.service_user}:{access.service_password.reveal()}".encode()
            return {"Authorization": "Basic " + base64.b64encode(token).decode()}
        raise PlainError(
            503,
            "Shared collections need [access] service_user and service_password in "
            "upstream-basic mode",
        )

    async def notice_changes(self) -> None:
        """Pick up a changed htpasswd file (``davproxy admin user …``, an editor): the
        directory sees new users, and verdicts made under the old file are forgotten."""
        if self.htpasswd is None or not self.proxy_auth:
            return
        now = time.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + 1.0
        await asyncio.to_thread(self.htpasswd.refresh)
        if self.htpasswd.generation != self._generation:
            self._generation = self.htpasswd.generation
            self.cache.clear()

    def look_due(self) -> bool:
        """Whether ``verify`` would look at the htpasswd file first (``notice_changes``)."""
        return self.htpasswd is not None and self.proxy_auth and time.monotonic() >= self._next_look

    async def verify(self, credentials: Credentials) -> bool:
        await self.notice_changes()
        cached = self.cache.get(credentials)
        if cached is not None:
            return cached
        key = self.cache._digest(credentials)
        task = self._inflight.get(key)
        if task is None:
            # Its own task: a client that hangs up cannot cancel the check others await.
            task = asyncio.create_task(self._verify_and_remember(credentials))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _verify_and_remember(self, credentials: Credentials) -> bool:
        verdict = await self._verify_uncached(credentials)
        self.cache.put(credentials, verdict)
        if not verdict:
            log.info("rejected credentials for user %r (%s)", credentials.user, self.config.mode)
        return verdict

    async def _verify_uncached(self, credentials: Credentials) -> bool:
        if self.htpasswd is not None and self.proxy_auth:
            return await asyncio.to_thread(
                self.htpasswd.verify, credentials.user, credentials.password
            )
        return await self.upstream.probe_credentials(credentials.user, credentials.authorization)

    async def require_user(self, authorization: str | None) -> str:
        """The verified user id, or a 401 challenge."""
        credentials = parse_basic(authorization)
        if credentials is None or not await self.verify(credentials):
            raise unauthorized(self.config.realm)
        return credentials.user


def hash_password(password: str, scheme: str = "sha512_crypt") -> str:
    """A hash for davproxy's htpasswd file (used by the demo and the admin docs)."""
    handlers = {
        "bcrypt": bcrypt.using(rounds=10),
        "sha512_crypt": sha512_crypt.using(rounds=5000),
        "sha256_crypt": sha256_crypt.using(rounds=5000),
    }
    return str(handlers[scheme].hash(password))


def random_password() -> str:
    return base64.urlsafe_b64encode(os.urandom(12)).decode().rstrip("=")
