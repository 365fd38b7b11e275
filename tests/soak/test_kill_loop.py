"""davproxy killed with SIGKILL in the middle of share operations, hundreds of times.

One real Radicale (trusting X-Remote-User) and one davproxy configuration and store.
Each cycle starts davproxy, fires a random mix of concurrent share operations (alice
shares or revokes in either wire flavour, bob and carol accept or decline in either
flavour, remove their copies or rename them, anyone deletes notifications) and
SIGKILLs davproxy 0-150 ms after the cycle begins (every request starts before the
kill).  Then, with davproxy down, the SQLite store is opened directly and checked:

* ``PRAGMA integrity_check`` is ok, no foreign key dangles, the schema is complete;
* every invariant that each of davproxy's store transactions (share POST, reply,
  revoke, unbind, notification DELETE, PROPPATCH of a copy) preserves still holds
  (``inspect`` below lists them), so no transaction was half applied;
* per operation: an acknowledged one is in the store (durable), a refused one or one
  that never reached davproxy changed nothing, and one cut off by the kill is either
  wholly there or wholly absent (a share request naming two sharees included); an
  operation that nothing raced is not refused.  These are checked for every
  operation that no other operation of its cycle touched the same share of.

Feed refreshes run through every cycle too: two operator ``[[feeds]]`` come from a
loopback origin whose content changes between cycles (events added, removed and
modified; the "big" feed switches between a few dozen and 2,000-3,000 events, so its
apply takes long enough to be hit), with ``refresh_floor = refresh_default = 1`` and
``jitter = 0``, so the scheduler of each freshly started davproxy refreshes them while
the share operations run; a third of the cycles kill later (150-600 ms) to land in the
big feed's apply.  ``inspect_feeds`` checks F1-F7 on the store after every kill, and the
versions the origin served are recorded for F5.

After the loop davproxy starts once more and the API must agree with the store: every
accepted sharee's copy answers, every copy that ever existed and is no longer accepted
does not, notification listings and the owner's DAV:invite match the rows.

The API check also GETs each feed's ``.ics`` and compares its UIDs with the store's.

The loop runs once per access backend.  With ``radicale-native`` davproxy mirrors each
accepted share into Radicale's own map shares (``[sharing]``, ``/.sharing/v1``) and
makes them equal the store when it starts; a kill can leave them different (a map
granted before the acceptance was recorded, or one still there after a revocation or
unbind was recorded).  After every restart, before any operation, Radicale's maps are
read through the API davproxy uses (``RadicaleSharingApi.list_maps`` as each user) and
``inspect_native`` checks N1 (every accepted share has exactly its one map: the
sharee's mount onto the owner's collection, ``rw``/``r``, enabled, not hidden) and N2
(no map without an accepted share); once more after the loop.  Read-only with davproxy
down, the same comparison counts what the kills left for the reconciliation to mend.

``SOAK_SEED`` repeats a run's random choices (not its timing); ``SOAK_KILL_CYCLES`` /
``SOAK_KILL_SECONDS`` change the bounds per backend (default 200 cycles, 300 s; at
least 200 cycles must complete within the wall-clock cap).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
from lxml import etree

from davproxy.access.radicale_api import RadicaleSharingApi
from davproxy.feeds.store import CALENDAR_END, item_etag
from davproxy.ops.embedded import ServerProcess, start_radicale
from davproxy.store.migrations import MIGRATIONS
from tests.feed_origin import Origin, calendar
from tests.feed_origin import event as feed_event
from tests.helpers import write_config, write_htpasswd
from tests.integration.test_sharing import reply_body, share_body

from .conftest import HOST, MKCOL_BOOK, Site, auth, event, session

pytestmark = pytest.mark.soak

CYCLES = int(os.environ.get("SOAK_KILL_CYCLES", "200"))  # per backend
WALL_SECONDS = float(os.environ.get("SOAK_KILL_SECONDS", "300"))
KILL_AFTER = (0.0, 0.150)  # seconds after the first request
KILL_LATE = (0.150, 0.600)  # a third of the cycles: into the big feed's apply

UPSTREAM = "up"  # write_config's upstream name
OWNER = "alice"
SHAREES = ("bob", "carol")
COLLECTIONS = {"alice/cal0/": "calendar", "alice/cal1/": "calendar", "alice/book0/": "addressbook"}
NOBODY = "mailto:nobody@example.org"  # an unknown sharee: recorded as invalid, never told
TRANSP = "{urn:ietf:params:xml:ns:caldav}schedule-calendar-transp"
DISPLAYNAME = "{DAV:}displayname"
CS_NS = "http://calendarserver.org/ns/"
NS = {"D": "DAV:", "CS": CS_NS}
SHARING_TYPE = {"Content-Type": "application/davsharing+xml; charset=utf-8"}
TEXT_XML = {"Content-Type": "text/xml; charset=utf-8"}
XML = {"Content-Type": "application/xml; charset=utf-8"}
_NOTE_NAME = re.compile(r"([0-9a-f]{32})(-reply)?\.xml")


def mailto(user: str) -> str:
    return f"mailto:{user}@example.org"


def notes_url(user: str, name: str = "") -> str:
    return f"/.davproxy/notifications/{user}/{name}"


# -- the store, read directly ----------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: int
    owner: str
    collection: str
    kind: str
    sharee: str
    sharee_href: str
    access: str
    status: str
    uid: str
    mount: str | None


@dataclass(frozen=True)
class Note:
    user: str
    name: str
    type: str
    body: dict[str, Any] | None
    deleted: bool
    revision: int


@dataclass
class Snapshot:
    shares: dict[tuple[str, str], Row] = field(default_factory=dict)  # (collection, sharee)
    notes: dict[tuple[str, str], Note] = field(default_factory=dict)  # (user, name)
    props: dict[int, dict[str, str]] = field(default_factory=dict)  # share id -> props

    def by_uid(self, uid: str) -> Row | None:
        return next((r for r in self.shares.values() if r.uid == uid), None)

    def live_notes(self, user: str) -> set[str]:
        return {n.name for n in self.notes.values() if n.user == user and not n.deleted}


def inspect(path: Path) -> tuple[Snapshot, list[str]]:
    """Read the store as davproxy left it and list every broken invariant.

    The invariants, each preserved by every transaction in sharing.py/notifications.py:

    I1  integrity_check ok, foreign_key_check empty, migrations 1 and 2 applied.
    I2  status 'accepted' <=> mount set; mounts unique; a mount is one segment in the
        sharee's home; kinds and owners are the collections'.
    I3  an accepted calendar share has schedule-calendar-transp (set on acceptance).
    I4  a share of a known sharee has its invitation row ``<uid>.xml`` for the sharee.
        If it is live (not a tombstone: the sharee may delete it), it describes this
        share with its current access, and says 'noresponse' for an open share and
        'accepted' for an accepted one (re-sent by an access change) or a declined one
        (only left by a removed copy; an answer to the invitation tombstones it in
        the same transaction).
    I5  an invalid sharee (unknown href) has no notification at all.
    I6  an accepted or declined share has the owner's reply row ``<uid>-reply.xml``; if
        live it says the share's status.  An open share's reply row, if any and live,
        says 'declined' (a re-invitation after a decline or a removed copy).
    I7  a live invitation whose share is gone says no-access (an accepted share's
        revocation notice); open and declined shares' invitations are tombstoned
        with the row.
    I8  notification revisions are unique and the revision counter is their maximum.
    I9  notification names are ``<uid>.xml`` (share-invite) or ``<uid>-reply.xml``
        (share-reply).
    """
    problems: list[str] = []
    snap = Snapshot()
    conn = sqlite3.connect(str(path))  # recovers the WAL a killed davproxy left
    try:
        integrity = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        if integrity != ["ok"]:
            problems.append(f"I1 integrity_check: {integrity[:5]}")
        dangling = conn.execute("PRAGMA foreign_key_check").fetchall()
        if dangling:
            problems.append(f"I1 foreign_key_check: {dangling[:5]}")
        versions = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        if versions != {version for version, _, _ in MIGRATIONS}:
            problems.append(f"I1 schema_migrations: {sorted(versions)}")
        for r in conn.execute(
            "SELECT id, upstream, owner, collection, kind, sharee, sharee_href, access,"
            " status, invite_uid, mount FROM shares"
        ):
            if r[1] != UPSTREAM:
                problems.append(f"I2 share {r[0]} of upstream {r[1]!r}")
            row = Row(r[0], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10])
            snap.shares[(row.collection, row.sharee)] = row
        for r in conn.execute(
            "SELECT upstream, user, name, type, body, deleted, revision FROM notifications"
        ):
            body = json.loads(r[4]) if r[4] else None
            snap.notes[(r[1], r[2])] = Note(r[1], r[2], r[3], body, bool(r[5]), r[6])
        for share_id, name, value in conn.execute(
            "SELECT share_id, name, value FROM instance_props"
        ):
            snap.props.setdefault(share_id, {})[name] = value
        counter = conn.execute("SELECT value FROM counters WHERE name = 'revision'").fetchone()
        revisions = [n.revision for n in snap.notes.values()]
    finally:
        conn.close()

    # I2
    mounts = Counter(r.mount for r in snap.shares.values() if r.mount is not None)
    for mount, count in mounts.items():
        if count > 1:
            problems.append(f"I2 mount {mount} used by {count} shares")
    for row in snap.shares.values():
        if (row.status == "accepted") != (row.mount is not None):
            problems.append(f"I2 {row.status} share {row.id} has mount {row.mount!r}")
        if row.mount is not None and not re.fullmatch(
            re.escape(row.sharee) + r"/[^/]+/", row.mount
        ):
            problems.append(f"I2 share {row.id} of {row.sharee} mounted at {row.mount}")
        if row.owner != OWNER or COLLECTIONS.get(row.collection) != row.kind:
            problems.append(f"I2 share {row.id}: {row.owner} {row.collection} {row.kind}")
        # I3
        calendar = row.status == "accepted" and row.kind == "calendar"
        if calendar and TRANSP not in snap.props.get(row.id, {}):
            problems.append(f"I3 accepted calendar share {row.id} without {TRANSP}")
        # I5
        if row.status == "invalid":
            named = [k for k in snap.notes if k[1] in (f"{row.uid}.xml", f"{row.uid}-reply.xml")]
            if named or row.sharee in SHAREES:
                problems.append(f"I5 invalid share {row.id} ({row.sharee}): notes {named}")
            continue
        # I4
        invite = snap.notes.get((row.sharee, f"{row.uid}.xml"))
        if invite is None:
            problems.append(f"I4 {row.status} share {row.id} has no invitation row")
        elif invite.type != "share-invite":
            problems.append(f"I4 invitation of share {row.id} has type {invite.type}")
        elif not invite.deleted:
            body = invite.body or {}
            said = {k: body.get(k) for k in ("uid", "collection", "sharee", "sharer", "access")}
            meant = {
                "uid": row.uid,
                "collection": row.collection,
                "sharee": row.sharee,
                "sharer": row.owner,
                "access": row.access,
            }
            if said != meant:
                problems.append(f"I4 live invitation of share {row.id} says {said}, not {meant}")
            wanted = "noresponse" if row.status == "noresponse" else "accepted"
            if body.get("status") != wanted:
                problems.append(
                    f"I4 {row.status} share {row.id}: live invitation says {body.get('status')}"
                )
        # I6
        reply = snap.notes.get((row.owner, f"{row.uid}-reply.xml"))
        if row.status in ("accepted", "declined") and reply is None:
            problems.append(f"I6 {row.status} share {row.id}: the owner was never told")
        if reply is not None:
            if reply.type != "share-reply":
                problems.append(f"I6 reply of share {row.id} has type {reply.type}")
            elif not reply.deleted:
                told = (reply.body or {}).get("status")
                wanted = "declined" if row.status == "noresponse" else row.status
                if told != wanted or (reply.body or {}).get("sharee") != row.sharee:
                    problems.append(f"I6 {row.status} share {row.id}: the owner was told {told}")
    # I7, I9
    uids = {r.uid: r for r in snap.shares.values()}
    for note in snap.notes.values():
        match = _NOTE_NAME.fullmatch(note.name)
        if match is None or note.type != ("share-reply" if match.group(2) else "share-invite"):
            problems.append(f"I9 notification {note.user}/{note.name} of type {note.type}")
            continue
        owner_row = uids.get(match.group(1))
        if owner_row is not None:
            expected_user = owner_row.owner if match.group(2) else owner_row.sharee
            if note.user != expected_user:
                problems.append(f"I7 {note.name} of share {owner_row.id} belongs to {note.user}")
        live_orphan = owner_row is None and not match.group(2) and not note.deleted
        if live_orphan and (note.body or {}).get("access") != "no-access":
            problems.append(
                f"I7 live invitation {note.user}/{note.name} to a share that is gone: {note.body}"
            )
    # I8
    if len(set(revisions)) != len(revisions):
        problems.append("I8 notification revisions repeat")
    if counter is None or counter[0] != max(revisions, default=0):
        problems.append(f"I8 revision counter {counter} != newest revision {max(revisions)}")
    return snap, problems


# -- operations --------------------------------------------------------------------------

Key = tuple[str, ...]


@dataclass
class Op:
    kind: str  # share | reply | delete-note | unbind | rename
    user: str
    method: str
    path: str
    body: str | None
    headers: dict[str, str]
    keys: tuple[Key, ...]
    ok: frozenset[int]  # done
    refusals: frozenset[int]  # legitimate refusals when raced
    delay: float
    # what the operation should do: the sharees' accesses (share), the share it answers,
    # the notification it deletes, the display name it sets
    wants: dict[str, Any] = field(default_factory=dict)
    outcome: str = "unsent"  # acked | refused | unexpected | cut | unsent
    connected: bool = False  # a connection to davproxy was opened for it
    status: int | None = None
    answer: bytes = b""
    location: str | None = None

    def describe(self) -> str:
        detail = f" -> {self.status}" if self.status is not None else ""
        return f"{self.kind} {self.user} {self.method} {self.path} {self.wants}: {self.outcome}{detail}"


def share_key(collection: str, sharee: str) -> Key:
    return ("share", collection, sharee)


def cs_share(sets: list[tuple[str, str]], removes: list[str]) -> str:
    items = "".join(
        f"<CS:set><D:href>{h}</D:href><CS:summary>Soak</CS:summary><CS:{a}/></CS:set>"
        for h, a in sets
    ) + "".join(f"<CS:remove><D:href>{h}</D:href></CS:remove>" for h in removes)
    return f'<?xml version="1.0"?><CS:share xmlns:D="DAV:" xmlns:CS="{CS_NS}">{items}</CS:share>'


def cs_reply(row: Row, accept: bool) -> str:
    status = "invite-accepted" if accept else "invite-declined"
    return (
        f'<?xml version="1.0"?><CS:invite-reply xmlns:D="DAV:" xmlns:CS="{CS_NS}">'
        f"<D:href>{mailto(row.sharee)}</D:href><CS:{status}/>"
        f"<CS:hosturl><D:href>/{row.collection}</D:href></CS:hosturl>"
        f"<CS:in-reply-to>{row.uid}</CS:in-reply-to></CS:invite-reply>"
    )


def plan(rng: random.Random, pre: Snapshot, window: float, native: bool = False) -> list[Op]:
    """A random mix of 5-12 operations, chosen from the state before the cycle, each
    starting at a random moment within ``window`` (before the kill).

    ``native``: with the radicale-native backend a copy's path stops being davproxy's
    the moment the store lets it go, and until Radicale's map is deleted a request
    there reaches Radicale, which refuses the sharee's DELETE of the mapped collection
    with 403: a raced unbind may be refused with 403 as well as 404."""
    unbind_refusals = frozenset({403, 404} if native else {404})
    ops: list[Op] = []
    open_shares = [r for r in pre.shares.values() if r.status == "noresponse"]
    accepted = [r for r in pre.shares.values() if r.status == "accepted"]
    # answered shares can be answered again: the sharee changes their mind (issue 12)
    answered = [r for r in pre.shares.values() if r.status in ("accepted", "declined")]
    live = [n for n in pre.notes.values() if not n.deleted]
    for _ in range(rng.randint(5, 12)):
        delay = rng.uniform(0, window)  # every request starts before the kill
        kind = rng.choices(
            ["share", "reply", "delete-note", "unbind", "rename"], weights=[34, 34, 14, 9, 9]
        )[0]
        if kind == "reply" and (open_shares or answered):
            again = bool(answered) and (not open_shares or rng.random() < 0.3)
            row = rng.choice(answered if again else open_shares)
            accept = rng.random() < (0.5 if again else 0.7)
            wants = {"uid": row.uid, "accept": accept}
            key = (share_key(row.collection, row.sharee),)
            invite = pre.notes.get((row.sharee, f"{row.uid}.xml"))
            # the reply-url takes answers after its invitation was removed, too
            if (again or (invite is not None and not invite.deleted)) and rng.random() < 0.6:
                ops.append(
                    Op(
                        "reply", row.sharee, "POST", notes_url(row.sharee, f"{row.uid}.xml"),
                        reply_body(accept), SHARING_TYPE, key,
                        frozenset({201 if accept else 204}), frozenset({403, 404}), delay, wants,
                    )
                )  # fmt: skip
            else:  # Apple's flavour: to the home, by uid (works after a deleted invitation)
                ops.append(
                    Op(
                        "reply", row.sharee, "POST", f"/{row.sharee}/", cs_reply(row, accept),
                        TEXT_XML, key, frozenset({200 if accept else 204}), frozenset({403}),
                        delay, wants,
                    )
                )  # fmt: skip
            continue
        if kind == "delete-note" and live:
            note = rng.choice(live)
            match = _NOTE_NAME.fullmatch(note.name)
            of = pre.by_uid(match.group(1)) if match else None
            note_key = (
                share_key(of.collection, of.sharee)
                if of is not None
                else ("note", note.user, note.name)
            )
            ops.append(
                Op(
                    "delete-note", note.user, "DELETE", notes_url(note.user, note.name), None, {},
                    (note_key,), frozenset({204}), frozenset({404}), delay,
                    {"note": (note.user, note.name)},
                )
            )  # fmt: skip
            continue
        if kind in ("unbind", "rename") and accepted:
            row = rng.choice(accepted)
            key = (share_key(row.collection, row.sharee),)
            if kind == "unbind":
                ops.append(
                    Op(
                        "unbind", row.sharee, "DELETE", f"/{row.mount}", None, {}, key,
                        frozenset({204}), unbind_refusals, delay, {"uid": row.uid},
                    )
                )  # fmt: skip
            else:
                name = f"Copy {rng.randrange(10**6)}"
                body = (
                    '<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop>'
                    f"<D:displayname>{name}</D:displayname></D:prop></D:set></D:propertyupdate>"
                )
                ops.append(
                    Op(
                        "rename", row.sharee, "PROPPATCH", f"/{row.mount}", body, XML, key,
                        frozenset({207}), frozenset({403, 404, 409}), delay,
                        {"uid": row.uid, "name": name},
                    )
                )  # fmt: skip
            continue
        # a share change: one sharee, sometimes both (one transaction), at times a revoke
        collection = rng.choice(list(COLLECTIONS))
        sharees = list(SHAREES) if rng.random() < 0.2 else [rng.choice(SHAREES)]
        accesses = {
            s: rng.choices(["read", "read-write", "no-access"], weights=[35, 35, 30])[0]
            for s in sharees
        }
        if rng.random() < 0.6:
            hrefs = [(mailto(s), a) for s, a in accesses.items()]
            if rng.random() < 0.05:
                hrefs.append((NOBODY, "read"))
                accesses[NOBODY] = "read"
            body, headers, ok = share_body(*hrefs), SHARING_TYPE, 204
        else:
            sets = [(mailto(s), a) for s, a in accesses.items() if a != "no-access"]
            removes = [mailto(s) for s, a in accesses.items() if a == "no-access"]
            body, headers, ok = cs_share(sets, removes), TEXT_XML, 200
        ops.append(
            Op(
                "share", OWNER, "POST", f"/{collection}", body, headers,
                tuple(share_key(collection, s) for s in accesses), frozenset({ok}),
                frozenset(), delay, {"collection": collection, "access": accesses},
            )
        )  # fmt: skip
    return ops


def connection_tracer() -> aiohttp.TraceConfig:
    """Marks an operation once a connection carries it.  aiohttp retries idempotent
    methods (DELETE) on a new connection after a broken one, so a refused connection
    alone does not prove that the request never reached davproxy."""

    async def connected(_: object, context: Any, __: object) -> None:
        context.trace_request_ctx.connected = True

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(connected)
    trace.on_connection_reuseconn.append(connected)
    return trace


async def run(http: aiohttp.ClientSession, base: str, op: Op) -> None:
    await asyncio.sleep(op.delay)
    headers = {**auth(op.user), **op.headers}
    try:
        async with http.request(
            op.method, base + op.path, data=op.body, headers=headers, trace_request_ctx=op
        ) as r:
            op.answer = await r.read()
            op.status = r.status
            op.location = r.headers.get("Location")
    except (TimeoutError, aiohttp.ClientError):
        # sent, then the kill: applied wholly or not at all; or davproxy was gone
        # before any connection carried it: not applied
        op.outcome = "cut" if op.connected else "unsent"
        return
    if op.status in op.ok:
        op.outcome = "acked"
    elif op.status in op.refusals:
        op.outcome = "refused"
    else:
        op.outcome = "unexpected"
    if op.kind == "reply" and op.outcome == "acked" and op.wants["accept"]:
        if op.location is None:  # Apple's flavour names the copy in the body
            found = etree.fromstring(op.answer).findtext(".//D:href", namespaces=NS)
            # CalendarServer's form: the copy's path without its trailing slash
            op.location = found if found is None else found.rstrip("/") + "/"
        else:
            op.location = "/" + op.location.split("://", 1)[1].split("/", 1)[1]


# -- what each operation must have done ------------------------------------------------


def _share_view(row: Row | None) -> tuple[Any, ...] | None:
    return None if row is None else (row.uid, row.access, row.status, row.mount)


def _share_target(pre: Row | None, post: Row | None, sharee: str, access: str) -> bool:
    if access == "no-access":
        return post is None
    if post is None or post.access != access:
        return False
    if pre is None:
        wanted = "noresponse" if sharee in SHAREES else "invalid"
        return post.status == wanted and post.mount is None
    status = pre.status if pre.status in ("accepted", "noresponse", "invalid") else "noresponse"
    return (post.uid, post.status, post.mount) == (pre.uid, status, pre.mount)


def _effect(op: Op, pre: Snapshot, post: Snapshot) -> tuple[bool, bool]:
    """(applied, unchanged): the store shows the operation's whole effect / none of it."""
    if op.kind == "share":
        collection = op.wants["collection"]
        pairs = [
            (pre.shares.get((collection, s)), post.shares.get((collection, s)), s, a)
            for s, a in op.wants["access"].items()
        ]
        return (
            all(_share_target(b, a, s, acc) for b, a, s, acc in pairs),
            all(_share_view(b) == _share_view(a) for b, a, _, _ in pairs),
        )
    if op.kind == "delete-note":
        note_before, note_after = pre.notes.get(op.wants["note"]), post.notes.get(op.wants["note"])
        return note_after is not None and note_after.deleted, note_before == note_after
    row = pre.by_uid(op.wants["uid"])
    assert row is not None
    after = post.shares.get((row.collection, row.sharee))
    unchanged = _share_view(row) == _share_view(after)
    if after is None or after.uid != row.uid:
        return False, unchanged
    if op.kind == "rename":
        shown = post.props.get(after.id, {}).get(DISPLAYNAME, "")
        return op.wants["name"] in shown, unchanged and pre.props.get(row.id) == post.props.get(
            row.id
        )
    if op.kind == "reply" and op.wants["accept"]:
        mounted = after.mount is not None and op.location in (None, "/" + after.mount)
        return after.status == "accepted" and mounted, unchanged
    # unbind, decline
    return (after.status, after.mount) == ("declined", None), unchanged


