"""``[store]``: where davproxy keeps its state — a SQLite file (the default, one host)
or a PostgreSQL database (several processes or hosts, ``url``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from davproxy.config.tables import Secret, Table, resolve

_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: Path | None = None  # SQLite
    url: str | None = None  # PostgreSQL, without a password
    password: Secret | None = None  # password_file / password_env

    @property
    def location(self) -> str | Path:
        if self.url is not None:
            return self.url
        assert self.path is not None
        return self.path

    def reveal_password(self) -> str | None:
        return None if self.password is None else self.password.reveal()


def load_store(table: Table, source: Path) -> StoreConfig:
    url = table.text("url")
    path = table.text("path")
    password = table.secret("password")
    table.finish()
    if url is None:
        if password is not None:
            raise table.error("password_file", "is for url (PostgreSQL); a SQLite path has none")
        return StoreConfig(path=resolve(source, path or "davproxy.sqlite3"))
    if path is not None:
        raise table.error("url", "give either path (SQLite) or url (PostgreSQL), not both")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise table.error("url", f"is not a URL: {exc}") from None
    if parts.scheme not in _SCHEMES:
        raise table.error(
            "url", f"must be a postgresql:// URL (SQLite takes path); got {parts.scheme!r}"
        )
    if parts.password is not None:
        raise table.error(
            "url",
            "holds a password: inline secrets are refused; use password_file or "
            "password_env (or libpq's ~/.pgpass)",
        )
    return StoreConfig(url=url, password=password)
