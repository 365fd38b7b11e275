"""``davproxy admin``: look after shares, notifications and feeds from the command line.

Reads the same configuration and store as the running server (SQLite in WAL mode
allows both at once).  Human-readable tables by default, ``--json`` for scripts.
Changes go through the same code as requests do, so a revocation from here notifies
the sharee and, with the radicale-native backend, updates Radicale's rights.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from davproxy import config as config_mod
from davproxy.config.tables import MissingHtpasswd
from davproxy.dav.errors import DavError, PlainError
from davproxy.dav.paths import canonical
from davproxy.edge.server import StartupError
from davproxy.edge.sites import FeedParts, Site, build_site, feed_parts, reload_directory
from davproxy.ops import users
from davproxy.sharing import upstream_rights
from davproxy.sharing.requests import ShareeRequest
from davproxy.store import Store, StoreError
from davproxy.store.leases import Leases, exclusive
from davproxy.store.records import Share
from davproxy.upstream.client import Upstream, new_session


def add_parser(sub: Any) -> None:
    admin = sub.add_parser("admin", help="inspect and manage shares, notifications, the store")
    admin.add_argument("--config", "-c", required=True, help="main TOML file")
    admin.add_argument("--json", action="store_true", help="machine-readable output")
    verbs = admin.add_subparsers(dest="verb", required=True)

    shares = verbs.add_parser("shares", help="list shares")
    for name in ("upstream", "owner", "sharee", "collection"):
        shares.add_argument(f"--{name}")
    shares.add_argument(
        "--status", type=_status, help=f"one of {', '.join(STATUSES)} (or invite-<status>)"
    )

    revoke = verbs.add_parser("revoke", help="end one share (the sharee is told)")
    revoke.add_argument("--upstream", help="upstream name (default: the first)")
    revoke.add_argument("--collection", required=True, help="the owner's collection path")
    revoke.add_argument("--sharee", required=True, help="sharee user id (or href if invalid)")

    share = verbs.add_parser(
        "share", help="share a collection on its owner's behalf (the sharee is invited)"
    )
    share.add_argument("--upstream", help="upstream name (default: the first)")
    share.add_argument("--collection", required=True, help="the owner's collection path")
    share.add_argument("--sharee", required=True, help="user id, mailto: address or principal")
    share.add_argument("--access", choices=("read", "read-write"), default="read")
    share.add_argument("--owner", help="the collection's owner (default: from the path)")
    share.add_argument("--comment", default="", help="shown to the sharee with the invitation")
    accept = verbs.add_parser(
        "accept", help="accept an invitation on the sharee's behalf (their copy is made)"
    )
    accept.add_argument("--upstream", help="upstream name (default: the first)")
    accept.add_argument("--collection", required=True, help="the owner's collection path")
    accept.add_argument("--sharee", required=True, help="sharee user id")
    accept.add_argument("--name", default="", help="display name of the copy")
    accept.add_argument("--slug", help="path segment of the copy in the sharee's home")
    users.add_parser(verbs, _json_flag)

    notes = verbs.add_parser("notifications", help="list a user's notifications")
    notes.add_argument("--user", required=True)
    notes.add_argument("--upstream")

    feeds = verbs.add_parser("feeds", help="list feed sources: last fetch, status, next refresh")
    feeds.add_argument("--upstream")
    refresh = verbs.add_parser("refresh", help="fetch feeds now (all, or those named)")
    refresh.add_argument("names", nargs="*", help="feed names, subscription paths or URLs")

    verbs.add_parser("check", help="store integrity, schema version and counts")
    verbs.add_parser(
        "leases", help="which process holds each fleet-wide job (feed refreshes, start-up...)"
    )
    verbs.add_parser(
        "reload",
        help="apply the mapping files' users and groups now (members are invited or told)",
    )
    reconcile = verbs.add_parser(
        "reconcile", help="bring upstream-native access rights in line with the store"
    )
    reconcile.add_argument("--upstream")
    reconcile.add_argument(
        "--dry-run", action="store_true", help="show what would change; change nothing"
    )
    for verb in verbs.choices.values():
        _json_flag(verb)
    admin.set_defaults(func=run)


# Share states as the store keeps them (the D:invite-<status> of the drafts).
STATUSES = ("noresponse", "accepted", "declined", "invalid")


def _status(value: str) -> str:
    status = value.removeprefix("invite-")
    if status not in STATUSES:
        raise argparse.ArgumentTypeError(
            f"unknown status {value!r} (choose from {', '.join(STATUSES)})"
        )
    return status


def _json_flag(parser: argparse.ArgumentParser) -> None:
    """``--json`` after the verb too (``admin shares --json``); before it still works."""
    if "--json" not in parser._option_string_actions:
        parser.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
        )


def run(args: argparse.Namespace) -> int:
    try:
        config = config_mod.load(args.config)
    except MissingHtpasswd as exc:
        if not (args.verb == "user" and args.action == "add"):
            raise StartupError(f"configuration error: {exc}") from None
        users.update(exc.path, lambda lines: lines)  # the first user makes the file
        print(f"davproxy: created {exc.path}", file=sys.stderr)
        return run(args)
    except config_mod.ConfigError as exc:
        raise StartupError(f"configuration error: {exc}") from None
    if args.verb == "user":
        return users.run(args, config)
    try:
        store = Store.open(config.store.location, config.store.reveal_password())
    except StoreError as exc:
        raise StartupError(str(exc)) from None
    try:
        return asyncio.run(_run(args, config, store))
    except StoreError as exc:  # the store failed mid-command (locked, connection lost)
        raise StartupError(f"store {store.location}: {exc}") from None
    finally:
        store.close()


async def _run(args: argparse.Namespace, config: config_mod.Config, store: Store) -> int:
    parts = feed_parts(store, config)
    async with new_session() as session:
        sites = {
            up.name: build_site(store, Upstream(up, config.server, session), parts)
            for up in config.upstreams
        }
        verb = args.verb
        if verb in ("feeds", "refresh"):
            for site in sites.values():
                site.subscriptions.sync_configured()  # the config may be newer than the server
            try:
                if verb == "feeds":
                    return _feeds(args, parts)
                return await _refresh(args, parts)
            finally:
                await parts.fetcher.close()
                parts.feeds.close()
        if verb == "shares":
            return _shares(args, store, sites)
        if verb == "notifications":
            return _notifications(args, store, _pick(sites, args.upstream))
        if verb == "check":
            return _check(args, store)
        if verb == "leases":
            return _leases(args, store)
        if verb == "reload":  # what SIGHUP makes the server do, from this process
            changed = await reload_directory(list(sites.values()), config, Leases(store))
            print(json.dumps({"groups_changed": changed}) if args.json else
                  f"users and groups applied: {changed} group(s) changed")  # fmt: skip
            return 0
        if verb == "revoke":
            return await _revoke(args, store, _pick(sites, args.upstream))
        if verb in ("share", "accept"):
            return await _share_or_accept(args, store, _pick(sites, args.upstream))
        if verb == "reconcile":
            chosen = [_pick(sites, args.upstream)] if args.upstream else list(sites.values())
            return await _reconcile(args, chosen)
    return 2


async def _reconcile(args: argparse.Namespace, chosen: list[Site]) -> int:
    """Each upstream's rights brought in line (adopting its own shares the first time);
    one line per change, or with --dry-run per change that would be made."""
    failed, rows = 0, []
    for site in chosen:
        name, access = site.upstream.name, site.sharing.access
        if not access.upstream_rights:
            if not args.json:
                print(f"{name}: backend {access.name}, nothing to reconcile")
            continue
        try:  # one reconciliation at a time with the servers' retries (the same lease)
            _, done = await exclusive(
                Leases(site.sharing.store),
                upstream_rights.lease_name(site.sharing),
                functools.partial(upstream_rights.reconcile, site.sharing, dry_run=args.dry_run),
                wait=True,
            )
            changes = done or []
        except PlainError as exc:
            print(f"davproxy: {name}: {exc.message}", file=sys.stderr)
            failed += 1
            continue
        rows += [{"upstream": name, "change": change} for change in changes]
        if args.json:
            continue
        verb = "would " if args.dry_run else ""
        for change in changes:
            print(f"{name}: {verb}{change}")
        if not changes:
            print(f"{name}: upstream rights match the store")
    if args.json:
        print(json.dumps(rows, indent=2))
    return 1 if failed else 0


def _pick(sites: dict[str, Site], name: str | None) -> Site:
    if name is None:
        return next(iter(sites.values()))
    if name not in sites:
        raise SystemExit(f"davproxy: no upstream named {name!r} (have: {', '.join(sites)})")
    return sites[name]


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    for row in rows:
        lines.append(
            "  ".join(str(row.get(c, "")).ljust(w) for c, w in zip(columns, widths, strict=True))
        )
    return "\n".join(lines)


def _emit(args: argparse.Namespace, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(_table(rows, columns))


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


def _shares(args: argparse.Namespace, store: Store, sites: dict[str, Site]) -> int:
    if args.upstream is not None:
        _pick(sites, args.upstream)  # an unknown upstream is an error, not an empty list
    listed: list[tuple[Share, str | None]] = [(share, None) for share in store.all_shares()]
    for site in sites.values():  # a group's own entry (sharee group:<id>), then members'
        listed = [*site.sharing.groups.listing(), *listed]
    everyone = {name for s, _ in listed for name in (s.owner, s.sharee)}
    for key in ("owner", "sharee"):
        wanted = getattr(args, key)
        known = wanted in everyone or any(s.sharing.directory.known(wanted) for s in sites.values())
        if wanted is not None and not known:
            print(f"davproxy: no user {wanted!r} is known (--{key})", file=sys.stderr)
            return 2
    rows = []
    for share, group in listed:
        values = {
            "upstream": share.upstream, "owner": share.owner, "sharee": share.sharee,
            "collection": share.collection, "status": share.status,
        }  # fmt: skip
        if any(
            getattr(args, key) is not None
            and canonical(getattr(args, key).strip("/")) != canonical(value.strip("/"))
            for key, value in values.items()
        ):
            continue
        via = group if group is not None else sites[share.upstream].sharing.groups.via(share)
        rows.append(
            {
                **values,
                "access": share.access,
                "copy": share.mount or "",
                "via": via,
                "updated": _when(share.updated),
            }
        )
    _emit(
        args,
        rows,
        ("upstream", "owner", "collection", "sharee", "access", "status", "copy", "via",
         "updated"),
    )  # fmt: skip
    invalid = sum(row["status"] == "invalid" for row in rows)
    if invalid and not args.json:
        print(
            f"{invalid} share(s) invalid: the sharee names no known user, so nobody was "
            "invited; add the user (admin user add) and share again, or revoke",
            file=sys.stderr,
        )
    return 0


def _notifications(args: argparse.Namespace, store: Store, site: Site) -> int:
    rows = [
        {"name": n.name, "type": n.type, "revision": n.revision, "created": _when(n.created)}
        for n in store.notifications(site.upstream.name, args.user)
    ]
    _emit(args, rows, ("name", "type", "revision", "created"))
    return 0


def _feed_rows(parts: FeedParts) -> list[dict[str, Any]]:
    rows = []
    for sub in parts.feeds.subscriptions():
        source = parts.feeds.source(sub.source_id)
        if source is None:
            continue
        rows.append(
            {
                "upstream": sub.upstream,
                "name": sub.name,
                "owner": sub.owner or "(operator)",
                "path": sub.path,
                "url": source.url,
                "status": source.status,
                "objects": parts.feeds.count(source.id),
                "revision": source.revision,
                "last_fetch": _when(source.last_attempt) if source.last_attempt else "never",
                "next_fetch": _when(source.next_fetch) if source.next_fetch else "now",
                "error": source.error,
                "source_id": source.id,
            }
        )
    return rows


def _feeds(args: argparse.Namespace, parts: FeedParts) -> int:
    rows = [r for r in _feed_rows(parts) if args.upstream in (None, r["upstream"])]
    _emit(
        args,
        rows,
        ("name", "owner", "status", "objects", "last_fetch", "next_fetch", "url", "error"),
    )
    return 0


async def _refresh(args: argparse.Namespace, parts: FeedParts) -> int:
    rows = _feed_rows(parts)
    wanted = set(args.names)
    chosen = [r for r in rows if not wanted or wanted & {r["name"], r["path"], r["url"]}]
    if wanted and not chosen:
        print(f"davproxy: no feed matches {', '.join(sorted(wanted))}", file=sys.stderr)
        return 1
    failed = 0
    results = []
    for source_id in dict.fromkeys(r["source_id"] for r in chosen):  # one fetch per source
        report = await parts.refresher.refresh(source_id)
        failed += report.outcome == "failed"
        results.append(
            {
                "url": next(r["url"] for r in chosen if r["source_id"] == source_id),
                "outcome": report.outcome,
                "added": report.added,
                "changed": report.changed,
                "removed": report.removed,
                "revision": report.revision,
                "error": report.error,
            }
        )
    _emit(args, results, ("url", "outcome", "added", "changed", "removed", "revision", "error"))
    return 1 if failed else 0


def _check(args: argparse.Namespace, store: Store) -> int:
    info = store.info()
    ok = store.integrity_ok()
    report = {
        "store": info.location,
        "schema_version": info.schema_version,
        **info.details,
        "integrity": "ok" if ok else "FAILED",
        "shares": {f"{u}/{s}": n for u, s, n in store.share_counts()},
        "notifications": dict(store.notification_counts()),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:15} {value}")
    return 0 if ok else 1


def _leases(args: argparse.Namespace, store: Store) -> int:
    """Each lease: who holds it (host:pid:random) and for how long, when a run finished."""
    now = time.time()
    rows = [
        {
            "name": state.name,
            "holder": state.holder if state.expires > now else "-",
            "expires_in": round(state.expires - now, 1) if state.expires > now else None,
            "last_completed": _when(state.completed) if state.completed else "-",
        }
        for state in Leases(store).states()
    ]
    _emit(args, rows, ("name", "holder", "expires_in", "last_completed"))
    return 0


async def _revoke(args: argparse.Namespace, store: Store, site: Site) -> int:
    collection = site.upstream.rest_of(args.collection) if args.collection.startswith("/") else None
    collection = canonical(
        (collection if collection is not None else args.collection).rstrip("/") + "/"
    )
    share = store.share_for(site.upstream.name, collection, args.sharee)
    group = site.sharing.groups.resolve(args.sharee) if share is None else None
    shared = site.sharing.groups.shared_with(collection, group) if group else None
    if shared is not None:  # a group: every member's share through it ends or drops
        info = await site.sharing.owner_collection_info(shared.owner, collection)
        request = ShareeRequest(args.sharee, "no-access", "", "")
        await site.sharing.change_sharees(shared.owner, collection, info, [request])
        print(f"revoked: {collection} no longer shared with group {group}")
        return 0
    if share is None:
        print(f"davproxy: no share of {collection} with {args.sharee}", file=sys.stderr)
        return 1
    try:
        await site.sharing.revoke(share)
    except PlainError as exc:
        print(
            f"davproxy: share ended in the store (davproxy refuses the copy already), but "
            f"the upstream is not updated yet: {exc.message}; a running server retries "
            "until it is, or run `davproxy admin reconcile`",
            file=sys.stderr,
        )
        return 1
    print(f"revoked: {collection} no longer shared with {args.sharee}")
    return 0


def _collection(site: Site, given: str) -> str:
    """The collection below the upstream root, from a public path or a bare one."""
    rest = site.upstream.rest_of(given) if given.startswith("/") else None
    return canonical((rest if rest is not None else given).rstrip("/") + "/")


async def _share_or_accept(args: argparse.Namespace, store: Store, site: Site) -> int:
    """``admin share`` / ``admin accept``: what the owner's share request and the
    sharee's reply do over HTTP, through the same model (invitations, replies, access
    backend), for operators setting shares up on users' behalf."""
    collection = _collection(site, args.collection)
    sharing = site.sharing
    try:
        if args.verb == "share":
            sharee = site.sharing.directory.resolve(args.sharee)
            if sharee is None and site.sharing.groups.resolve(args.sharee) is not None:
                sharee = "group:" + str(site.sharing.groups.resolve(args.sharee))
            if sharee is None:
                print(f"davproxy: {args.sharee!r} names no known user", file=sys.stderr)
                return 1
            owner = args.owner or collection.split("/", 1)[0]
            if not sharing.owns_collection(owner, collection):
                print(
                    f"davproxy: {collection} is not a collection of {owner!r} (give --owner)",
                    file=sys.stderr,
                )
                return 1
            info = await sharing.collection_info(collection, sharing.auth.headers_for(owner))
            request = ShareeRequest(args.sharee, args.access, args.comment[:4096], "")
            await sharing.change_sharees(owner, collection, info, [request])
            share = store.share_for(site.upstream.name, collection, sharee)
            status = share.status if share else "shared" if sharee.startswith("group:") else "?"
            public = site.upstream.paths.public + collection
            result = {"collection": public, "owner": owner, "sharee": sharee,
                      "access": args.access, "status": status}  # fmt: skip
            done = "access changed" if status == "accepted" else "invited"
            message = f"{owner} shares {public} with {sharee} ({args.access}): {done}"
        else:
            open_share = store.share_for(site.upstream.name, collection, args.sharee)
            if open_share is None:
                print(f"davproxy: no share of {collection} with {args.sharee}", file=sys.stderr)
                return 1
            mount = await sharing.accept(open_share, args.name[:512], args.slug)
            public = site.upstream.paths.public + mount
            owned = site.upstream.paths.public + collection
            result = {"collection": owned, "sharee": args.sharee, "copy": public}
            message = f"{args.sharee} accepted {owned}: their copy is {public}"
    except (DavError, PlainError) as exc:
        print(f"davproxy: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else message)
    return 0