def verify_op(op: Op, pre: Snapshot, post: Snapshot) -> list[str]:
    """Durable if acknowledged, no change if refused or never sent, all or nothing if cut."""
    applied, unchanged = _effect(op, pre, post)
    if op.outcome == "acked" and not applied:
        return [f"acknowledged but not in the store: {op.describe()}"]
    if op.outcome in ("refused", "unsent") and not unchanged:
        if op.outcome == "refused":
            return [f"refused, yet the store changed: {op.describe()}"]
        return [f"never reached davproxy, yet the store changed: {op.describe()}"]
    if op.outcome == "refused":
        return [f"refused though nothing raced it: {op.describe()} {op.answer[:300]!r}"]
    if op.outcome == "cut" and not (applied or unchanged):
        return [f"half applied: {op.describe()}"]
    return []


def verify_cycle(ops: list[Op], pre: Snapshot, post: Snapshot) -> list[str]:
    problems = [
        f"unexpected answer {op.describe()}: {op.answer[:300]!r}"
        for op in ops
        if op.outcome == "unexpected"
    ]
    touched = Counter(key for op in ops for key in op.keys)
    for op in ops:
        if all(touched[key] == 1 for key in op.keys):  # nothing raced it
            problems += verify_op(op, pre, post)
    return problems


