"""Radicale's own sharing API (map shares), as the radicale-native access backend uses it.

The default ("proxy-enforced") backend forwards a sharee's request *as the owner* and
checks read/write itself.  This backend instead asks Radicale to map a path in the
sharee's namespace (the *mount*, e.g. ``/bob/alice-work/``) onto the owner's collection
(e.g. ``/alice/work/``).  Radicale then resolves the mount for that user on every
request and intersects the owner's rights with the share's permissions, so the sharee
is checked by the upstream itself, under their own identity.  Radicale keeps its share
table in memory and looks it up on each request, so a grant, a change of access or a
revocation takes effect on the sharee's next request: nothing needs restarting.

API used (Radicale >= 3.7; tested with 3.9.0), all ``POST`` with a JSON body,
``Content-Type: application/json`` and ``Accept: application/json``::

    /.sharing/v1/map/list    {}                                            (as owner)
    /.sharing/v1/map/create  {"PathOrToken": mount, "PathMapped": collection,
                              "User": sharee, "Permissions": "r"|"rw",
                              "Enabled": true, "Hidden": false}            (as owner)
    /.sharing/v1/map/update  {"PathOrToken": mount, "Permissions": "r"|"rw",
                              "Enabled": true, "Hidden": false}            (as owner)
    /.sharing/v1/map/update  {"PathOrToken": mount,
                              "Enabled": true, "Hidden": false}            (as sharee)
    /.sharing/v1/map/delete  {"PathOrToken": mount}                        (as owner)

A share works only once *both* sides have enabled it (``EnabledByOwner`` and
``EnabledByUser``) and appears in the sharee's ``PROPFIND Depth: 1`` listing only once
both have un-hidden it; a new map starts enabled-by-user = false, hidden-by-user = true,
so :meth:`RadicaleSharingApi.grant` accepts it on the sharee's behalf at once.  Answers
are ``{"ApiVersion": 1, "Status": "success" | "not-found", ...}`` with content type
``text/json``; ``list`` adds ``"Lines"`` and ``"Content"`` (rows with ShareType,
PathOrToken, PathMapped, Owner, User, Permissions, EnabledByOwner, EnabledByUser,
HiddenByOwner, HiddenByUser, ...).  Errors are bare status codes: 400 (bad field),
403 (not owner / not permitted), 404 (no such share or collection), 409 (the mount is
already a share or a real collection, or this collection is already mapped for this
sharee under another mount).

Radicale configuration this needs::

    [auth]
    type = http_x_remote_user   ; davproxy acts as owner and sharee via X-Remote-User
    delay = 0                   ; else every 401/403 sleeps 0.5-1.5 s

    [rights]
    type = owner_only           ; or any backend giving the owner "r" on the collection
                                ; and the sharee "r" on the mount path /<sharee>/<name>/

    [sharing]
    type = csv                  ; or "files"; the default "none" disables the API (404).
                                ; csv is cached in the process: use "files" if several
                                ; Radicale processes serve one storage
    database_path = /var/lib/radicale/sharing.csv   ; default <folder>/collection-db/...
    collection_by_map = true
    permit_create_map = true    ; or false, then the owner needs rights letter "M" on
                                ; the collection; "m" denies it even when true

The sharee's effective rights are the owner's rights on the collection intersected
with the map's ``Permissions`` (``r`` read, ``rw`` read-write).  Per-sharee display
name / colour overlays are stored in the map (``Properties``): a read-write sharee's
PROPPATCH on the mount becomes such an overlay by default (``enforce_properties_overlay
= true``); a read-only sharee's PROPPATCH is refused (403) unless ``[sharing]
permit_properties_overlay = true`` or the map's permissions include ``P``.  This module
never sets ``Properties``; updates keep them, a delete and re-create loses them.
While any map points at a collection, Radicale refuses the owner's DELETE of it (409):
revoke first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

# davproxy's access names -> Radicale permission letters for a map share.
PERMISSIONS: dict[str, str] = {"read": "r", "read-write": "rw"}

# (owner, collection, sharee, mount, access)
Wanted = tuple[str, str, str, str, str]


@dataclass(frozen=True, slots=True)
class MapChange:
    """One change made (or, in a dry run, that would be made) to Radicale's maps."""

    action: str  # create | update | accept (enabled for the sharee) | remove
    owner: str
    mount: str
    collection: str
    sharee: str
    permissions: str

    def __str__(self) -> str:
        return (
            f"{self.action} map {self.mount} ({self.owner}'s {self.collection}"
            f" for {self.sharee}, {self.permissions or '-'})"
        )


