"""The records the store gives back: plain frozen values, no cursor behind them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Share:
    id: int
    upstream: str
    owner: str
    collection: str  # the owner's collection, below the upstream root ("alice/work/")
    kind: str  # calendar | addressbook | collection
    sharee: str  # user id (or the href as given, for an invalid sharee)
    sharee_href: str  # as the sharer wrote it
    access: str  # read | read-write
    status: str  # noresponse | accepted | declined | invalid
    invite_uid: str
    comment: str
    sharee_name: str
    summary: str
    mount: str | None  # the sharee's copy, below the upstream root, once accepted
    created: float
    updated: float


@dataclass(frozen=True, slots=True)
class NewShare:
    upstream: str
    owner: str
    collection: str
    kind: str
    sharee: str
    sharee_href: str
    access: str
    status: str
    comment: str = ""
    sharee_name: str = ""
    summary: str = ""


@dataclass(frozen=True, slots=True)
class Notification:
    id: int
    upstream: str
    user: str
    name: str
    type: str
    body: str  # canonical JSON, rendered per flavour at GET time
    etag: str
    revision: int
    created: float
    deleted: bool = False
