"""DAViCal as an embedded upstream (tests, examples): Debian's package, started on loopback.

One private PostgreSQL cluster (``ops/postgres.py``) holds DAViCal's database; one
Apache (prefork + mod_php, DAViCal's supported set-up: ``php -S`` answers ``ACL`` and
``BIND`` with 501) serves it on two loopback ports:

- ``url``: DAViCal checks its own passwords (Basic): davproxy's ``upstream-basic`` mode;
- ``trusted_url``: DAViCal believes the ``X-Remote-User`` header (its
  ``authenticate_hook['server_auth_type']``): davproxy's ``proxy-auth`` mode.  Anyone
  reaching that port can be anyone: loopback only.

DAViCal finds its configuration only at fixed paths (``always.php``): the one file it
needs outside the folder, ``/etc/davical/127.0.0.1-conf.php``, includes the file each
virtual host names in ``SetEnv DAVICAL_CONF``.  ``.ci/install-davical`` installs the
packages and that file; :func:`start_davical` writes it too when it can.  Users are
created with SQL (DAViCal 1.1.12 has no command for it) with a password, a calendar
``calendar/`` and an address book ``addresses/`` in their home ``/caldav.php/<user>/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from davproxy.ops import postgres
from davproxy.ops.embedded import EmbeddedError, ServerProcess, free_port
from davproxy.ops.postgres import PostgresCluster

HTDOCS = Path("/usr/share/davical/htdocs")
CREATE_DATABASE = Path("/usr/share/davical/dba/create-database.sh")
APACHE = Path("/usr/sbin/apache2")
APACHE_MODULES = Path("/usr/lib/apache2/modules")
DISPATCHER = Path("/etc/davical/127.0.0.1-conf.php")
DISPATCHER_TEXT = """<?php
// davproxy's embedded DAViCal (davproxy/ops/davical.py): each Apache virtual host names
// its own configuration in SetEnv DAVICAL_CONF; without it, the packaged config.php.
$davical_conf = !empty($_SERVER['DAVICAL_CONF'])
  ? $_SERVER['DAVICAL_CONF'] : getenv('DAVICAL_CONF');
if ( $davical_conf ) include($davical_conf); else include('/etc/davical/config.php');
"""
# DAViCal's bit for every privilege but the scheduling ones it shows nowhere: the
# default a user created in its admin pages gets (read-free-busy + schedule-deliver).
DEFAULT_PRIVILEGES = "000000000001111000000000"


def unavailable() -> str | None:
    """Why DAViCal cannot be started here (then tests skip saying so), or None."""
    for path in (HTDOCS, CREATE_DATABASE, APACHE, APACHE_MODULES / "libphp8.2.so"):
        if not path.exists():
            return f"DAViCal is not installed ({path} missing; run .ci/install-davical as root)"
    reason = postgres.unavailable()
    if reason is not None:
        return reason
    if not DISPATCHER.exists() and os.geteuid() != 0:
        return f"{DISPATCHER} is missing (run .ci/install-davical as root)"
    if os.geteuid() != 0:
        return "DAViCal's Apache runs its workers as www-data: the embedded set-up needs root"
    return None


@dataclass
class DavicalServer:
    folder: Path
    cluster: PostgresCluster
    apache: ServerProcess
    port: int
    trusted_port: int
    admin_password: str

    @property
    def url(self) -> str:
        """DAViCal's root checking Basic credentials (davproxy upstream-basic)."""
        return f"http://127.0.0.1:{self.port}/caldav.php/"

    @property
    def trusted_url(self) -> str:
        """DAViCal's root believing X-Remote-User (davproxy proxy-auth)."""
        return f"http://127.0.0.1:{self.trusted_port}/caldav.php/"

    def sql(self, sql: str) -> str:
        """Run SQL in DAViCal's database as its owner; the rows, one a line."""
        return self.cluster.psql("davical", sql, user="davical_dba")

    def add_user(self, user: str, password: str, *, admin: bool = False) -> None:
        """A DAViCal user with a calendar and an address book in their home."""
        quoted = {k: v.replace("'", "''") for k, v in {"u": user, "p": password}.items()}
        u, p = quoted["u"], quoted["p"]
        self.sql(
            "INSERT INTO dav_principal (username, password, fullname, email, type_id,"
            " user_active, date_format_type, default_privileges)"
            f" VALUES ('{u}', '**{p}', '{u}', '{u}@example.test', 1, true, 'E',"
            f" '{DEFAULT_PRIVILEGES}');\n"
            "INSERT INTO collection (user_no, parent_container, dav_name, dav_etag,"
            " dav_displayname, is_calendar, is_addressbook, created, modified, resourcetypes)"
            " SELECT user_no, '/' || username || '/', '/' || username || '/' || c.name || '/',"
            " '-1', fullname || c.suffix, c.cal, NOT c.cal, now(), now(), c.rt"
            " FROM usr, (VALUES ('calendar', ' calendar', true,"
            " '<DAV::collection/><urn:ietf:params:xml:ns:caldav:calendar/>'),"
            " ('addresses', ' address book', false,"
            " '<DAV::collection/><urn:ietf:params:xml:ns:carddav:addressbook/>'))"
            f" AS c(name, suffix, cal, rt) WHERE username = '{u}';\n"
        )
        if admin:
            self.sql(
                "INSERT INTO role_member (role_no, user_no) SELECT 1, user_no FROM usr"
                f" WHERE username = '{u}';"
            )

    def stop(self) -> None:
        self.apache.stop()
        self.cluster.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> DavicalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def php_config(cluster: PostgresCluster, trusted_header: str | None) -> str:
    """DAViCal's configuration for one virtual host (examples/davical/davical-conf.php
    holds the same header trust)."""
    lines = [
        "<?php",
        f"$c->pg_connect[] = 'dbname=davical user=davical_app host={cluster.socket_dir}"
        f" port={cluster.port}';",
        "$c->system_name = 'DAViCal';  // also the Basic realm",
        "$c->hide_TODO = false;  // else VTODOs vanish from what sharees see",
        "$c->admin_email = 'admin@example.test';",
    ]
    if trusted_header:
        key = "HTTP_" + trusted_header.upper().replace("-", "_")
        lines += [
            f"if ( !empty($_SERVER['{key}']) ) {{",
            f"  $_SERVER['REMOTE_USER'] = $_SERVER['{key}'];",
            "  $_SERVER['AUTH_TYPE'] = 'ProxyHeader';",
            "  unset($_SERVER['AUTHORIZATION'], $_SERVER['HTTP_AUTHORIZATION'],"
            " $_SERVER['PHP_AUTH_USER'], $_SERVER['PHP_AUTH_PW']);",
            "}",
            "$c->authenticate_hook['server_auth_type'] = 'ProxyHeader';",
            "include_once('AuthPlugins.php');  // auth_external: the header's user, no password",
        ]
    return "\n".join(lines) + "\n"