# -- the API after the loop ------------------------------------------------------------


def _multistatus(body: bytes) -> etree._Element:
    return etree.fromstring(body)


def _found(status: int, body: bytes) -> bool:
    """A PROPFIND answer that shows the resource."""
    if status != 207:
        return False
    statuses = [s.text or "" for s in _multistatus(body).iterfind(".//D:status", NS)]
    return any(" 200 " in s for s in statuses)


async def verify_api(
    http: aiohttp.ClientSession, base: str, snap: Snapshot, ever_mounted: dict[str, str]
) -> list[str]:
    problems: list[str] = []
    propfind = '<D:propfind xmlns:D="DAV:"><D:prop><D:displayname/></D:prop></D:propfind>'

    async def call(user: str, method: str, path: str, body: str, depth: str) -> tuple[int, bytes]:
        headers = {**auth(user), **XML, "Depth": depth}
        async with http.request(method, base + path, data=body, headers=headers) as r:
            return r.status, await r.read()

    current = {r.mount: r for r in snap.shares.values() if r.mount is not None}
    for mount, row in sorted(current.items()):
        status, body = await call(row.sharee, "PROPFIND", f"/{mount}", propfind, "0")
        if not _found(status, body):
            problems.append(f"accepted copy /{mount} of {row.sharee} answers {status}")
    for mount, sharee in sorted(ever_mounted.items()):
        if mount in current:
            continue
        status, body = await call(sharee, "PROPFIND", f"/{mount}", propfind, "0")
        if _found(status, body) or status not in (207, 403, 404):
            problems.append(f"removed copy /{mount} still answers {sharee}: {status}")
    for user in (OWNER, *SHAREES):
        status, body = await call(user, "PROPFIND", notes_url(user), propfind, "1")
        hrefs = {h.text for h in _multistatus(body).iterfind("D:response/D:href", NS)}
        wanted = {notes_url(user, name) for name in snap.live_notes(user)} | {notes_url(user)}
        if status != 207 or hrefs != wanted:
            problems.append(f"{user}'s notifications: {status} {sorted(hrefs ^ wanted)}")
    invite_prop = '<D:propfind xmlns:D="DAV:"><D:prop><D:invite/></D:prop></D:propfind>'
    for collection in COLLECTIONS:
        status, body = await call(OWNER, "PROPFIND", f"/{collection}", invite_prop, "0")
        shown = set()
        for sharee in _multistatus(body).iterfind(".//D:invite/D:sharee", NS):
            state = next(
                (etree.QName(c).localname for c in sharee if "invite-" in str(c.tag)), None
            )
            access = sharee.find("D:share-access/*", NS)
            shown.add(
                (
                    sharee.findtext("D:href", namespaces=NS),
                    state,
                    etree.QName(access).localname if access is not None else None,
                )
            )
        stored = {
            (r.sharee_href, f"invite-{r.status}", r.access)
            for r in snap.shares.values()
            if r.collection == collection
        }
        if status != 207 or shown != stored:
            problems.append(f"DAV:invite of /{collection}: {status} {shown} != {stored}")
    return problems


