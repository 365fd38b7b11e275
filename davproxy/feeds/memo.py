"""What one split of a feed remembers for the next: one packed record per component.

A refresh of a 10,000-event feed with one changed event should lex and fingerprint one
event (``feeds/split.py``).  For that the split keeps, for every top-level component,
what grouping needs of it (a pure function of its bytes, keyed by their digest) and,
for a resource made of that one component, the resource's fingerprint.  Each is one
``bytes`` record instead of a tuple of objects: about 190 bytes a component with its
key, where a tuple, its strings and a second dict took about 400, and the memo is held
between refreshes for every source (and beside the feed's body during an import).

A record: flags, kind, the codes of its referenced TZIDs and of its resource's zone
set (``Tables``), the length of its UID, the fingerprint (32 bytes, zeros without
``FINGERPRINTED``), the UID, and the RECURRENCE-ID line after its name for an override.
Everything is derived from content, so a memo is never wrong, only missing entries.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from davproxy.feeds.blocks import KINDS  # what the octet-level cut delimits
from davproxy.feeds.components import Facts

FINGERPRINTED, SYNTHETIC, OVERRIDE = 1, 2, 4
_KIND_CODE = {kind: code for code, kind in enumerate(KINDS)}
_HEAD = struct.Struct("<BBHHH")  # flags, kind, refs code, zone-set code, UID length
_FP = _HEAD.size
_UID = _FP + 32
_NO_FP = bytes(32)
_MAX = 0xFFFF
_ENCODING = ("utf-8", "surrogatepass")


class Tables:
    """Codes for the few distinct TZID lists and zone sets of a feed, shared by the
    memos of one source (so a record of an earlier split is read with the same codes)."""

    __slots__ = ("refs", "_refs_at", "starts", "_starts_at")

    def __init__(self) -> None:
        self.refs: list[tuple[str, ...]] = []
        self._refs_at: dict[tuple[str, ...], int] = {}
        self.starts: list[bytes] = []
        self._starts_at: dict[bytes, int] = {}

    @property
    def full(self) -> bool:
        return len(self.refs) >= _MAX or len(self.starts) >= _MAX

    def refs_code(self, refs: tuple[str, ...]) -> int | None:
        code = self._refs_at.get(refs)
        if code is None and len(self.refs) < _MAX:
            code = self._refs_at[refs] = len(self.refs)
            self.refs.append(refs)
        return code

    def start_code(self, start: bytes) -> int | None:
        code = self._starts_at.get(start)
        if code is None and len(self.starts) < _MAX:
            code = self._starts_at[start] = len(self.starts)
            self.starts.append(start)
        return code


@dataclass(slots=True)
class SplitMemo:
    """Results of one split of a feed, by content.

    ``records``: a component's record by the digest of its bytes; ``groups``: the
    fingerprint (and UID) of a resource of several components by the digest of
    everything it is made of; ``loose``: fingerprints that have no content key (a feed
    read line by line), for ``fingerprints`` only; ``resources``: how many resources
    the split found (-1: unknown)."""

    tables: Tables = field(default_factory=Tables)
    records: dict[bytes, bytes] = field(default_factory=dict)
    groups: dict[bytes, bytes] = field(default_factory=dict)
    loose: dict[str, bytes] = field(default_factory=dict)
    resources: int = -1

    def pack(self, facts: Facts) -> bytes | None:
        """A record of ``facts`` without a fingerprint (None: it does not fit one)."""
        refs = self.tables.refs_code(facts.refs)
        uid = facts.uid.encode(*_ENCODING)
        if refs is None or len(uid) > _MAX:
            return None
        flags = (SYNTHETIC if facts.synthetic else 0) | (OVERRIDE if facts.rid is not None else 0)
        rid = facts.rid.encode(*_ENCODING) if facts.rid is not None else b""
        head = _HEAD.pack(flags, _KIND_CODE[facts.kind], refs, 0, len(uid))
        return b"".join((head, _NO_FP, uid, rid))

    def facts(self, record: bytes) -> Facts:
        flags, kind, refs, _, length = _HEAD.unpack_from(record)
        end = _UID + length
        return Facts(
            KINDS[kind],
            record[_UID:end].decode(*_ENCODING),
            bool(flags & SYNTHETIC),
            record[end:].decode(*_ENCODING) if flags & OVERRIDE else None,
            self.tables.refs[refs],
        )


def fingerprint_of(record: bytes) -> bytes | None:
    """The record's resource fingerprint (raw), if it has one."""
    return record[_FP:_UID] if record[0] & FINGERPRINTED else None


def zone_set_of(record: bytes) -> int:
    return int.from_bytes(record[4:6], "little")


def refs_of(record: bytes) -> int:
    return int.from_bytes(record[2:4], "little")


def with_fingerprint(record: bytes, zone_set: int, raw: bytes) -> bytes:
    head = bytes((record[0] | FINGERPRINTED, record[1])) + record[2:4]
    return b"".join((head, zone_set.to_bytes(2, "little"), record[6:_FP], raw, record[_UID:]))


def without_fingerprint(record: bytes) -> bytes:
    return bytes((record[0] & ~FINGERPRINTED,)) + record[1:]


def recorded(memo: SplitMemo) -> dict[str, str] | None:
    """Every resource's fingerprint (hex) by UID, once the split fingerprinted them all
    (None: some are not known)."""
    found: dict[str, str] = {}
    for record in memo.records.values():
        if record[0] & FINGERPRINTED:
            length = int.from_bytes(record[6:_FP], "little")
            found[record[_UID : _UID + length].decode(*_ENCODING)] = record[_FP:_UID].hex()
    for value in memo.groups.values():
        found[value[32:].decode(*_ENCODING)] = value[:32].hex()
    for uid, raw in memo.loose.items():
        found[uid] = raw.hex()
    return found if len(found) == memo.resources else None
