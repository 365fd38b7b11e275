"""Who the users of one upstream are: resolving sharees and naming people.

A sharee may be given as a ``mailto:`` address, a principal URL (path or absolute) or
a bare user id.  Known users are those in the mapping file's ``[[users]]`` directory,
plus, in ``proxy-auth`` mode, everyone in davproxy's own htpasswd file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import unquote

from davproxy.config import DirectoryUser, UpstreamConfig
from davproxy.dav.davxml import href_path
from davproxy.dav.paths import PathRejected, resolve_path


class Directory:
    def __init__(self, config: UpstreamConfig, extra_users: Callable[[], set[str]]) -> None:
        self.config = config
        self._extra_users = extra_users
        self.update_users(config.users)
        template = re.escape(config.prefix + config.layout.principal).replace(
            re.escape("{user}"), "(?P<user>[^/]+)"
        )
        self._principal = re.compile(template + "?")

    def update_users(self, users: tuple[DirectoryUser, ...]) -> None:
        """Take the mapping file's ``[[users]]`` as read again (a reload)."""
        self._by_id = {user.id: user for user in users}
        self._by_email = {email: user.id for user in users for email in user.emails}

    def users(self) -> list[str]:
        """Every known user id, sorted (the web page's suggestions)."""
        return sorted(set(self._by_id) | self._extra_users())

    def known(self, user: str) -> bool:
        return user in self._by_id or user in self._extra_users()

    def resolve(self, value: str) -> str | None:
        """The user id a sharee href names, or None when no known user matches."""
        value = value.strip()
        if value.lower().startswith("mailto:"):
            return self._by_email.get(unquote(value[7:]).strip().lower())
        if "/" in value or value.startswith(("http://", "https://")):
            try:
                path = resolve_path(href_path(value).partition("?")[0])  # '//' as a request's
            except PathRejected:
                return None
            match = self._principal.fullmatch(path)
            user = unquote(match.group("user")) if match else None
        else:
            user = value
        return user if user is not None and self.known(user) else None

    def display_name(self, user: str) -> str:
        entry = self._by_id.get(user)
        return entry.display_name if entry is not None and entry.display_name else user

    def email(self, user: str) -> str | None:
        entry = self._by_id.get(user)
        return entry.emails[0] if entry is not None and entry.emails else None