# -- radicale-native: Radicale's own map shares against the store --------------------


# what Radicale must hold for each access, written out here rather than taken from
# davproxy's own table, so that a wrong table there is caught
MAP_PERMISSIONS = {"read": "r", "read-write": "rw"}


def _radicale_path(path: str) -> str:
    return "/" + unquote(path).strip("/") + "/"


async def radicale_maps(url: str) -> list[dict[str, Any]]:
    """Every map share Radicale holds, read through the API davproxy uses (as each
    user: ``map/list`` answers from the Radicale process, whose csv table is the one it
    enforces; the file on disk may lag behind its cache)."""
    async with session(timeout=10) as http:
        api = RadicaleSharingApi(http, url, lambda user: {"X-Remote-User": user}, timeout=10)
        maps: list[dict[str, Any]] = []
        for user in (OWNER, *SHAREES):
            maps += await api.list_maps(user)
        return maps


def inspect_native(store: Path, maps: list[dict[str, Any]]) -> list[str]:
    """Radicale's rights against the store (radicale-native backend):

    N1  every accepted share (status accepted, mount set) has exactly one Radicale map
        share: at ``/<mount>`` for the sharee, onto the owner's ``/<collection>``, owned
        by the owner, permissions ``rw`` for read-write and ``r`` for read
        (``MAP_PERMISSIONS``), enabled by both sides and hidden by neither.
    N2  Radicale has no other map share: none without an accepted share in the store
        (a declined, open, revoked or invalid share, or none at all).
    """
    conn = sqlite3.connect(str(store))
    try:
        rows = conn.execute(
            "SELECT id, owner, collection, sharee, access, mount FROM shares"
            " WHERE status = 'accepted' AND mount IS NOT NULL"
        ).fetchall()
    finally:
        conn.close()
    problems: list[str] = []
    at: dict[str, list[dict[str, Any]]] = {}
    for found in maps:
        at.setdefault(found["mount"], []).append(found)
    wanted = set()
    for share_id, owner, collection, sharee, access, mount in rows:
        path = _radicale_path(mount)
        wanted.add(path)
        meant = {
            "owner": owner,
            "mount": path,
            "collection": _radicale_path(collection),
            "sharee": sharee,
            "permissions": MAP_PERMISSIONS.get(access),
            "enabled": True,
            "hidden": False,
        }
        there = at.get(path, [])
        if there != [meant]:
            problems.append(f"N1 {access} share {share_id} at {path}: Radicale has {there}")
    for path, there in sorted(at.items()):
        if path not in wanted:
            problems.append(f"N2 map share without an accepted share: {there}")
    return problems