@dataclass(slots=True)
class Reconciled:
    """What a reconciliation did: counts, and every change in order."""

    changed: int = 0  # maps created or brought up to date
    removed: int = 0  # maps deleted and not re-created at the same mount
    changes: list[MapChange] = field(default_factory=list)


class NativeSharingError(RuntimeError):
    """Radicale refused or failed a sharing API call."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def _collection_path(path: str) -> str:
    """``alice/work`` -> ``/alice/work/``: the form Radicale stores and resolves."""
    stripped = path.strip("/")
    if not stripped:
        raise ValueError(f"not a collection path: {path!r}")
    return f"/{stripped}/"


def flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


def _permissions(access: str) -> str:
    try:
        return PERMISSIONS[access]
    except KeyError:
        raise ValueError(
            f"unknown access {access!r}; expected one of {sorted(PERMISSIONS)}"
        ) from None


class RadicaleSharingApi:
    """Drives ``/.sharing/v1/map/*`` so that Radicale enforces davproxy's shares.

    ``as_user(user)`` gives the headers that make Radicale treat a request as coming
    from ``user`` (``{"X-Remote-User": user}`` in proxy-auth mode).  Paths are
    Radicale's own (decoded, without any davproxy prefix).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        as_user: Callable[[str], dict[str, str]],
        *,
        timeout: float = 30.0,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._as_user = as_user
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._lock = asyncio.Lock()

    # -- public API ----------------------------------------------------------------

    async def grant(
        self, owner: str, collection: str, sharee: str, mount: str, access: str
    ) -> None:
        """Map ``mount`` for ``sharee`` onto ``owner``'s ``collection``; idempotent."""
        async with self._lock:
            rows = await self._owned_rows(owner)
            await self._ensure(
                rows, owner, _collection_path(collection), sharee, _collection_path(mount),
                _permissions(access),
            )  # fmt: skip

    async def revoke(self, owner: str, collection: str, sharee: str, mount: str) -> None:
        """Remove the map at ``mount`` (and any map of ``collection`` for ``sharee``)."""
        collection, mount = _collection_path(collection), _collection_path(mount)
        async with self._lock:
            for row in await self._owned_rows(owner):
                if row["PathOrToken"] == mount or (
                    row["PathMapped"] == collection and row["User"] == sharee
                ):
                    await self._delete(owner, row["PathOrToken"])

    async def list_maps(self, owner: str) -> list[dict[str, Any]]:
        """The map shares ``owner`` has made, normalised.

        Keys: owner, mount, collection, sharee, permissions, enabled (by both sides),
        hidden (by either side).
        """
        return [self._normalise(row) for row in await self._owned_rows(owner)]

    async def visible_rows(self, user: str) -> list[dict[str, Any]]:
        """Raw map rows ``user`` owns or receives.

        Radicale's API has no listing across users: ``list`` answers with the maps whose
        Owner or User is the caller (group and realm maps resolved for them), so finding
        every owner means asking as every user one knows of.
        """
        answer = await self._call(user, "list", {}, allow={"success", "not-found"})
        content = answer.get("Content") or []
        if not isinstance(content, list):
            raise NativeSharingError(f"Radicale map/list as {user}: unexpected Content")
        return [
            row
            for row in content
            if isinstance(row, dict)
            and row.get("ShareType", "map") == "map"
            and isinstance(row.get("Owner"), str)
            and isinstance(row.get("PathOrToken"), str)
        ]

    async def reconcile(
        self,
        wanted: Iterable[Wanted],
        owners: set[str],
        *,
        keep: Callable[[dict[str, Any]], bool] | None = None,
        dry_run: bool = False,
    ) -> Reconciled:
        """Make the maps of ``owners`` equal to ``wanted``.

        ``changed`` counts maps created or brought up to date (permissions, enabled or
        hidden on either side); ``removed`` counts maps deleted and not re-created at
        the same mount.  Owners named in ``wanted`` are reconciled as well.  A map that
        is not wanted stays when ``keep(row)`` says so (maps davproxy does not manage),
        unless a wanted map needs its mount.  ``dry_run`` changes nothing and reports
        what would change.
        """
        desired: dict[str, dict[str, tuple[str, str, str]]] = {}
        pairs: set[tuple[str, str, str]] = set()
        mounts: set[str] = set()
        for owner, collection, sharee, mount, access in wanted:
            entry = (_collection_path(collection), sharee, _permissions(access))
            path = _collection_path(mount)
            if path in mounts:
                raise ValueError(f"mount {path} wanted twice")
            if (owner, entry[0], sharee) in pairs:
                raise ValueError(f"{entry[0]} of {owner} wanted twice for {sharee}")
            mounts.add(path)
            pairs.add((owner, entry[0], sharee))
            desired.setdefault(owner, {})[path] = entry

        report = Reconciled()
        # Best effort per map: one map Radicale refuses must not keep the others (a
        # revocation above all) from being applied.  Failures are raised together.
        failures: list[str] = []
        async with self._lock:
            current: dict[str, list[dict[str, Any]]] = {}
            for owner in sorted(set(owners) | set(desired)):
                current[owner] = await self._owned_rows(owner)
            # Deletions first, across all owners: a mount may move between owners.
            for owner, rows in current.items():
                mine = desired.get(owner, {})
                for row in list(rows):
                    target = mine.get(row["PathOrToken"])
                    if target is not None and (row["PathMapped"], row["User"]) == target[:2]:
                        continue
                    if target is None and keep is not None and keep(row):
                        continue
                    try:
                        await self._delete(owner, row["PathOrToken"], report, dry_run, row)
                    except NativeSharingError as error:
                        failures.append(str(error))
                        continue
                    rows.remove(row)
                    if target is None:
                        report.removed += 1
            for owner, maps in desired.items():
                for mount, (collection, sharee, permissions) in maps.items():
                    try:
                        if await self._ensure(
                            current[owner], owner, collection, sharee, mount, permissions,
                            report, dry_run,
                        ):  # fmt: skip
                            report.changed += 1
                    except NativeSharingError as error:
                        failures.append(str(error))
        if failures:
            raise NativeSharingError(f"{len(failures)} map(s) not applied: " + "; ".join(failures))
        return report

    # -- internals -----------------------------------------------------------------

    async def _ensure(
        self,
        rows: list[dict[str, Any]],
        owner: str,
        collection: str,
        sharee: str,
        mount: str,
        permissions: str,
        report: Reconciled | None = None,
        dry_run: bool = False,
    ) -> bool:
        """Bring one map to the wanted state given ``owner``'s rows; True if it changed."""

        def note(action: str) -> None:
            if report is not None:
                report.changes.append(
                    MapChange(action, owner, mount, collection, sharee, permissions)
                )

        changed = False
        existing = None
        for row in list(rows):
            if row["PathOrToken"] == mount:
                same = (row["PathMapped"], row["User"]) == (collection, sharee)
                if same and str(row.get("Conversion") or "none") == "none":
                    existing = row
                    continue
            elif not (row["PathMapped"] == collection and row["User"] == sharee):
                continue
            # A map at this mount for something else, or this collection already mapped
            # for this sharee elsewhere (Radicale allows one per pair): replace it.
            await self._delete(owner, row["PathOrToken"], report, dry_run, row)
            rows.remove(row)
            changed = True

        if existing is None:
            note("create")
            if not dry_run:
                await self._call(owner, "create", {
                    "PathOrToken": mount, "PathMapped": collection, "User": sharee,
                    "Permissions": permissions, "Enabled": True, "Hidden": False,
                })  # fmt: skip
            existing = {
                "PathOrToken": mount, "PathMapped": collection, "Owner": owner,
                "User": sharee, "Permissions": permissions, "EnabledByOwner": True,
                "HiddenByOwner": False, "EnabledByUser": sharee == owner,
                "HiddenByUser": sharee != owner, "Conversion": "none",
            }  # fmt: skip
            rows.append(existing)
            changed = True
        elif (
            existing["Permissions"] != permissions
            or not flag(existing["EnabledByOwner"])
            or flag(existing["HiddenByOwner"])
        ):
            note("update")
            if not dry_run:
                await self._call(owner, "update", {
                    "PathOrToken": mount, "Permissions": permissions,
                    "Enabled": True, "Hidden": False,
                })  # fmt: skip
            existing.update(Permissions=permissions, EnabledByOwner=True, HiddenByOwner=False)
            changed = True

        if not flag(existing["EnabledByUser"]) or flag(existing["HiddenByUser"]):
            # The sharee's acceptance: Radicale never enables a map for the user itself.
            note("accept")
            if not dry_run:
                await self._call(
                    sharee, "update", {"PathOrToken": mount, "Enabled": True, "Hidden": False}
                )
            existing.update(EnabledByUser=True, HiddenByUser=False)
            changed = True
        return changed

    async def _owned_rows(self, owner: str) -> list[dict[str, Any]]:
        """Raw map rows whose Owner is ``owner`` (list also returns maps *to* them)."""
        return [row for row in await self.visible_rows(owner) if row.get("Owner") == owner]

    async def _delete(
        self,
        owner: str,
        mount: str,
        report: Reconciled | None = None,
        dry_run: bool = False,
        row: dict[str, Any] | None = None,
    ) -> None:
        if report is not None:
            row = row or {}
            report.changes.append(
                MapChange(
                    "remove", owner, mount, str(row.get("PathMapped", "")),
                    str(row.get("User", "")), str(row.get("Permissions", "")),
                )
            )  # fmt: skip
        if dry_run:
            return
        try:
            await self._call(owner, "delete", {"PathOrToken": mount})
        except NativeSharingError as error:
            if error.status != 404:  # already gone: fine
                raise

    @staticmethod
    def _normalise(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "owner": row.get("Owner"),
            "mount": row.get("PathOrToken"),
            "collection": row.get("PathMapped"),
            "sharee": row.get("User"),
            "permissions": row.get("Permissions"),
            "enabled": flag(row.get("EnabledByOwner")) and flag(row.get("EnabledByUser")),
            "hidden": flag(row.get("HiddenByOwner")) or flag(row.get("HiddenByUser")),
        }

    async def _call(
        self,
        user: str,
        action: str,
        body: dict[str, Any],
        allow: set[str] | frozenset[str] = frozenset({"success"}),
    ) -> dict[str, Any]:
        """POST ``/.sharing/v1/map/<action>`` as ``user``; the decoded JSON answer."""
        url = f"{self._base}/.sharing/v1/map/{action}"
        headers = {
            **self._as_user(user),
            "Content-Type": "application/json",
            "Accept": "application/json",
            # davproxy's session never decompresses (passthrough keeps encodings)
            "Accept-Encoding": "identity",
        }
        what = f"Radicale map/{action} as {user}"
        try:
            async with self._session.post(
                url, data=json.dumps(body), headers=headers, timeout=self._timeout
            ) as response:
                text = await response.text(errors="replace")
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise NativeSharingError(f"{what}: {error.__class__.__name__}: {error}") from error
        excerpt = " ".join(text.split())[:200]
        if not 200 <= status < 300:
            raise NativeSharingError(
                f"{what} {json.dumps(body, sort_keys=True)}: HTTP {status}: {excerpt}",
                status,
                excerpt,
            )
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise NativeSharingError(f"{what}: HTTP {status}, not JSON: {excerpt}", status, excerpt)
        if answer.get("Status") not in allow:
            raise NativeSharingError(
                f"{what}: HTTP {status}, Status {answer.get('Status')!r}: {excerpt}",
                status,
                excerpt,
            )
        return answer
