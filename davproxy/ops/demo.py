"""``davproxy demo``: a bundled Radicale with demo users, davproxy in front of it.

Everything lives in one folder (kept between runs): Radicale's configuration, data
and log, davproxy's configuration files and store, the demo logins, and a sample feed.
Radicale listens on a free loopback port and trusts davproxy's ``X-Remote-User``
header; davproxy checks the passwords (``proxy-auth`` mode).  A small static web
server on loopback plays the origin of the sample feed (``feeds/team.ics``), which
davproxy serves as a syncable subscription; edit the file and run
``davproxy admin refresh`` to watch a client sync only the change.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import shlex
import shutil
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from davproxy import config as config_mod
from davproxy.edge import logs
from davproxy.edge.server import StartupError, run, run_until_signal
from davproxy.ops.embedded import EmbeddedError, start_radicale
from davproxy.upstream.identity import hash_password, random_password

DEMO_USERS = (
    ("alice", "Alice", "alice@example.org"),
    ("bob", "Bob", "bob@example.org"),
    ("carol", "Carol", "carol@example.org"),
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


def sample_feed(today: dt.date) -> str:
    """A small team calendar: a weekly stand-up, a few events around today."""

    def day(offset: int, hour: int, minute: int = 0) -> str:
        date = (today + dt.timedelta(days=offset)).strftime("%Y%m%d")
        return f"{date}T{hour:02d}{minute:02d}00Z"

    events = [
        ("standup@demo.davproxy", "Stand-up", day(-7, 9), day(-7, 9, 15),
         "RRULE:FREQ=WEEKLY;BYDAY=MO,WE,FR"),
        ("review@demo.davproxy", "Quarterly review", day(3, 13), day(3, 15), ""),
        ("offsite@demo.davproxy", "Team offsite", day(10, 8), day(11, 17), ""),
        ("release@demo.davproxy", "Release day", day(14, 10), day(14, 11), ""),
    ]  # fmt: skip
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//davproxy//demo//EN",
             "X-WR-CALNAME:Team (demo feed)", "REFRESH-INTERVAL;VALUE=DURATION:PT1H"]  # fmt: skip
    for uid, summary, start, end, rule in events:
        lines += ["BEGIN:VEVENT", f"UID:{uid}", f"DTSTAMP:{stamp}", f"DTSTART:{start}"]
        lines += [f"DTEND:{end}", f"SUMMARY:{summary}", *([rule] if rule else []), "END:VEVENT"]
    lines.append("END:VCALENDAR")
    return "\r\n".join(lines) + "\r\n"


def _repair_old_sample(sample: Path) -> None:
    """Earlier demos wrote the stand-up's end as ``DTEND:20261127T09001500Z`` (eight
    digits of time), which time-range queries cannot read: mend it in a kept folder."""
    data = sample.read_bytes()
    mended = re.sub(rb"^(DTEND:\d{8}T\d{2})00(\d{4}Z)(\r?)$", rb"\1\2\3", data, flags=re.M)
    if mended != data:
        sample.write_bytes(mended)


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass


def start_feed_origin(folder: Path, port: int = 0) -> ThreadingHTTPServer:
    """Serve ``folder`` on loopback (Last-Modified and 304s from the stdlib): on ``port``
    when it is free (so subscriptions made in one run still work in the next), else on
    any free port."""
    folder.mkdir(parents=True, exist_ok=True)
    sample = folder / "team.ics"
    if not sample.exists():
        sample.write_text(sample_feed(dt.date.today()), encoding="utf-8")
    else:
        _repair_old_sample(sample)
    handler = functools.partial(_QuietFiles, directory=str(folder))
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="demo-feed").start()
    return server


def write_demo_config(
    folder: Path, host: str, port: int, upstream_url: str, feed_origin: str = ""
) -> Path:
    logins = _logins(folder)
    htpasswd = folder / "users.htpasswd"
    demo_ids = {user for user, _, _ in DEMO_USERS}
    # Users added with `davproxy admin user add` stay; the demo users get their logins.
    kept = [
        line + "\n"
        for line in (htpasswd.read_text(encoding="utf-8") if htpasswd.exists() else "").splitlines()
        if line.strip() and line.partition(":")[0] not in demo_ids
    ]
    htpasswd.write_text(
        "".join(f"{user}:{hash_password(logins[user])}\n" for user, _, _ in DEMO_USERS)
        + "".join(kept),
        encoding="utf-8",
    )
    os.chmod(htpasswd, 0o600)
    users = "".join(
        f'\n[[users]]\nid = "{user}"\nemails = ["{mail}"]\ndisplay_name = "{name}"\n'
        for user, name, mail in DEMO_USERS
    )
    feeds = (
        f'\n[[feeds]]\nname = "team"\nurl = "{feed_origin}/team.ics"\nusers = ["*"]\n'
        if feed_origin
        else ""
    )
    (folder / "radicale-mapping.toml").write_text(
        'kind = "radicale"\n\n[identity]\nmode = "proxy-auth"\nhtpasswd = "users.htpasswd"\n'
        'trusted_header = "X-Remote-User"\n' + users + feeds,
        encoding="utf-8",
    )
    main = folder / "davproxy.toml"
    main.write_text(
        f'[server]\nhost = "{host}"\nport = {port}\n\n[store]\npath = "davproxy.sqlite3"\n\n'
        '[logging]\nlevel = "info"\n\n'
        # the demo's feed origin is on loopback, which davproxy refuses by default (SSRF)
        '[feeds]\nallow_networks = ["127.0.0.1/32"]\n\n'
        f'[[upstream]]\nname = "radicale"\nprefix = "/"\nurl = "{upstream_url}"\n'
        'mapping = "radicale-mapping.toml"\n',
        encoding="utf-8",
    )
    return main


def davproxy_command() -> str:
    """This davproxy as a shell command that works as printed, from any folder: plain
    ``davproxy`` when that is the one on the PATH, else the script's full path (after
    ``make demo`` it is ``.venv/bin/davproxy``), else ``python -m davproxy``."""
    script = Path(sys.executable).parent / "davproxy"
    found = shutil.which("davproxy")
    if script.exists():
        if found and Path(found).resolve() == script.resolve():
            return "davproxy"
        return shlex.quote(str(script.absolute()))
    return f"{shlex.quote(sys.executable)} -m davproxy"


def run_demo(data: str, port: int, host: str) -> int:
    folder = Path(data).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        radicale = start_radicale(
            folder / "radicale", predefined_collections=PREDEFINED, log_level="warning"
        )
    except EmbeddedError as exc:
        raise StartupError(f"the bundled Radicale did not start: {exc}") from None
    origin = start_feed_origin(folder / "feeds", port + 1 if 0 < port < 65535 else 0)
    try:
        feed_origin = f"http://127.0.0.1:{origin.server_address[1]}"
        main = write_demo_config(folder, host, port, radicale.url, feed_origin)
        config = config_mod.load(main)
        logs.setup(config.logging)
        logins = _logins(folder)

        def announce(bound_port: int) -> None:
            url = f"http://{host}:{bound_port}/"
            lines = [
                "",
                "davproxy demo is running",
                f"  CalDAV/CardDAV URL : {url}",
                f"  sharing web page   : {url}.davproxy/web/ (share, invitations, subscriptions)",
                *(f"  login              : {user} / {logins[user]}" for user, _, _ in DEMO_USERS),
                f"  data folder        : {folder}",
                f"  Radicale (upstream): {radicale.url} (log {radicale.log_path})",
                f"  try: curl -u alice:{logins['alice']} -X PROPFIND -H 'Depth: 1' {url}alice/",
                f"  subscription (CalDAV, read-only): {url}.davproxy/feeds/team/",
                f"  the same as one feed (.ics)     : {url}.davproxy/feeds/team.ics",
                f"  its origin: {feed_origin}/team.ics, the file {folder / 'feeds' / 'team.ics'}",
                "    — edit it (or add .ics files beside it), then run",
                f"    {davproxy_command()} admin -c {shlex.quote(str(main))} refresh team",
                "  for the README's examples, paste into another shell:",
                "    export "
                + " ".join(
                    f"{name}={shlex.quote(value)}"
                    for name, value in (
                        ("DAV", url.rstrip("/")),
                        *((user.upper(), f"{user}:{logins[user]}") for user, _, _ in DEMO_USERS),
                        ("FEEDS", feed_origin),
                        ("DEMO", str(folder)),
                    )
                ),
                "  Ctrl-C stops davproxy and Radicale.",
                "",
            ]
            print("\n".join(lines), flush=True)

        run(run_until_signal(config, announce))
    finally:
        origin.shutdown()
        radicale.stop()
    return 0