# -- feeds: a changing origin, and the store's feed tables read directly ----------------

FEED_SETTINGS = (
    '[feeds]\nallow_networks = ["127.0.0.0/8"]\nrefresh_floor = 1\nrefresh_default = 1\n'
    "refresh_ceiling = 2\njitter = 0\nretry_base = 1\n"
)
FEED_NAMES = ("small", "big")
FEED_STATES = frozenset({"new", "ok", "error"})


class FeedOrigin:
    """The two feeds' current content, changed between cycles, and every UID set served."""

    def __init__(self, origin: Origin, rng: random.Random) -> None:
        self.origin = origin
        self.rng = rng
        self.current: dict[str, dict[str, int]] = {}  # path -> uid -> edit number
        self.served: dict[str, set[frozenset[str]]] = {}  # url -> UID sets served
        self.hits: dict[str, int] = {}
        self.versions = 0
        for name in FEED_NAMES:
            path = f"/{name}.ics"
            count = 30 if name == "small" else 2500
            self.current[path] = {f"{name}-{n}@soak": 0 for n in range(count)}
            self.served[origin.url(path)] = {frozenset()}  # before the first refresh
            self.hits[path] = 0
            self._install(path)

    def _install(self, path: str) -> None:
        self.versions += 1
        events = [
            feed_event(
                uid, f"{uid} edit {edit}", stamp=f"2026{1 + self.versions % 12:02d}01T000000Z"
            )
            for uid, edit in self.current[path].items()
        ]
        self.origin.serve(path, calendar(*events, name=path[1:-4]), etag=f'"v{self.versions}"')

    def change(self) -> None:
        """Add, remove and modify events; the big feed sometimes grows or shrinks a lot."""
        rng = self.rng
        for path, items in self.current.items():
            if rng.random() < 0.3:
                continue  # unchanged: 304 or the same bytes
            uids = list(items)
            if path == "/big.ics" and rng.random() < 0.25:
                size = rng.choice([40, rng.randint(2000, 3000)])
                fresh = {f"big-{n}@soak": items.get(f"big-{n}@soak", 0) for n in range(size)}
                items.clear()
                items.update(fresh)
            else:
                for uid in rng.sample(uids, min(len(uids), rng.randint(0, 5))):
                    del items[uid]
                for uid in rng.sample(list(items), min(len(items), rng.randint(0, 8))):
                    items[uid] += 1
                for _ in range(rng.randint(0, 6)):
                    items[f"{path[1:-4]}-x{rng.randrange(10**6)}@soak"] = 0
            self._install(path)

    def note_served(self) -> dict[str, int]:
        """After a cycle (davproxy down): the content of every path fetched meanwhile was
        served.  Returns the number of fetches per path."""
        fetched = {}
        for path, items in self.current.items():
            hits = self.origin.hits(path)
            fetched[path] = hits - self.hits[path]
            if fetched[path]:
                self.served[self.origin.url(path)].add(frozenset(items))
            self.hits[path] = hits
        return fetched


