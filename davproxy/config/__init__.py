"""Configuration: one main TOML file plus one mapping file per upstream.

The main file says where davproxy listens, where its store lives, how it logs and
which upstreams it fronts (public path prefix, upstream URL, mapping file).  A mapping
file says how one upstream lays out its users (principal and home templates), how
clients prove who they are, which access backend enforces shares, and who the users
are.  Both are parsed into frozen dataclasses; every error names the file, the table
and the key.  Secrets are read from files or the environment, never required inline.

The documented examples with every key and its default are in ``config/``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from yarl import URL

from davproxy.config.groups import DirectoryGroup, load_groups
from davproxy.config.store import StoreConfig, load_store
from davproxy.config.tables import (
    REQUIRED,
    ConfigError,
    MissingHtpasswd,
    Secret,
    Table,
    read_toml,
    resolve,
)
from davproxy.dav import untrusted
from davproxy.dav.paths import slash

IdentityMode = Literal["upstream-basic", "proxy-auth"]
HrefMapping = Literal["none", "script-name", "rewrite"]
UpstreamKind = Literal["radicale", "xandikos", "davical", "generic"]

_KINDS = ("radicale", "xandikos", "davical", "generic")
_IDENTITY_MODES = ("upstream-basic", "proxy-auth")
_HREF_MAPPINGS = ("auto", "none", "script-name", "rewrite")
_ACCESS_BACKENDS = ("proxy-enforced", "radicale-native", "acl")
_ACL_REQUESTS = ("whole", "own-aces")
_FOREIGN_HOMES = ("refuse", "upstream")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("text", "json")

# Where each known server keeps principals and homes, relative to the upstream root.
_LAYOUT_DEFAULTS: dict[str, dict[str, str]] = {
    "radicale": {
        "principal": "{user}/",
        "calendar_home": "{user}/",
        "addressbook_home": "{user}/",
    },
    "xandikos": {
        "principal": "{user}/",
        "calendar_home": "{user}/calendars/",
        "addressbook_home": "{user}/contacts/",
    },
    # the upstream url ends in /caldav.php/: principal and both homes are /caldav.php/<user>/
    "davical": {
        "principal": "{user}/",
        "calendar_home": "{user}/",
        "addressbook_home": "{user}/",
    },
}
# How a server takes an ACL request (access/acl.py): DAViCal merges per principal.
_ACL_REQUEST_DEFAULT: dict[str, str] = {"davical": "own-aces"}


# Requests davproxy lets run at once against one upstream; the rest wait in davproxy.
# Radicale's server is threaded Python with a listen backlog of 5: more parallel
# requests only contend for its GIL (measured in bench/passthrough), so few is faster.
_MAX_CONNECTIONS: dict[str, int] = {"radicale": 2}
# Whether davproxy refuses requests into another user's space itself.  Radicale (with
# the owner_only rights davproxy's set-ups use) and Xandikos grant nothing across users;
# for a generic server davproxy cannot know, so its own rights decide.
# DAViCal lets every user read others' free-busy and get "busy" placeholders of their
# events: davproxy refuses other homes there too (sharees use their copies).
_FOREIGN_HOMES_DEFAULT: dict[str, str] = {
    "radicale": "refuse",
    "xandikos": "refuse",
    "davical": "refuse",
}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 10 * 1024 * 1024
    upstream_connect_timeout: float = 5.0
    upstream_timeout: float = 60.0
    shutdown_timeout: float = 10.0
    forwarded_allow_ips: tuple[str, ...] = ()
    login_delay_max: float = 8.0  # longest wait after failed logins; 0: no delays
    workers: int = 1  # processes serving the port (edge/workers.py)


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"
    format: str = "text"
    access_log: bool = True


@dataclass(frozen=True, slots=True)
class MonitoringConfig:
    """Who may read /.davproxy/metrics: these networks, or a bearer token."""

    allow: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    token: Secret | None = None
    worker_port: int = 0  # with workers > 1: worker i also answers monitoring on this + i - 1


@dataclass(frozen=True, slots=True)
class FeedsConfig:
    """How davproxy fetches subscribed feeds (main file ``[feeds]``)."""

    #: networks (CIDR) a feed origin may resolve to although they are not public: loopback,
    #: private and link-local addresses are refused otherwise (SSRF)
    allow_networks: tuple[str, ...] = ()
    max_bytes: int = 20 * 1024 * 1024
    fetch_timeout: float = 30.0
    max_redirects: int = 5
    refresh_default: int = 3600  # seconds, when the feed gives no REFRESH-INTERVAL
    refresh_floor: int = 900  # never poll an origin more often than this
    refresh_ceiling: int = 86400  # nor less often than this
    jitter: float = 0.1  # up to this fraction of the interval is added, spreading fetches
    retry_base: int = 60  # first back-off after a failure; doubles per failure
    tombstone_days: float = 30.0  # deletions older than this leave sync history
    max_subscriptions_per_user: int = 100
    user_agent: str = "davproxy-feeds/1 (+https://github.com/davproxy)"


@dataclass(frozen=True, slots=True)
class FeedConfig:
    """One feed an operator publishes (mapping file ``[[feeds]]``)."""

    name: str  # the collection's path segment below <prefix>.davproxy/feeds/
    url: str  # http(s), webcal(s) already mapped to http(s)
    users: tuple[str, ...] = ("*",)  # who may read it ("*": every authenticated user)
    public: bool = False  # readable without credentials (advertised as subscribe-caldav)
    display_name: str = ""
    color: str = ""
    refresh_floor: int | None = None  # per-feed overrides of [feeds] bounds
    refresh_ceiling: int | None = None


@dataclass(frozen=True, slots=True)
class Layout:
    """Templates, relative to the upstream root, with ``{user}`` for the user id."""

    principal: str
    calendar_home: str
    addressbook_home: str


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    mode: IdentityMode
    htpasswd: Path | None = None
    trusted_header: str = "X-Remote-User"
    cache_seconds: float = 60.0
    realm: str = "davproxy"


@dataclass(frozen=True, slots=True)
class AccessConfig:
    backend: str = "proxy-enforced"
    service_user: str | None = None
    service_password: Secret | None = None
    # another user's principal or homes: refused by davproxy ("refuse"), or left to the
    # upstream's own rights ("upstream", for rights that grant cross-user access)
    foreign_homes: str = "upstream"
    # acl backend: an ACL request is the whole new ACL ("whole", RFC 3744) or only the
    # ACEs it names, merged per principal ("own-aces", DAViCal)
    acl_request: str = "whole"


@dataclass(frozen=True, slots=True)
class DirectoryUser:
    id: str
    emails: tuple[str, ...] = ()
    display_name: str = ""


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    prefix: str  # public path prefix, always starts and ends with "/"
    url: URL  # upstream base URL; its path always ends with "/"
    mapping_file: Path
    kind: UpstreamKind
    href_mapping: HrefMapping
    layout: Layout
    identity: IdentityConfig
    access: AccessConfig
    users: tuple[DirectoryUser, ...] = ()
    feeds: tuple[FeedConfig, ...] = ()
    max_connections: int = 32
    groups: tuple[DirectoryGroup, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    source: Path
    server: ServerConfig
    store: StoreConfig
    logging: LoggingConfig
    upstreams: tuple[UpstreamConfig, ...] = field(default_factory=tuple)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    feeds: FeedsConfig = field(default_factory=FeedsConfig)


def _normalise_prefix(table: Table, key: str, value: str) -> str:
    if not value.startswith("/"):
        raise table.error(key, f"must start with '/'; got {value!r}")
    if "//" in value or "/../" in value + "/" or "/./" in value + "/":
        raise table.error(key, f"must be a plain path; got {value!r}")
    return slash(value)


def _parse_url(table: Table, key: str, value: str) -> URL:
    try:
        url = URL(value)
    except (ValueError, TypeError) as exc:
        raise table.error(key, f"is not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise table.error(key, f"must be an http:// or https:// URL with a host; got {value!r}")
    try:
        url.port  # noqa: B018 - raises on an out-of-range port
    except ValueError as exc:
        raise table.error(key, f"has an invalid port: {exc}") from None
    if url.query_string or url.fragment:
        raise table.error(key, "must not carry a query or a fragment")
    path = slash(url.path)
    return url.with_path(path)


def load(path: str | Path) -> Config:
    """Load and validate the main file and every mapping file it names."""
    source = Path(path).resolve()
    root = Table(source, "", read_toml(source))

    server_t = root.table("server")
    server = ServerConfig(
        host=server_t.text("host", "127.0.0.1"),
        port=server_t.integer("port", 8080, 0, 65535),
        max_body_bytes=server_t.integer("max_body_bytes", 10 * 1024 * 1024, 1024),
        upstream_connect_timeout=server_t.number("upstream_connect_timeout", 5.0),
        upstream_timeout=server_t.number("upstream_timeout", 60.0),
        shutdown_timeout=server_t.number("shutdown_timeout", 10.0),
        forwarded_allow_ips=server_t.strings("forwarded_allow_ips"),
        login_delay_max=server_t.number("login_delay_max", 8.0, minimum=-1e-9),
        workers=server_t.integer("workers", 1, 1, 64),
    )
    if server.login_delay_max > 60:
        raise server_t.error(
            "login_delay_max", f"must be at most 60 seconds; got {server.login_delay_max}"
        )
    server_t.finish()

    store_t = root.table("store")
    store = load_store(store_t, source)

    log_t = root.table("logging")
    logging_cfg = LoggingConfig(
        level=log_t.text("level", "info", _LOG_LEVELS),
        format=log_t.text("format", "text", _LOG_FORMATS),
        access_log=log_t.flag("access_log", True),
    )
    log_t.finish()

    mon_t = root.table("monitoring")
    allow = _networks(mon_t, "allow", MonitoringConfig().allow)
    monitoring = MonitoringConfig(
        allow=allow,
        token=mon_t.secret("token"),
        worker_port=mon_t.integer("worker_port", 0, 0, 65535),
    )
    mon_t.finish()

    feeds = _load_feeds_settings(root.table("feeds"))

    upstreams = tuple(_load_upstream(source, t) for t in root.tables("upstream"))
    root.finish()
    if not upstreams:
        raise ConfigError(f"{source}: at least one [[upstream]] table is required")
    _check_unique(source, upstreams)
    return Config(source, server, store, logging_cfg, upstreams, monitoring, feeds)


def _networks(table: Table, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    networks = table.strings(key, default)
    for entry in networks:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise table.error(key, f"not an IP network: {entry!r}") from None
    return networks


def _load_feeds_settings(table: Table) -> FeedsConfig:
    d = FeedsConfig()
    floor = table.integer("refresh_floor", d.refresh_floor, 1)
    ceiling = table.integer("refresh_ceiling", d.refresh_ceiling, 1)
    if ceiling < floor:
        raise table.error("refresh_ceiling", f"must be >= refresh_floor ({floor})")
    jitter = table.number("jitter", d.jitter, minimum=-1e-9)
    if jitter > 1:
        raise table.error("jitter", f"must be between 0 and 1; got {jitter}")
    settings = FeedsConfig(
        allow_networks=_networks(table, "allow_networks", ()),
        max_bytes=table.integer("max_bytes", d.max_bytes, 1024),
        fetch_timeout=table.number("fetch_timeout", d.fetch_timeout),
        max_redirects=table.integer("max_redirects", d.max_redirects, 0, 20),
        refresh_default=table.integer("refresh_default", d.refresh_default, 1),
        refresh_floor=floor,
        refresh_ceiling=ceiling,
        jitter=jitter,
        retry_base=table.integer("retry_base", d.retry_base, 1),
        tombstone_days=table.number("tombstone_days", d.tombstone_days),
        max_subscriptions_per_user=table.integer(
            "max_subscriptions_per_user", d.max_subscriptions_per_user, 0
        ),
        user_agent=table.text("user_agent", d.user_agent),
    )
    table.finish()
    return settings


_FEED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def feed_url(value: str) -> str | None:
    """The http(s) URL to fetch for a subscription source, or None if it is not one.

    ``webcal://`` and ``webcals://`` are the same resource over http and https (the
    scheme only tells the operating system to open a calendar application).
    """
    text = value.strip()
    lowered = text.lower()
    for scheme, replacement in (("webcals://", "https://"), ("webcal://", "http://")):
        if lowered.startswith(scheme):
            text = replacement + text[len(scheme) :]
            break
    # yarl parses lazily: any part may raise, so all of it is read inside the try
    try:
        with untrusted.parsing("yarl", "a feed URL", expected=(ValueError, TypeError, IndexError)):
            url = URL(text)
            if url.scheme not in ("http", "https") or not url.host or url.user or url.password:
                return None
            url.port  # noqa: B018 - raises on an out-of-range port
            return str(url.with_fragment(None))
    except untrusted.Refused:
        return None


def _without_credentials(value: str) -> str:
    """A URL fit for an error message: never echo a password from the config."""
    return re.sub(r"(?<=://)[^/@]*@", "***@", value)


def _load_feed(table: Table) -> FeedConfig:
    name = table.text("name", REQUIRED)
    if not _FEED_NAME.fullmatch(name):
        raise table.error(
            "name",
            f"must be 1-64 letters, digits, '.', '_' or '-', not starting with a dot; got {name!r}",
        )
    raw_url = table.text("url", REQUIRED)
    url = feed_url(raw_url)
    if url is None:
        raise table.error(
            "url",
            "must be an http(s):// or webcal(s):// URL without credentials; "
            f"got {_without_credentials(raw_url)!r}",
        )
    floor = table.optional_integer("refresh_floor", 1)
    ceiling = table.optional_integer("refresh_ceiling", 1)
    if floor is not None and ceiling is not None and ceiling < floor:
        raise table.error("refresh_ceiling", f"must be >= refresh_floor ({floor})")
    users = table.strings("users", ("*",))
    feed = FeedConfig(
        name=name,
        url=url,
        users=users,
        public=table.flag("public", False),
        display_name=table.text("display_name", ""),
        color=table.text("color", ""),
        refresh_floor=floor,
        refresh_ceiling=ceiling,
    )
    table.finish()
    return feed


def _check_unique(source: Path, upstreams: tuple[UpstreamConfig, ...]) -> None:
    names: set[str] = set()
    prefixes: set[str] = set()
    for i, up in enumerate(upstreams):
        if up.name in names:
            raise ConfigError(f"{source}: [upstream[{i}]] name: {up.name!r} is used twice")
        if up.prefix in prefixes:
            raise ConfigError(f"{source}: [upstream[{i}]] prefix: {up.prefix!r} is used twice")
        names.add(up.name)
        prefixes.add(up.prefix)


def _load_upstream(source: Path, table: Table) -> UpstreamConfig:
    name = table.text("name", REQUIRED)
    prefix = _normalise_prefix(table, "prefix", table.text("prefix", "/"))
    url = _parse_url(table, "url", table.text("url", REQUIRED))
    mapping_path = resolve(source, table.text("mapping", REQUIRED))
    if not mapping_path.is_file():
        raise table.error("mapping", f"file not found: {mapping_path}")
    max_connections = table.optional_integer("max_connections", 1, 10_000)
    table.finish()

    mapping = Table(mapping_path, "", read_toml(mapping_path))
    kind = mapping.text("kind", "generic", _KINDS)

    href_t = mapping.text("href_mapping", "auto", _HREF_MAPPINGS)
    href_mapping = _choose_href_mapping(mapping, href_t, kind, prefix, url)

    layout_t = mapping.table("layout")
    defaults = _LAYOUT_DEFAULTS.get(kind, {})
    layout = Layout(
        **{
            key: _check_template(layout_t, key, layout_t.text(key, defaults.get(key, REQUIRED)))
            for key in ("principal", "calendar_home", "addressbook_home")
        }
    )
    layout_t.finish()

    ident_t = mapping.table("identity")
    mode = ident_t.text("mode", REQUIRED, _IDENTITY_MODES)
    htpasswd = ident_t.text("htpasswd", None)
    if mode == "proxy-auth" and not htpasswd:
        raise ident_t.error("htpasswd", "is required when mode = 'proxy-auth'")
    htpasswd_path = resolve(mapping_path, htpasswd) if htpasswd else None
    if htpasswd_path is not None and not htpasswd_path.is_file():
        missing = ident_t.error("htpasswd", f"file not found: {htpasswd_path}")
        raise MissingHtpasswd(str(missing), htpasswd_path)
    trusted_header = ident_t.text("trusted_header", "X-Remote-User")
    if not trusted_header or not all(c.isalnum() or c in "-_" for c in trusted_header):
        raise ident_t.error("trusted_header", f"is not a valid header name: {trusted_header!r}")
    identity = IdentityConfig(
        mode=mode,
        htpasswd=htpasswd_path,
        trusted_header=trusted_header,
        cache_seconds=ident_t.number("cache_seconds", 60.0, minimum=-1e-9),
        realm=ident_t.text("realm", "davproxy"),
    )
    ident_t.finish()

    access_t = mapping.table("access")
    access = AccessConfig(
        backend=access_t.text("backend", "proxy-enforced", _ACCESS_BACKENDS),
        service_user=access_t.text("service_user", None),
        service_password=access_t.secret("service_password"),
        foreign_homes=access_t.text(
            "foreign_homes", _FOREIGN_HOMES_DEFAULT.get(kind, "upstream"), _FOREIGN_HOMES
        ),
        acl_request=access_t.text(
            "acl_request", _ACL_REQUEST_DEFAULT.get(kind, "whole"), _ACL_REQUESTS
        ),
    )
    access_t.finish()
    if access.backend == "radicale-native" and (kind != "radicale" or mode != "proxy-auth"):
        raise access_t.error(
            "backend",
            "'radicale-native' needs kind = 'radicale' and [identity] mode = 'proxy-auth' "
            "(davproxy accepts shares in Radicale on the sharee's behalf)",
        )
    if access.backend == "acl" and mode == "upstream-basic" and not access.service_user:
        raise access_t.error(
            "backend",
            "'acl' in upstream-basic mode needs service_user and service_password: an "
            "account allowed to change every owner's ACL (DAViCal: an administrator)",
        )

    users = tuple(_load_user(t) for t in mapping.tables("users"))
    seen: set[str] = set()
    for i, user in enumerate(users):
        if user.id in seen:
            raise ConfigError(f"{mapping_path}: [users[{i}]] id: {user.id!r} is listed twice")
        seen.add(user.id)
    addresses: dict[str, str] = {}
    for i, user in enumerate(users):
        for email in user.emails:
            other = addresses.setdefault(email, user.id)
            if other != user.id:  # mailto: must name one user, not the last one listed
                raise ConfigError(
                    f"{mapping_path}: [users[{i}]] emails: {email!r} is already "
                    f"{other!r}'s address; an address may belong to one user only"
                )

    groups = load_groups(mapping, mapping_path, seen, set(addresses))
    feeds = tuple(_load_feed(t) for t in mapping.tables("feeds"))
    names = [feed.name for feed in feeds]
    for i, feed in enumerate(feeds):
        if names.index(feed.name) != i:
            raise ConfigError(f"{mapping_path}: [feeds[{i}]] name: {feed.name!r} is used twice")
    mapping.finish()

    return UpstreamConfig(
        name=name,
        prefix=prefix,
        url=url,
        mapping_file=mapping_path,
        kind=kind,
        href_mapping=href_mapping,
        layout=layout,
        identity=identity,
        access=access,
        users=users,
        feeds=feeds,
        max_connections=max_connections or _MAX_CONNECTIONS.get(kind, 32),
        groups=groups,
    )


def _choose_href_mapping(
    table: Table, wanted: str, kind: str, prefix: str, url: URL
) -> HrefMapping:
    if prefix == url.path:
        return "none"  # nothing to map, whatever was asked
    if wanted == "none":
        raise table.error(
            "href_mapping",
            f"'none' needs the public prefix ({prefix}) to equal the upstream path ({url.path})",
        )
    if wanted == "script-name" and (kind != "radicale" or url.path != "/"):
        raise table.error(
            "href_mapping", "'script-name' works only with kind = 'radicale' served at '/'"
        )
    if wanted == "auto":
        return "script-name" if kind == "radicale" and url.path == "/" else "rewrite"
    return wanted  # type: ignore[return-value]


def _check_template(table: Table, key: str, value: str) -> str:
    if value.startswith("/"):
        raise table.error(key, "is relative to the upstream root; drop the leading '/'")
    if "{user}" not in value:
        raise table.error(key, "must contain {user}")
    if not value.endswith("/"):
        raise table.error(key, "must end with '/'")
    return value


def _load_user(table: Table) -> DirectoryUser:
    user = DirectoryUser(
        id=table.text("id", REQUIRED),
        emails=tuple(e.lower() for e in table.strings("emails")),
        display_name=table.text("display_name", ""),
    )
    table.finish()
    return user


def describe(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, secrets masked (for check-config)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Secret):
            return "***"
        if isinstance(value, Path | URL):
            return str(value)
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if hasattr(value, "__dataclass_fields__"):
            return {k: plain(getattr(value, k)) for k in value.__dataclass_fields__}
        return value

    result = plain(config)
    assert isinstance(result, dict)
    return result
