"""Who a user can share with, as the page suggests and understands them.

The page's share form takes what a person types (a user id, an e-mail address, a
display name) and turns it into the sharee href the share model records, the same
``mailto:`` or principal href an Apple client or the IETF protocol would send, so
every flavour shows one state.  Suggestions come from the upstream's directory
(``[[users]]`` in the mapping file, and the htpasswd file in proxy-auth mode).

Groups: not there yet (shared/specs/groups.md).  The seam is ``Candidate.kind``:
when group principals exist, ``candidates`` yields them with ``kind="group"`` and
``resolve`` returns their principal href; the share model then decides what sharing
with a group means.  Nothing in the page assumes a sharee is one person beyond the
label it shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from davproxy.upstream.client import Upstream
from davproxy.upstream.directory import Directory

MAX_SUGGESTIONS = 8


@dataclass(frozen=True, slots=True)
class Candidate:
    kind: Literal["user", "group"]
    id: str
    name: str
    email: str  # "" when the directory has none

    @property
    def label(self) -> str:
        return f"{self.name} <{self.email}>" if self.email else self.name


def candidates(directory: Directory) -> Iterator[Candidate]:
    """Everyone one can share with (groups would be yielded here too)."""
    for user in directory.users():
        yield Candidate("user", user, directory.display_name(user), directory.email(user) or "")


def suggest(directory: Directory, query: str, me: str) -> list[Candidate]:
    """At most a handful of people matching what was typed (not the user themself)."""
    wanted = query.strip().lower()
    if not wanted:
        return []
    found = []
    for person in candidates(directory):
        if person.id == me:
            continue
        if any(wanted in text.lower() for text in (person.id, person.name, person.email)):
            found.append(person)
            if len(found) >= MAX_SUGGESTIONS:
                break
    return found


def resolve(directory: Directory, upstream: Upstream, typed: str) -> Candidate | None:
    """The person a typed sharee names: a user id, an e-mail address (bare or
    ``mailto:``), a principal URL, a suggestion's label ("Bob <bob@example.org>") or a
    display name that only one user has."""
    text = typed.strip()
    if not text:
        return None
    if text.endswith(">") and "<" in text:
        text = text.rsplit("<", 1)[1][:-1].strip()
    user = directory.resolve(text)
    if user is None and "@" in text and ":" not in text:
        user = directory.resolve("mailto:" + text)
    if user is None:
        named = [p.id for p in candidates(directory) if p.name.lower() == text.lower()]
        user = named[0] if len(named) == 1 else None
    if user is None:
        return None
    return Candidate("user", user, directory.display_name(user), directory.email(user) or "")


def sharee_href(upstream: Upstream, person: Candidate) -> str:
    """The href the share records: the e-mail address as Apple clients send it, else the
    principal (both resolve back to the same user)."""
    if person.email:
        return "mailto:" + person.email
    return upstream.user_paths(person.id).principal