def inspect_feeds(
    path: Path, served: dict[str, set[frozenset[str]]], configured: tuple[str, ...] = FEED_NAMES
) -> list[str]:
    """The feed tables' invariants, each kept by every refresh transaction:

    F1  item revisions are unique within a source and none exceeds the source's
        revision; the source's revision is >= its min_revision (>= 0).
    F2  a live item has non-empty text ending in ``END:VCALENDAR\\r\\n``, a body_start
        within it, a non-empty UID, and etag == sha256(text)[:32] (``item_etag``).
    F3  a tombstone (deleted = 1) has empty text.
    F4  no two live items of a source share a UID.
    F5  a source's live UIDs are exactly the UID set of one version the origin served
        (or empty, before its first refresh): no refresh is half applied.
    F6  every subscription's source exists; every configured feed has its subscription.
    F7  a source's status is new, ok or error; an ok source has been fetched.
    """
    problems: list[str] = []
    conn = sqlite3.connect(str(path))
    try:
        sources = {
            r[0]: r
            for r in conn.execute(
                "SELECT id, url, revision, min_revision, status, last_success FROM feed_sources"
            )
        }
        items = conn.execute(
            "SELECT source_id, href, uid, text, body_start, etag, revision, deleted FROM feed_items"
        ).fetchall()
        subscriptions = conn.execute(
            "SELECT id, owner, name, source_id FROM feed_subscriptions"
        ).fetchall()
    finally:
        conn.close()
    revisions: dict[int, Counter[int]] = {}
    live: dict[int, Counter[str]] = {}
    for source_id, href, uid, text, body_start, etag, revision, deleted in items:
        source = sources.get(source_id)
        if source is None:
            problems.append(f"F6 item {href} of missing source {source_id}")
            continue
        revisions.setdefault(source_id, Counter())[revision] += 1
        if revision > source[2]:
            problems.append(f"F1 item {href} revision {revision} > source's {source[2]}")
        if deleted:
            if text != "":
                problems.append(f"F3 tombstone {href} keeps {len(text)} characters")
            continue
        live.setdefault(source_id, Counter())[uid] += 1
        if not text or not text.endswith(CALENDAR_END) or not uid:
            problems.append(f"F2 live item {href} ({uid!r}): text {text[-40:]!r}")
        elif not 0 <= body_start < len(text) - len(CALENDAR_END):
            problems.append(f"F2 live item {href}: body_start {body_start} of {len(text)}")
        if etag != item_etag(text):
            problems.append(f"F2 live item {href}: etag {etag} is not the text's hash")
    for source_id, source in sources.items():
        _, url, revision, min_revision, status, last_success = source
        repeated = [r for r, n in revisions.get(source_id, Counter()).items() if n > 1]
        if repeated:
            problems.append(f"F1 {url}: revisions {sorted(repeated)[:5]} repeat")
        if not 0 <= min_revision <= revision:
            problems.append(f"F1 {url}: revision {revision} < min_revision {min_revision}")
        uids = live.get(source_id, Counter())
        doubled = [u for u, n in uids.items() if n > 1]
        if doubled:
            problems.append(f"F4 {url}: live UIDs {doubled[:5]} appear more than once")
        if url in served and frozenset(uids) not in served[url]:
            near = min(served[url], key=lambda v: len(v ^ set(uids)))
            problems.append(
                f"F5 {url}: {len(uids)} live UIDs, no served version ({len(served[url])}"
                f" served; nearest differs by {len(near ^ set(uids))})"
            )
        if status not in FEED_STATES or (status == "ok" and last_success is None):
            problems.append(f"F7 {url}: status {status!r}, last success {last_success}")
    for sub_id, owner, name, source_id in subscriptions:
        if source_id not in sources:
            problems.append(f"F6 subscription {sub_id} ({owner!r} {name}) of missing source")
    subscribed = {name for _, owner, name, _ in subscriptions if owner == ""}
    if subscribed != set(configured):
        problems.append(f"F6 operator feeds subscribed: {sorted(subscribed)}")
    return problems


def refreshes_finished(log: str, urls: list[str]) -> dict[str, Counter[str]]:
    """Refresh outcomes davproxy logged, per feed URL."""
    found: dict[str, Counter[str]] = {url: Counter() for url in urls}
    for url in urls:
        for match in re.finditer(re.escape(f"feed {url}: ") + r"([a-z-]+)", log):
            found[url][match.group(1)] += 1
    return found


async def verify_feeds_api(
    http: aiohttp.ClientSession, base: str, store: Path, feeds: FeedOrigin
) -> list[str]:
    problems: list[str] = []
    conn = sqlite3.connect(str(store))
    try:
        for name in FEED_NAMES:
            url = feeds.origin.url(f"/{name}.ics")
            stored = {
                r[0]
                for r in conn.execute(
                    "SELECT uid FROM feed_items JOIN feed_sources ON source_id = feed_sources.id"
                    " WHERE url = ? AND deleted = 0",
                    (url,),
                )
            }
            async with http.get(f"{base}/.davproxy/feeds/{name}.ics", headers=auth(OWNER)) as r:
                text = await r.text()
                status = r.status
            shown = set(re.findall(r"^UID:(.+?)\r?$", text, re.MULTILINE))
            if status != 200 or shown != stored:
                problems.append(f"feed {name}: {status}, {len(shown)} shown, {len(stored)} stored")
    finally:
        conn.close()
    return problems


# -- the loop ----------------------------------------------------------------------------


async def prepare(site: Site) -> None:
    """alice's calendars and address book; bob's and carol's principals exist upstream."""
    davproxy = await site.start_async()
    try:
        async with session() as http:
            for collection, kind in COLLECTIONS.items():
                method, body = (
                    ("MKCALENDAR", None)
                    if kind == "calendar"
                    else ("MKCOL", MKCOL_BOOK.format(name=collection.split("/")[1]))
                )
                headers = {**auth(OWNER), **(XML if body else {})}
                async with http.request(
                    method, f"{site.url}/{collection}", data=body, headers=headers
                ) as r:
                    assert r.status == 201, await r.text()
                if kind == "calendar":
                    async with http.put(
                        f"{site.url}/{collection}e1.ics",
                        data=event("e1"),
                        headers={**auth(OWNER), "Content-Type": "text/calendar"},
                    ) as r:
                        assert r.status == 201
            for user in SHAREES:
                async with http.request(
                    "PROPFIND", f"{site.url}/{user}/", headers={**auth(user), "Depth": "0"}
                ) as r:
                    assert r.status == 207
    finally:
        davproxy.stop()


