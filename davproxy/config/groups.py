"""Groups of a mapping file: ``[[groups]]`` tables and an Apache-style group file.

A group has an id, a display name, e-mail addresses and members, each a user id or the
id of another group.  Nested groups are flattened when shares are applied
(``expand``); a cycle is refused at load, as is a group id that is also a user's.

Where the upstream already keeps groups (Radicale's ``[group] htgroup_filename``, one
``group: user1 user2`` line per group), ``group_file`` names that same file so the two
agree without typing the groups twice; a ``[[groups]]`` table with the same id adds a
display name, addresses and further members to it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from davproxy.config.tables import REQUIRED, ConfigError, Table, resolve

# A group id is a path segment of its principal URL: no '/', no leading dot, no ':'
# (Radicale's group prefix) and no '@' (mailto).
_GROUP_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}")


@dataclass(frozen=True, slots=True)
class DirectoryGroup:
    id: str
    display_name: str = ""
    emails: tuple[str, ...] = ()
    members: tuple[str, ...] = ()  # direct members: user ids and group ids


def load_groups(
    mapping: Table, mapping_path: Path, user_ids: set[str], user_emails: set[str]
) -> tuple[DirectoryGroup, ...]:
    """Every group of one mapping file, checked: ids unique and apart from users',
    addresses apart from users' and each other's, no cycle."""
    found: dict[str, DirectoryGroup] = {}
    tabled: set[str] = set()
    group_file = mapping.text("group_file", None)
    if group_file:
        for group in read_group_file(resolve(mapping_path, group_file)):
            found[group.id] = group
    for i, table in enumerate(mapping.tables("groups")):
        group = DirectoryGroup(
            id=table.text("id", REQUIRED),
            display_name=table.text("display_name", ""),
            emails=tuple(e.lower() for e in table.strings("emails")),
            members=table.strings("members"),
        )
        table.finish()
        where = f"{mapping_path}: [groups[{i}]]"
        if not _GROUP_ID.fullmatch(group.id):
            raise ConfigError(f"{where} id: {group.id!r} is not a usable group id")
        if group.id in user_ids:
            raise ConfigError(f"{where} id: {group.id!r} is also a user's id")
        if group.id in tabled:
            raise ConfigError(f"{where} id: {group.id!r} is listed twice")
        tabled.add(group.id)
        before = found.get(group.id)
        if before is not None:  # the group file's group, completed here
            group = DirectoryGroup(
                group.id,
                group.display_name or before.display_name,
                group.emails,
                tuple(dict.fromkeys(before.members + group.members)),
            )
        found[group.id] = group
    owners: dict[str, str] = {}
    for group in found.values():
        for email in group.emails:
            if email in user_emails or owners.setdefault(email, group.id) != group.id:
                raise ConfigError(
                    f"{mapping_path}: [groups] {group.id!r}: the address {email!r} "
                    "already belongs to a user or another group"
                )
    groups = tuple(found.values())
    cycle = find_cycle({g.id: g.members for g in groups})
    if cycle:
        raise ConfigError(
            f"{mapping_path}: [groups] members form a cycle: {' -> '.join(cycle)}; "
            "a group cannot contain itself"
        )
    return groups


def read_group_file(path: Path) -> list[DirectoryGroup]:
    """An Apache htgroup file (``name: user1 user2``, ``#`` comments), as Radicale's
    ``htgroup`` group backend reads it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the group file: {exc.strerror}") from None
    groups = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, members = line.partition(":")
        name = name.strip()
        if not colon or not _GROUP_ID.fullmatch(name):
            raise ConfigError(f"{path}, line {number}: expected 'group: user1 user2 ...'")
        groups.append(DirectoryGroup(name, members=tuple(members.split())))
    return groups


def find_cycle(members: Mapping[str, tuple[str, ...]]) -> list[str]:
    """A path that comes back to where it started ([] when the graph has none)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str]:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done or node not in members:
            return []
        for member in members[node]:
            found = visit(member, path + [node])
            if found:
                return found
        done.add(node)
        return []

    for start in members:
        cycle = visit(start, [])
        if cycle:
            return cycle
    return []


def expand(members: Mapping[str, tuple[str, ...]], group: str) -> frozenset[str]:
    """The users a group holds, through nested groups (the graph has no cycle)."""
    users: set[str] = set()
    seen: set[str] = set()
    stack = [group]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        for member in members.get(current, ()):
            if member in members:
                stack.append(member)
            else:
                users.add(member)
    return frozenset(users)
