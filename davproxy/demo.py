"""``davproxy demo``: a bundled Radicale with demo users, davproxy in front of it.

Everything lives in one folder (kept between runs): Radicale's configuration, data
and log, davproxy's configuration files and store, and the demo logins.  Radicale
listens on a free loopback port and trusts davproxy's ``X-Remote-User`` header;
davproxy checks the passwords (``proxy-auth`` mode).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from . import config as config_mod
from . import logs
from .embedded import EmbeddedError, start_radicale
from .identity import hash_password, random_password
from .server import StartupError, run_until_signal

DEMO_USERS = (
    ("alice", "Alice Example", "alice@example.org"),
    ("bob", "Bob Example", "bob@example.org"),
    ("carol", "Carol Example", "carol@example.org"),
)
# Each demo user starts with a calendar and an address book (Radicale creates them
# on the user's first request).
PREDEFINED = json.dumps(
    {
        "calendar": {
            "tag": "VCALENDAR",
            "D:displayname": "Calendar",
            "C:supported-calendar-component-set": "VEVENT,VTODO,VJOURNAL",
        },
        "contacts": {"tag": "VADDRESSBOOK", "D:displayname": "Contacts"},
    }
)


def _logins(folder: Path) -> dict[str, str]:
    """Demo passwords: made once, kept in logins.json (readable by the owner only)."""
    path = folder / "logins.json"
    if path.exists():
        return dict(json.loads(path.read_text(encoding="utf-8")))
    logins = {user: random_password() for user, _, _ in DEMO_USERS}
    path.write_text(json.dumps(logins, indent=2) + "\n", encoding="utf-8")
    os.chmod(path, 0o600)
    return logins


def write_demo_config(folder: Path, host: str, port: int, upstream_url: str) -> Path:
    logins = _logins(folder)
    htpasswd = folder / "users.htpasswd"
    htpasswd.write_text(
        "".join(f"{user}:{hash_password(logins[user])}\n" for user, _, _ in DEMO_USERS),
        encoding="utf-8",
    )
    os.chmod(htpasswd, 0o600)
    users = "".join(
        f'\n[[users]]\nid = "{user}"\nemails = ["{mail}"]\ndisplay_name = "{name}"\n'
        for user, name, mail in DEMO_USERS
    )
    (folder / "radicale-mapping.toml").write_text(
        'kind = "radicale"\n\n[identity]\nmode = "proxy-auth"\nhtpasswd = "users.htpasswd"\n'
        'trusted_header = "X-Remote-User"\n' + users,
        encoding="utf-8",
    )
    main = folder / "davproxy.toml"
    main.write_text(
        f'[server]\nhost = "{host}"\nport = {port}\n\n[store]\npath = "davproxy.sqlite3"\n\n'
        '[logging]\nlevel = "info"\n\n'
        f'[[upstream]]\nname = "radicale"\nprefix = "/"\nurl = "{upstream_url}"\n'
        'mapping = "radicale-mapping.toml"\n',
        encoding="utf-8",
    )
    return main


def run_demo(data: str, port: int, host: str) -> int:
    folder = Path(data).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        radicale = start_radicale(
            folder / "radicale", predefined_collections=PREDEFINED, log_level="warning"
        )
    except EmbeddedError as exc:
        raise StartupError(f"the bundled Radicale did not start: {exc}") from None
    try:
        main = write_demo_config(folder, host, port, radicale.url)
        config = config_mod.load(main)
        logs.setup(config.logging)
        logins = _logins(folder)

        def announce(bound_port: int) -> None:
            url = f"http://{host}:{bound_port}/"
            lines = [
                "",
                "davproxy demo is running",
                f"  CalDAV/CardDAV URL : {url}",
                *(f"  login              : {user} / {logins[user]}" for user, _, _ in DEMO_USERS),
                f"  data folder        : {folder}",
                f"  Radicale (upstream): {radicale.url} (log {radicale.log_path})",
                f"  try: curl -u alice:{logins['alice']} -X PROPFIND -H 'Depth: 1' {url}alice/",
                "  Ctrl-C stops davproxy and Radicale.",
                "",
            ]
            print("\n".join(lines), flush=True)

        asyncio.run(run_until_signal(config, announce))
    finally:
        radicale.stop()
    return 0