def _stop(davproxy: ServerProcess | None) -> None:
    if davproxy is not None and davproxy.process.poll() is None:
        davproxy.process.kill()
        davproxy.process.wait(10)


BACKENDS = ("proxy-enforced", "radicale-native")


@dataclass
class KillSite:
    site: Site
    origin: Origin
    backend: str

    @property
    def native(self) -> bool:
        return self.backend == "radicale-native"


@pytest.fixture(params=BACKENDS)
def feed_site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KillSite]:
    """The kill loop's site: ``site`` plus two operator feeds from a loopback origin, with
    either access backend (radicale-native: Radicale's own map shares, ``[sharing]``)."""
    backend = request.param
    origin = Origin()
    tables = "".join(
        f'[[feeds]]\nname = "{name}"\nurl = "{origin.url(f"/{name}.ics")}"\n\n'
        for name in FEED_NAMES
    )
    access = f'[access]\nbackend = "{backend}"\n\n'
    with (
        origin.running(),
        start_radicale(
            tmp_path / "radicale",
            host=HOST,
            auth="x-remote-user",
            sharing=backend == "radicale-native",
        ) as radicale,
    ):
        config, port = write_config(
            tmp_path / "davproxy",
            upstream_url=radicale.url,
            kind="radicale",
            mode="proxy-auth",
            htpasswd=write_htpasswd(tmp_path / "users.htpasswd"),
            server_extra=FEED_SETTINGS,
            mapping_extra=access + tables,
        )
        yield KillSite(Site(tmp_path, radicale, config, port), origin, backend)


async def test_sigkill_during_share_operations(feed_site: KillSite) -> None:
    site, origin, native = feed_site.site, feed_site.origin, feed_site.native
    seed = int(os.environ.get("SOAK_SEED", str(random.randrange(2**32))))
    rng = random.Random(seed)
    feeds = FeedOrigin(origin, random.Random(seed + 1))
    await prepare(site)
    feeds.note_served()
    pre, problems = inspect(site.store)
    problems += inspect_feeds(site.store, feeds.served)
    assert problems == [], problems
    feed_urls = [origin.url(f"/{name}.ics") for name in FEED_NAMES]
    refreshes: Counter[str] = Counter()
    refresh_cut_cycles = late_kills = 0
    ever_mounted: dict[str, str] = {}
    outcomes: Counter[tuple[str, str]] = Counter()
    cut_cycles = 0
    drifted: Counter[str] = Counter()  # native: what kills left for the restart to mend
    drifted_cycles = 0
    started = time.monotonic()
    cycles = 0
    davproxy: ServerProcess | None = None
    try:
        while cycles < CYCLES and time.monotonic() - started < WALL_SECONDS:
            late = rng.random() < 1 / 3
            kill_at = rng.uniform(*(KILL_LATE if late else KILL_AFTER))
            late_kills += late
            ops = plan(rng, pre, kill_at, native)
            feeds.change()
            log_path = site.config.parent / "davproxy.log"
            log_from = log_path.stat().st_size if log_path.exists() else 0
            davproxy = await site.start_async()
            if native:  # started: its start-up reconciliation has run
                problems = inspect_native(site.store, await radicale_maps(site.radicale.url))
                if problems:
                    pytest.fail(
                        f"seed {seed}, restart before cycle {cycles + 1}: Radicale's rights"
                        " are not the store's:\n  " + "\n  ".join(problems)
                        + f"\nstore: {pre.shares}\nlog:\n{davproxy.log_tail()}"
                    )  # fmt: skip
            async with session(timeout=20, trace=connection_tracer()) as http:
                tasks = [asyncio.create_task(run(http, site.url, op)) for op in ops]
                await asyncio.sleep(kill_at)
                davproxy.process.kill()  # SIGKILL: no handler, no cleanup
                await asyncio.to_thread(davproxy.process.wait, 10)
                await asyncio.gather(*tasks)
            post, problems = inspect(site.store)
            problems += verify_cycle(ops, pre, post)
            if native:  # before the restart: differences are the reconciliation's work
                drift = inspect_native(site.store, await radicale_maps(site.radicale.url))
                drifted_cycles += bool(drift)
                drifted.update(problem[:2] for problem in drift)
            fetched = feeds.note_served()
            problems += inspect_feeds(site.store, feeds.served)
            with davproxy.log_path.open("rb") as log_file:
                log_file.seek(log_from)
                logged = log_file.read().decode("utf-8", "replace")
            finished = refreshes_finished(logged, feed_urls)
            for outcomes_of in finished.values():
                refreshes.update(outcomes_of)
            refresh_cut_cycles += any(
                fetched[f"/{name}.ics"] > sum(finished[origin.url(f"/{name}.ics")].values())
                for name in FEED_NAMES
            )
            outcomes.update((op.kind, op.outcome) for op in ops)
            cut_cycles += any(op.outcome == "cut" for op in ops)
            if problems:
                pytest.fail(
                    f"seed {seed}, cycle {cycles + 1}, kill at {kill_at * 1000:.0f} ms:\n  "
                    + "\n  ".join(problems)
                    + "\noperations:\n  "
                    + "\n  ".join(op.describe() for op in ops)
                    + f"\nstore before: {pre.shares}\nstore after: {post.shares}"
                )
            for row in post.shares.values():
                if row.mount is not None:
                    ever_mounted[row.mount] = row.sharee
            pre = post
            cycles += 1
        elapsed = time.monotonic() - started

        davproxy = await site.start_async()
        problems = (
            inspect_native(site.store, await radicale_maps(site.radicale.url)) if native else []
        )
        async with session() as http:
            problems += await verify_api(http, site.url, pre, ever_mounted)
            problems += await verify_feeds_api(http, site.url, site.store, feeds)
        davproxy.stop()
        assert problems == [], f"seed {seed}: the API disagrees with the store:\n" + "\n".join(
            problems
        )
    finally:
        _stop(davproxy)

    kinds = sorted({k for k, _ in outcomes})
    columns = ("acked", "refused", "cut", "unsent")
    lines = [
        f"kill loop ({feed_site.backend}): seed {seed}, {cycles} cycles survived in"
        f" {elapsed:.0f} s"
        f" ({elapsed / max(cycles, 1):.2f} s/cycle), {cut_cycles} cycles killed a request"
        f" in flight, {refresh_cut_cycles} killed a feed refresh in flight"
        f" ({late_kills} late kills), 0 violations",
        f"  feed refreshes finished: {dict(sorted(refreshes.items()))};"
        f" {feeds.versions} feed versions published,"
        f" {sum(len(v) - 1 for v in feeds.served.values())} served",
        f"  {'operation':<12}" + "".join(f"{c:>9}" for c in columns),
    ]
    if native:
        lines.insert(
            2,
            f"  Radicale's map shares: equal to the store after all {cycles + 1} restarts;"
            f" {drifted_cycles} kills had left them different"
            f" ({dict(sorted(drifted.items()))} maps), mended by the start-up reconciliation",
        )
    for kind in kinds:
        lines.append(f"  {kind:<12}" + "".join(f"{outcomes[(kind, c)]:>9}" for c in columns))
    lines.append(
        f"  {'total':<12}" + "".join(f"{sum(outcomes[(k, c)] for k in kinds):>9}" for c in columns)
    )
    states = Counter(r.status for r in pre.shares.values())
    lines.append(
        f"  final store: {dict(sorted(states.items()))} shares,"
        f" {sum(not n.deleted for n in pre.notes.values())} live notifications,"
        f" {len(ever_mounted)} copy paths ever mounted"
    )
    print("\n" + "\n".join(lines))
    assert cycles >= 200 or CYCLES < 200, (
        f"only {cycles} cycles in {WALL_SECONDS:.0f} s (seed {seed})"
    )