def _apache_config(folder: Path, port: int, trusted_port: int) -> str:
    modules = ("mpm_prefork", "authz_core", "mime", "dir", "env")
    loads = [f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so" for m in modules]
    loads.append(f"LoadModule php_module {APACHE_MODULES}/libphp8.2.so")
    hosts = []
    for listen, conf in ((port, "basic.php"), (trusted_port, "trusted.php")):
        hosts += [
            f"Listen 127.0.0.1:{listen}",
            f"<VirtualHost 127.0.0.1:{listen}>",
            f"  ServerName 127.0.0.1:{listen}",  # DAViCal builds absolute hrefs from it
            f"  SetEnv DAVICAL_CONF {folder / conf}",
            "</VirtualHost>",
        ]
    return "\n".join(
        [
            f"ServerRoot {folder}",
            f"DefaultRuntimeDir {folder / 'run'}",
            f"PidFile {folder / 'run' / 'apache.pid'}",
            f"Mutex file:{folder / 'run'} default",
            "ServerName 127.0.0.1",
            "UseCanonicalName On",
            "User www-data",
            "Group www-data",
            f"ErrorLog {folder / 'apache-error.log'}",
            'LogFormat "%h %u \\"%r\\" %>s %b %D" tiny',
            f"CustomLog {folder / 'apache-access.log'} tiny",
            *loads,
            "StartServers 2",
            "MaxRequestWorkers 8",
            "KeepAlive On",
            "TypesConfig /etc/mime.types",
            f"DocumentRoot {HTDOCS}",
            f"<Directory {HTDOCS}>",
            "  Require all granted",
            "  AllowOverride None",
            "  DirectoryIndex index.php",
            "</Directory>",
            '<FilesMatch "\\.php$">',
            "  SetHandler application/x-httpd-php",
            "</FilesMatch>",
            *hosts,
            "",
        ]
    )


def _ready(server: DavicalServer, user: str, password: str, timeout: float = 20.0) -> None:
    """Wait until DAViCal answers an authenticated PROPFIND with 207."""
    manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    manager.add_password(None, server.url, user, password)
    opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(manager))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.apache.process.poll() is not None:
            break
        request = urllib.request.Request(
            server.url + f"{user}/", method="PROPFIND", headers={"Depth": "0"}
        )
        try:
            with opener.open(request, timeout=2) as answer:
                if answer.status == 207:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    tail = (server.folder / "apache-error.log").read_text(errors="replace")[-2000:]
    server.stop()
    raise EmbeddedError(f"DAViCal did not answer within {timeout:.0f} s; Apache log:\n{tail}")


def start_davical(
    users: Mapping[str, str],
    *,
    admin_password: str = "admin-pw",
    trusted_header: str = "X-Remote-User",
) -> DavicalServer:
    """A fresh DAViCal with ``users`` (id -> password) and an ``admin`` (all privileges).

    Its state lives in a new folder under the system temp dir (PHP runs as www-data,
    which cannot enter a private test folder), removed by ``stop``."""
    reason = unavailable()
    if reason is not None:
        raise EmbeddedError(reason)
    if not DISPATCHER.exists():
        DISPATCHER.write_text(DISPATCHER_TEXT, encoding="utf-8")
    folder = Path(tempfile.mkdtemp(prefix="davproxy-davical-"))
    folder.chmod(0o755)
    (folder / "run").mkdir()
    cluster = postgres.start_postgres(folder / "pg")
    try:
        cluster.run(["sh", str(CREATE_DATABASE), "davical", admin_password])
        port, trusted_port = free_port(), free_port()
        (folder / "basic.php").write_text(php_config(cluster, None), encoding="utf-8")
        (folder / "trusted.php").write_text(php_config(cluster, trusted_header), encoding="utf-8")
        conf = folder / "httpd.conf"
        conf.write_text(_apache_config(folder, port, trusted_port), encoding="utf-8")
        log_path = folder / "apache-stdout.log"
        with log_path.open("ab") as log_file:
            # its own session: Apache's shutdown signals its whole process group
            process = subprocess.Popen(
                [str(APACHE), "-f", str(conf), "-DFOREGROUND"],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
    except BaseException:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    apache = ServerProcess("davical", process, "127.0.0.1", port, folder, log_path)
    server = DavicalServer(folder, cluster, apache, port, trusted_port, admin_password)
    try:
        for user, password in users.items():
            server.add_user(user, password)
    except BaseException:
        server.stop()
        raise
    first = next(iter(users.items()), ("admin", admin_password))
    _ready(server, *first)
    return server
