"""The store's schema, as numbered migrations applied in order (``Store.migrate``).

Each migration runs in its own transaction and is recorded in ``schema_migrations``; a
store written by a newer davproxy is refused rather than damaged.  Sharing's tables are
described here; the feed tables next to the feed store that owns them
(``feeds/schema.py``).  Numbers are global: a new migration takes the next one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from davproxy.feeds.schema import feed_tables
from davproxy.store.engines import Engine, Params, postgres_ddl


class Schema:
    """What a migration writes with: SQLite's DDL, made PostgreSQL's where needed
    (``postgres_ddl``: 64-bit integers, double-precision times, identity ids)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect

    def execute(self, sql: str, params: Params | None = None) -> None:
        if params is not None:  # a data statement: the store's own SQL
            self.engine.execute(sql, params)
        elif self.dialect == "postgresql":
            self.engine.script(postgres_ddl(sql))
        else:
            self.engine.script(sql)


Migration = Callable[[Schema], None]


def _m001_meta(db: Schema) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("instance_id", str(uuid.uuid4())))


def _m002_sharing(db: Schema) -> None:
    # One row per sharee instance of a shared collection (sabre's model): the owner's
    # collection and everything the sharee's copy needs.  Paths are below the
    # upstream root, so a change of public prefix keeps them valid.
    db.execute(
        """CREATE TABLE shares (
            id INTEGER PRIMARY KEY,
            upstream TEXT NOT NULL,
            owner TEXT NOT NULL,
            collection TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('calendar', 'addressbook', 'collection')),
            sharee TEXT NOT NULL,
            sharee_href TEXT NOT NULL,
            access TEXT NOT NULL CHECK (access IN ('read', 'read-write')),
            status TEXT NOT NULL
                CHECK (status IN ('noresponse', 'accepted', 'declined', 'invalid')),
            invite_uid TEXT NOT NULL UNIQUE,
            comment TEXT NOT NULL DEFAULT '',
            sharee_name TEXT NOT NULL DEFAULT '',
            summary TEXT NOT NULL DEFAULT '',
            mount TEXT,
            created REAL NOT NULL,
            updated REAL NOT NULL,
            UNIQUE (upstream, collection, sharee)
        )"""
    )
    db.execute("CREATE INDEX shares_by_sharee ON shares (upstream, sharee, status)")
    db.execute(
        "CREATE UNIQUE INDEX shares_by_mount ON shares (upstream, mount) WHERE mount IS NOT NULL"
    )
    # Per-sharee properties of a sharee's copy (displayname, colour, order, ...).
    db.execute(
        """CREATE TABLE instance_props (
            share_id INTEGER NOT NULL REFERENCES shares (id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (share_id, name)
        )"""
    )
    # One canonical record per notification, rendered per flavour at GET time.
    # Deleted ones stay as tombstones so sync-collection can report them.
    db.execute(
        """CREATE TABLE notifications (
            id INTEGER PRIMARY KEY,
            upstream TEXT NOT NULL,
            user TEXT NOT NULL,
            name TEXT NOT NULL,
            type TEXT NOT NULL,
            body TEXT NOT NULL,
            etag TEXT NOT NULL,
            revision INTEGER NOT NULL,
            deleted INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL,
            UNIQUE (upstream, user, name)
        )"""
    )
    db.execute("CREATE INDEX notifications_by_revision ON notifications (upstream, user, revision)")
    db.execute("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute("INSERT INTO counters VALUES ('revision', 0)")


def _m003_pending_deletions(db: Schema) -> None:
    # An owner's DELETE of something that holds shares, recorded before it is sent:
    # if davproxy dies before it learns the outcome, start-up settles it, and copies of
    # what may be gone are not served meanwhile.
    db.execute(
        """CREATE TABLE pending_deletions (
            upstream TEXT NOT NULL,
            owner TEXT NOT NULL,
            path TEXT NOT NULL,
            created REAL NOT NULL,
            PRIMARY KEY (upstream, owner, path)
        )"""
    )


def _m005_ended_copies(db: Schema) -> None:
    # Where a sharee's copy was, once its share ended (revoked, declined, removed): the
    # path then answers 404 from davproxy itself, not the upstream's view of a path it
    # never had, until the sharee creates something of their own there.
    db.execute(
        """CREATE TABLE ended_copies (
            upstream TEXT NOT NULL,
            sharee TEXT NOT NULL,
            mount TEXT NOT NULL,
            ended REAL NOT NULL,
            PRIMARY KEY (upstream, mount)
        )"""
    )
    db.execute("CREATE INDEX ended_copies_by_sharee ON ended_copies (upstream, sharee)")


def _m006_upstream_removals(db: Schema) -> None:
    # radicale-native: a copy the store has ended but the upstream may still serve (its
    # map share not yet confirmed removed).  Written in the transaction that ends the
    # share, removed once the upstream's maps of that owner match the store, so a
    # revocation made while the upstream is down (or by `davproxy admin` in another
    # process) is neither forgotten nor served meanwhile.
    db.execute(
        """CREATE TABLE upstream_removals (
            upstream TEXT NOT NULL,
            owner TEXT NOT NULL,
            sharee TEXT NOT NULL,
            mount TEXT NOT NULL,
            created REAL NOT NULL,
            PRIMARY KEY (upstream, sharee, mount)
        )"""
    )
    db.execute("CREATE INDEX upstream_removals_by_owner ON upstream_removals (upstream, owner)")


def _m007_ended_copies_of_invitations(db: Schema) -> None:
    # Which invitation an ended copy was made for: a sharee who declines after accepting
    # and then accepts again gets the copy back where it was (CalendarServer keeps the
    # binding's name), whatever name it had.  NULL for copies that ended before.
    db.execute("ALTER TABLE ended_copies ADD COLUMN invite_uid TEXT")
    db.execute("CREATE INDEX ended_copies_by_invitation ON ended_copies (upstream, invite_uid)")


def _m008_web_sessions(db: Schema) -> None:
    # Sessions of the sharing web page (davproxy/web/sessions.py).  The key is a hash
    # of the random id the browser holds in its cookie, so a copy of the store hands out
    # no session; no password is ever written here.  ``binding`` ties a proxy-auth
    # session to the password hash it was opened under (a changed or removed password
    # ends it); ``flash`` is the one message the next page shows.
    db.execute(
        """CREATE TABLE web_sessions (
            key TEXT PRIMARY KEY,
            upstream TEXT NOT NULL,
            user TEXT NOT NULL,
            csrf TEXT NOT NULL,
            binding TEXT NOT NULL DEFAULT '',
            flash TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL,
            last_seen REAL NOT NULL
        )"""
    )
    db.execute("CREATE INDEX web_sessions_by_user ON web_sessions (upstream, user)")


def _m009_peruser_data(db: Schema) -> None:
    # A sharee's own alarms and transparency of each object in a shared calendar
    # (sharing/peruser_store.py).  Rows belong to one share: they go with it (revoked:
    # the cascade; declined, left or moved: the trigger), so nothing reaches a later
    # sharee, whatever row id SQLite hands out again.
    db.execute(
        """CREATE TABLE peruser_data (
            share_id INTEGER NOT NULL REFERENCES shares (id) ON DELETE CASCADE,
            href TEXT NOT NULL,
            uid TEXT NOT NULL,
            data TEXT NOT NULL,
            revision INTEGER NOT NULL,
            PRIMARY KEY (share_id, href)
        )"""
    )
    db.execute("CREATE INDEX peruser_data_by_revision ON peruser_data (share_id, revision)")
    if db.dialect == "postgresql":
        db.execute(
            """CREATE FUNCTION peruser_data_share_ended() RETURNS trigger LANGUAGE plpgsql
            AS $$ BEGIN DELETE FROM peruser_data WHERE share_id = OLD.id; RETURN NULL; END $$"""
        )
        db.execute(
            """CREATE TRIGGER peruser_data_share_ended AFTER UPDATE OF status, mount ON shares
            FOR EACH ROW WHEN (NEW.status != 'accepted' OR NEW.mount IS DISTINCT FROM OLD.mount)
            EXECUTE FUNCTION peruser_data_share_ended()"""
        )
    else:
        db.execute(
            """CREATE TRIGGER peruser_data_share_ended AFTER UPDATE OF status, mount ON shares
            WHEN NEW.status != 'accepted' OR NEW.mount IS NOT OLD.mount
            BEGIN DELETE FROM peruser_data WHERE share_id = OLD.id; END"""
        )
    db.execute("INSERT INTO counters VALUES ('peruser', 0)")


def _m010_groups(db: Schema) -> None:
    # Sharing with groups (davproxy/sharing/groups.py).  ``directory_groups`` is the
    # group directory as last applied (a reload diffs the mapping file against it, and
    # every process reads groups from here, so the server and `davproxy admin` agree);
    # ``members`` are direct (users and groups), ``expanded`` the users through nesting.
    # ``group_shares``: one row per (collection, group), the group's own access.
    # Members are ordinary ``shares`` rows (their effective access); ``group_binds``
    # marks those that exist (also) through a group, with the access the member was
    # given individually, if any, so ending one route leaves the other.
    db.execute(
        """CREATE TABLE directory_groups (
            upstream TEXT NOT NULL,
            id TEXT NOT NULL,
            display_name TEXT NOT NULL,
            emails TEXT NOT NULL,
            members TEXT NOT NULL,
            expanded TEXT NOT NULL,
            PRIMARY KEY (upstream, id)
        )"""
    )
    db.execute(
        """CREATE TABLE group_shares (
            upstream TEXT NOT NULL,
            collection TEXT NOT NULL,
            group_id TEXT NOT NULL,
            owner TEXT NOT NULL,
            kind TEXT NOT NULL,
            href TEXT NOT NULL,
            access TEXT NOT NULL CHECK (access IN ('read', 'read-write')),
            comment TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL,
            PRIMARY KEY (upstream, collection, group_id)
        )"""
    )
    db.execute("CREATE INDEX group_shares_by_group ON group_shares (upstream, group_id)")
    db.execute(
        """CREATE TABLE group_binds (
            share_id INTEGER PRIMARY KEY REFERENCES shares (id) ON DELETE CASCADE,
            individual TEXT CHECK (individual IS NULL OR individual IN ('read', 'read-write'))
        )"""
    )


def _m011_acl_entries(db: Schema) -> None:
    # The ACEs the acl access backend (access/acl.py) has written on upstream
    # collections, one per (collection, sharee): an ACL has no room for a mark, so this
    # is how davproxy tells its own ACEs from an administrator's.  A row is written before
    # the ACL request and removed once the ACE is confirmed gone; ``neutral`` marks an
    # ACE reduced to what every user holds (servers that cannot delete one, DAViCal).
    db.execute(
        """CREATE TABLE acl_entries (
            upstream TEXT NOT NULL,
            owner TEXT NOT NULL,
            collection TEXT NOT NULL,
            sharee TEXT NOT NULL,
            privileges TEXT NOT NULL,
            neutral INTEGER NOT NULL DEFAULT 0,
            written REAL NOT NULL,
            PRIMARY KEY (upstream, collection, sharee)
        )"""
    )
    db.execute("CREATE INDEX acl_entries_by_owner ON acl_entries (upstream, owner)")


def _m012_leases(db: Schema) -> None:
    # "Only one process at a time" for jobs every davproxy process would otherwise run
    # (store/leases.py): a feed refresh (``feed:<source id>``), start-up's work on the
    # shared store, the upstream retries.  ``holder`` is host, pid and a random part;
    # ``expires`` is renewed while the job runs, so a holder killed mid-job loses the
    # lease once it expires.  ``completed``: when the last run that finished had begun.
    db.execute(
        """CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            expires REAL NOT NULL,
            taken REAL NOT NULL,
            completed REAL NOT NULL
        )"""
    )


# Append only: a released migration is never edited, only followed by a new one.
MIGRATIONS: tuple[tuple[int, str, Migration], ...] = (
    (1, "meta", _m001_meta),
    (2, "sharing", _m002_sharing),
    (3, "pending_deletions", _m003_pending_deletions),
    (4, "feeds", feed_tables),
    (5, "ended_copies", _m005_ended_copies),
    (6, "upstream_removals", _m006_upstream_removals),
    (7, "ended_copies_of_invitations", _m007_ended_copies_of_invitations),
    (8, "web_sessions", _m008_web_sessions),
    (9, "peruser_data", _m009_peruser_data),
    (10, "groups", _m010_groups),
    (11, "acl_entries", _m011_acl_entries),
    (12, "leases", _m012_leases),
)