@pytest.mark.regression
async def test_sigkill_during_owner_delete(site: Site) -> None:
    """alice deletes a calendar shared with bob; davproxy is SIGKILLed the moment
    Radicale has removed it from disk.  After a restart alice creates a new calendar
    of the same name: bob must not see it through his old copy."""
    root = site.radicale.folder / "collections" / "collection-root"
    exposed = []
    for attempt in range(3):
        name = f"work{attempt}"
        davproxy = await site.start_async()
        try:
            async with session() as http:

                async def call(user: str, method: str, path: str, body: str = "", **h: str) -> int:
                    async with http.request(
                        method, site.url + path, data=body or None, headers={**auth(user), **h}
                    ) as answer:
                        await answer.read()
                        return answer.status

                assert await call("bob", "PROPFIND", "/bob/", Depth="0") == 207
                assert await call(OWNER, "MKCALENDAR", f"/alice/{name}/") == 201
                body = share_body((mailto("bob"), "read"))
                assert await call(OWNER, "POST", f"/alice/{name}/", body, **SHARING_TYPE) == 204
                invite = next(
                    n
                    for n in inspect(site.store)[0].shares.values()
                    if n.collection.endswith(f"{name}/")
                ).uid
                reply = notes_url("bob", f"{invite}.xml")
                assert await call("bob", "POST", reply, reply_body(True), **SHARING_TYPE) == 201
                folder = root / OWNER / name
                assert folder.is_dir()
                deleting = asyncio.create_task(call(OWNER, "DELETE", f"/alice/{name}/"))
                waited = time.monotonic()
                while folder.exists() and time.monotonic() - waited < 10:
                    await asyncio.sleep(0)
                davproxy.process.kill()
                await asyncio.to_thread(davproxy.process.wait, 10)
                with contextlib.suppress(aiohttp.ClientError):
                    await deleting
        finally:
            _stop(davproxy)
        davproxy = await site.start_async()
        try:
            async with session() as http:
                headers = auth(OWNER)
                async with http.request(
                    "MKCALENDAR", f"{site.url}/alice/{name}/", headers=headers
                ) as r:
                    assert r.status == 201
                async with http.put(
                    f"{site.url}/alice/{name}/private.ics",
                    data=event("private", "Alice only"),
                    headers={**headers, "Content-Type": "text/calendar"},
                ) as r:
                    assert r.status == 201
                async with http.get(
                    f"{site.url}/bob/{name}-alice/private.ics", headers=auth("bob")
                ) as r:
                    if r.status == 200 and "Alice only" in await r.text():
                        exposed.append(name)
        finally:
            _stop(davproxy)
    assert exposed == [], f"bob reads alice's new calendars {exposed} through stale copies"


@pytest.mark.regression
async def test_reply_to_withdrawn_invitation_cannot_accept_another_share(site: Site) -> None:
    """Found by the kill loop (I4: an accepted share whose invitation is still open).
    carol answers an invitation; while davproxy looks for a free name for her copy,
    alice withdraws it and invites bob to another calendar; the new share row gets the
    withdrawn one's id.  carol's late reply must be refused and bob's invitation stay
    open."""
    davproxy = await site.start_async()
    try:
        async with session() as http:

            async def call(user: str, method: str, path: str, body: str = "", **h: str) -> int:
                async with http.request(
                    method, site.url + path, data=body or None, headers={**auth(user), **h}
                ) as answer:
                    await answer.read()
                    return answer.status

            for user in SHAREES:
                assert await call(user, "PROPFIND", f"/{user}/", Depth="0") == 207
            for calendar in ("cal0", "cal1"):
                assert await call(OWNER, "MKCALENDAR", f"/alice/{calendar}/") == 201
            # names carol's copy could take already exist: choosing one takes ~40
            # upstream PROPFINDs, a window for alice's two changes
            for n in range(1, 41):
                taken = "cal1-alice" + (f"-{n}" if n > 1 else "")
                assert await call("carol", "MKCALENDAR", f"/carol/{taken}/") == 201
            body = share_body((mailto("carol"), "read"))
            assert await call(OWNER, "POST", "/alice/cal1/", body, **SHARING_TYPE) == 204
            (withdrawn,) = inspect(site.store)[0].shares.values()
            reply = asyncio.create_task(
                call(
                    "carol", "POST", notes_url("carol", f"{withdrawn.uid}.xml"),
                    reply_body(True), **SHARING_TYPE,
                )
            )  # fmt: skip
            await asyncio.sleep(0.05)
            body = share_body((mailto("carol"), "no-access"))
            assert await call(OWNER, "POST", "/alice/cal1/", body, **SHARING_TYPE) == 204
            body = share_body((mailto("bob"), "read-write"))
            assert await call(OWNER, "POST", "/alice/cal0/", body, **SHARING_TYPE) == 204
            answered = await reply
    finally:
        davproxy.stop()
    snap, problems = inspect(site.store)
    (bobs,) = snap.shares.values()
    # What the defect broke: bob's new share (which took the withdrawn row's id) must stay
    # an open invitation, and the store must hold no accepted-but-open share.  carol's
    # answer is 403 when her reply was still choosing a name at the withdrawal (the race
    # this pins, the usual case); on a machine loaded enough that her reply finished
    # first it is 201 (a legitimate acceptance, then revoked), and the race did not run.
    assert answered in (201, 403)
    assert (bobs.status, bobs.mount, problems) == ("noresponse", None, [])
