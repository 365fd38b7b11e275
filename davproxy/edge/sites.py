"""Everything that serves one upstream, wired together: the ``Site``.

The composition root of the features: one ``Site`` per upstream holds its connection,
identity, sharing (with its access backend), notification collection and subscriptions;
the feed machinery (store, fetcher, refresher, server) is shared by every upstream, so
a source URL is fetched once however many upstreams' users subscribe to it.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from davproxy.access.backend import backend_for
from davproxy.config import Config
from davproxy.feeds.fetch import Fetcher
from davproxy.feeds.refresh import Refresher
from davproxy.feeds.store import FeedStore
from davproxy.feeds.subscriptions import Subscriptions
from davproxy.feeds.views import FeedServer
from davproxy.sharing.model import Sharing
from davproxy.sharing.notifications import NotificationCollection, Renderer
from davproxy.store import Store
from davproxy.store.leases import Leases, exclusive
from davproxy.upstream.client import Upstream
from davproxy.upstream.directory import Directory
from davproxy.upstream.identity import Authenticator
from davproxy.web.sessions import WebSessions

log = logging.getLogger("davproxy.sites")


@dataclass(frozen=True, slots=True)
class Site:
    """One upstream with everything that serves requests for it."""

    upstream: Upstream
    auth: Authenticator
    sharing: Sharing
    notifications: NotificationCollection
    subscriptions: Subscriptions
    web: WebSessions  # the sharing web page's sessions


@dataclass(frozen=True, slots=True)
class FeedParts:
    """The subscription machinery every upstream shares: one fetch per source URL."""

    feeds: FeedStore
    fetcher: Fetcher
    refresher: Refresher
    server: FeedServer


def feed_parts(store: Store, config: Config) -> FeedParts:
    feeds = FeedStore(store)
    fetcher = Fetcher(config.feeds)
    return FeedParts(
        feeds,
        fetcher,
        Refresher(feeds, fetcher, config.feeds, leases=Leases(store)),
        FeedServer(feeds, config.server.max_body_bytes),
    )


def build_site(store: Store, upstream: Upstream, parts: FeedParts) -> Site:
    """Everything that serves one upstream, wired together."""
    auth = Authenticator(upstream.config.identity, upstream)
    htpasswd = auth.htpasswd
    directory = Directory(upstream.config, htpasswd.users if htpasswd else set)
    renderer = Renderer(upstream, directory.display_name)
    sharing = Sharing(
        store, upstream, auth, directory, renderer, backend_for(store, upstream, auth)
    )
    notifications = NotificationCollection(store, renderer, sharing.reply)
    subscriptions = Subscriptions(
        parts.feeds, parts.server, parts.refresher, parts.fetcher, upstream, parts.fetcher.settings
    )
    web = WebSessions(store, upstream.name)
    return Site(upstream, auth, sharing, notifications, subscriptions, web)


async def reload_directory(sites: list[Site], config: Config, leases: Leases) -> int:
    """Apply the mapping files' users and groups as ``config`` (read again) has them:
    SIGHUP and ``davproxy admin reload``.  Returns how many groups changed.  Every
    process reads the users; the groups are applied to the shared store by one process
    at a time (the lease ``directory:<upstream>``: after a SIGHUP to a fleet, the first
    applies the change and tells the members, the others find nothing left to do)."""
    fresh = {upstream.name: upstream for upstream in config.upstreams}
    changed = 0
    for site in sites:
        new = fresh.get(site.upstream.name)
        if new is None:
            log.warning(
                "reload: %s is no longer configured; restart to drop it", site.upstream.name
            )
            continue
        site.sharing.directory.update_users(new.users)
        groups = site.sharing.groups
        _, applied = await exclusive(
            leases,
            f"directory:{new.name}",
            functools.partial(groups.apply_directory, new.groups),
            wait=True,
        )
        count = applied or 0
        log.info("reload: %s: users and groups read again, %d group(s) changed", new.name, count)
        changed += count
    return changed
