"""The deployment examples under examples/ work as their READMEs say.

Each runnable example (Radicale proxy-auth, Radicale upstream-basic, Xandikos) is
copied to a temporary folder, its fixed ports are swapped for free ones, the upstream
is started exactly as documented (from the example folder, relative paths), davproxy
runs on the example's davproxy.toml, and a share goes round through davproxy: alice
creates a calendar and shares it read-write with bob, bob accepts (IETF reply), writes
an event through his copy, alice reads it. The TLS fronts and systemd units get
string checks, and a syntax check where nginx, Caddy or systemd-analyze is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from davproxy.__main__ import main as davproxy_cli
from davproxy.ops import davical
from davproxy.ops.embedded import ServerProcess, _spawn, free_port, start_davproxy
from davproxy.upstream.identity import Htpasswd
from tests.helpers import Answer, Endpoint, basic, fetch, raw_session

from .conftest import Pair
from .test_sharing import SHARING, Client, accept_latest, event, propfind, share_body

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RUNNABLE = ("radicale-proxy-auth", "radicale-upstream-basic", "xandikos")
# The demo logins documented in the examples' READMEs.
DEMO = {"alice": "alice-demo", "bob": "bob-demo", "carol": "carol-demo"}
SERVICE = ("davproxy-service", "service-demo")

# The fixed ports the examples use, as they are written in the files.
RADICALE_PORT = "127.0.0.1:5232"
XANDIKOS_PORTS = ("127.0.0.1:8090", "-p 8090")
DAVPROXY_PORT = "port = 8080"


class DemoClient(Client):
    """A demo user talking to davproxy with the example's documented password."""

    async def __call__(
        self, method: str, path: str, body: str | None = None, **headers: str
    ) -> Answer:
        headers.setdefault("Authorization", basic(self.user, DEMO[self.user])["Authorization"])
        return await super().__call__(method, path, body, **headers)


def copy_example(
    name: str, tmp_path: Path, replacements: dict[str, str], edit: Callable[[Path], None] | None
) -> Path:
    """The example in a fresh folder, every placeholder replaced (each must occur)."""
    folder = tmp_path / name
    shutil.copytree(EXAMPLES / name, folder, ignore=shutil.ignore_patterns("data", "*.log"))
    found = dict.fromkeys(replacements, 0)
    for path in folder.iterdir():
        text = path.read_text(encoding="utf-8")
        for old, new in replacements.items():
            found[old] += text.count(old)
            text = text.replace(old, new)
        path.write_text(text, encoding="utf-8")
    assert all(found.values()), f"{name}: placeholders not found: {found}"
    if edit:
        edit(folder)
    return folder


def start_upstream(
    name: str, folder: Path, port: int, monkeypatch: pytest.MonkeyPatch
) -> ServerProcess:
    """The upstream exactly as the example's README starts it."""
    if name == "xandikos":  # ./run-xandikos.sh, with PYTHON naming the interpreter
        monkeypatch.setenv("PYTHON", sys.executable)
        argv = [str(folder / "run-xandikos.sh")]
    else:  # from the example folder: python -m radicale --config radicale.ini
        monkeypatch.chdir(folder)
        argv = [sys.executable, "-m", "radicale", "--config", "radicale.ini"]
    server = _spawn(name.split("-")[0], argv, folder, "127.0.0.1", port)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def running_example(
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    edit: Callable[[Path], None] | None = None,
) -> Iterator[tuple[Pair, Path]]:
    upstream_port, proxy_port = free_port(), free_port()
    replacements = {DAVPROXY_PORT: f"port = {proxy_port}"}
    if name == "xandikos":
        replacements |= {
            XANDIKOS_PORTS[0]: f"127.0.0.1:{upstream_port}",
            XANDIKOS_PORTS[1]: f"-p {upstream_port}",
        }
        homes = ("/alice/calendars/", "/alice/contacts/")
    else:
        replacements[RADICALE_PORT] = f"127.0.0.1:{upstream_port}"
        homes = ("/alice/", "/alice/")
    folder = copy_example(name, tmp_path, replacements, edit)
    with ExitStack() as stack:
        upstream = stack.enter_context(start_upstream(name, folder, upstream_port, monkeypatch))
        proxy = stack.enter_context(start_davproxy(folder / "davproxy.toml", port=proxy_port))
        pair = Pair(name, Endpoint(upstream.url), Endpoint(proxy.url), *homes, upstream, proxy)
        try:
            yield pair, folder
        except BaseException:
            print(
                f"--- {upstream.name} log\n{upstream.log_tail()}\n--- davproxy log\n{proxy.log_tail()}"
            )
            raise


async def share_round(pair: Pair) -> tuple[str, str]:
    """alice shares a new calendar read-write with bob; bob accepts, writes; alice reads.

    Returns the paths of alice's calendar and of bob's copy."""
    owner_cal = f"{pair.calendar_home}team-{uuid.uuid4().hex[:6]}/"
    async with raw_session() as session:
        alice, bob = DemoClient(session, pair, "alice"), DemoClient(session, pair, "bob")
        wrong = await alice(
            "PROPFIND", "/alice/", Depth="0", Authorization=basic("alice", "nope")["Authorization"]
        )
        assert wrong.status == 401
        assert (await alice("MKCALENDAR", owner_cal)).status == 201
        # bob's principal and homes come to exist upstream
        assert (await bob("PROPFIND", "/bob/", propfind("D:displayname"), Depth="0")).status == 207

        shared = await alice(
            "POST", owner_cal, share_body(("mailto:bob@example.org", "read-write")), **SHARING
        )
        assert shared.status == 204, shared.body
        copy = await accept_latest(bob)
        assert copy.startswith(pair.calendar_home.replace("alice", "bob")), copy

        put = await bob(
            "PUT", copy + "from-bob.ics", event("from-bob", "Bob's"), Content_Type="text/calendar"
        )
        assert put.status == 201, put.body
        seen = await alice("GET", owner_cal + "from-bob.ics")
        assert seen.status == 200 and b"SUMMARY:Bob's" in seen.body
    return owner_cal, copy


@pytest.mark.parametrize("name", RUNNABLE)
async def test_example_share_round(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_example(name, tmp_path, monkeypatch) as (pair, folder):
        await share_round(pair)
    # relative paths: everything the servers wrote is inside the example's data/
    assert (folder / "data" / "davproxy.sqlite3").exists()
    assert (folder / "data" / name.split("-")[0]).is_dir()


def enable_radicale_native(folder: Path) -> None:
    """The commented option of radicale-proxy-auth, switched on as its README says."""
    ini = folder / "radicale.ini"
    text, count = re.subn(r"^#(?=\S)", "", ini.read_text(encoding="utf-8"), flags=re.M)
    assert count == 5 and "\n[sharing]\ntype = csv\n" in text
    ini.write_text(text, encoding="utf-8")
    mapping = folder / "radicale.mapping.toml"
    text = mapping.read_text(encoding="utf-8")
    assert 'backend = "proxy-enforced"' in text
    mapping.write_text(
        text.replace('backend = "proxy-enforced"', 'backend = "radicale-native"'), encoding="utf-8"
    )


async def test_radicale_native_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = running_example("radicale-proxy-auth", tmp_path, monkeypatch, enable_radicale_native)
    with example as (pair, folder):
        owner_cal, copy = await share_round(pair)
        # Radicale itself enforces the share: bob reaching it directly (named the way
        # davproxy names him) reads alice's event through his copy.
        async with raw_session() as session:
            direct = await fetch(
                session, "GET", pair.direct.url(copy + "from-bob.ics"), {"X-Remote-User": "bob"}
            )
        assert direct.status == 200 and b"SUMMARY:Bob's" in direct.body
    shares = (folder / "data" / "radicale" / "sharing.csv").read_text(encoding="utf-8")
    assert f"map;{copy};{owner_cal};none;alice;bob;rw;" in shares, shares


async def test_feed_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commented [[feeds]] of radicale-proxy-auth, switched on with a local origin:
    served to alice, listed and refreshed by the admin CLI on the example's config."""
    from tests.feed_origin import Origin, calendar
    from tests.feed_origin import event as feed_event

    origin = Origin()
    origin.serve("/holidays.ics", calendar(feed_event("new-year@x", "New Year")))

    def enable_feed(folder: Path) -> None:
        mapping = folder / "radicale.mapping.toml"
        text, count = re.subn(
            r"^#(?=\[\[feeds|name|url|users)", "", mapping.read_text(), flags=re.M
        )
        assert count == 4
        mapping.write_text(text.replace("https://www.example.org", origin.base))
        main = folder / "davproxy.toml"  # the origin is on loopback, refused by default
        main.write_text(
            main.read_text().replace(
                "\n[[upstream]]", '\n[feeds]\nallow_networks = ["127.0.0.1/32"]\n\n[[upstream]]'
            )
        )

    with (
        origin.running(),
        running_example("radicale-proxy-auth", tmp_path, monkeypatch, enable_feed) as (pair, f),
    ):
        refreshed = subprocess.run(
            [sys.executable, "-m", "davproxy", "admin", "-c", str(f / "davproxy.toml"), "refresh"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        async with raw_session() as session:
            alice = basic("alice", "alice-demo")
            feed = await fetch(
                session, "GET", pair.proxy.url("/.davproxy/feeds/holidays.ics"), alice
            )
        listed = subprocess.run(
            [sys.executable, "-m", "davproxy", "admin", "-c", str(f / "davproxy.toml"), "feeds"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert refreshed.returncode == 0, refreshed.stdout + refreshed.stderr
    assert feed.status == 200 and b"SUMMARY:New Year" in feed.body
    assert "holidays" in listed.stdout and " ok " in listed.stdout


@pytest.mark.parametrize("name", RUNNABLE)
def test_check_config(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    had_data = (EXAMPLES / name / "data").exists()  # an example run by hand in place
    assert davproxy_cli(["check-config", "--config", str(EXAMPLES / name / "davproxy.toml")]) == 0
    assert "configuration OK" in capsys.readouterr().err
    assert (EXAMPLES / name / "data").exists() == had_data  # checking writes nothing


def test_demo_passwords_match_the_readmes() -> None:
    for path in (
        EXAMPLES / "radicale-proxy-auth" / "users.htpasswd",
        EXAMPLES / "radicale-upstream-basic" / "radicale.users",
        EXAMPLES / "xandikos" / "users.htpasswd",
    ):
        assert path.read_text().startswith("alice:$2b$"), path  # bcrypt
        users = Htpasswd(path)
        for user, password in DEMO.items():
            assert users.verify(user, password), (path, user)
            assert f"`{password}`" in (path.parent / "README.md").read_text()
    basic_example = EXAMPLES / "radicale-upstream-basic"
    assert (basic_example / "service.password").read_text().strip() == SERVICE[1]
    assert Htpasswd(basic_example / "radicale.users").verify(*SERVICE)


def test_every_example_has_a_readme() -> None:
    for name in (*RUNNABLE, "tls-front", "systemd"):
        readme = EXAMPLES / name / "README.md"
        assert readme.read_text(encoding="utf-8").startswith("# "), readme
        assert "production" in readme.read_text(encoding="utf-8").lower(), readme


def test_tls_fronts_pass_what_davproxy_expects() -> None:
    nginx = (EXAMPLES / "tls-front" / "nginx.conf").read_text(encoding="utf-8")
    for line in (
        "server 127.0.0.1:8080;",
        "proxy_pass http://davproxy;",
        "proxy_set_header Host              $http_host;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Forwarded-Host  $http_host;",
        "proxy_set_header X-Forwarded-For   $remote_addr;",
        "proxy_request_buffering off;",
        "proxy_buffering off;",
        "client_max_body_size 0;",
        "location = /.well-known/caldav ",
        "location = /.well-known/carddav ",
        'forwarded_allow_ips = ["127.0.0.1"]',
    ):
        assert line in nginx, line
    caddy = (EXAMPLES / "tls-front" / "Caddyfile").read_text(encoding="utf-8")
    for line in (
        "reverse_proxy 127.0.0.1:8080 {",
        "flush_interval -1",
        "redir /.well-known/caldav / 301",
        "redir /.well-known/carddav / 301",
        "X-Forwarded-Proto",  # Caddy's defaults, documented in place
        "X-Forwarded-Host",
        "X-Forwarded-For",
        'forwarded_allow_ips = ["127.0.0.1"]',
    ):
        assert line in caddy, line


def test_systemd_units_are_hardened() -> None:
    units = {
        name: (EXAMPLES / "systemd" / f"{name}.service").read_text(encoding="utf-8")
        for name in ("davproxy", "radicale")
    }
    for name, unit in units.items():
        for line in (
            "ProtectSystem=strict",
            f"ReadWritePaths=/var/lib/{name}",
            f"StateDirectory={name}",
            "NoNewPrivileges=yes",
            "Restart=on-failure",
            f"User={name}",
        ):
            assert f"\n{line}\n" in unit, (name, line)
    assert "\nAfter=network.target radicale.service\n" in units["davproxy"]
    assert "\nWants=radicale.service\n" in units["davproxy"]
    assert "davproxy serve --config /etc/davproxy/davproxy.toml\n" in units["davproxy"]


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, **kwargs)  # type: ignore[call-overload]


@pytest.mark.skipif(not shutil.which("nginx") or not shutil.which("openssl"), reason="no nginx")
def test_nginx_accepts_the_front(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    made = _run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-subj", "/CN=dav.example.org", "-days", "1", "-keyout", str(key), "-out", str(cert)])  # fmt: skip
    assert made.returncode == 0, made.stderr
    site = (EXAMPLES / "tls-front" / "nginx.conf").read_text(encoding="utf-8")
    site = site.replace("/etc/letsencrypt/live/dav.example.org/fullchain.pem", str(cert))
    site = site.replace("/etc/letsencrypt/live/dav.example.org/privkey.pem", str(key))
    (tmp_path / "site.conf").write_text(site, encoding="utf-8")
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{ access_log off; include {tmp_path}/site.conf; }}\n",
        encoding="utf-8",
    )
    checked = _run(["nginx", "-t", "-c", str(tmp_path / "nginx.conf")])
    assert checked.returncode == 0, checked.stderr


@pytest.mark.skipif(not shutil.which("caddy"), reason="no caddy")
def test_caddy_accepts_the_front(tmp_path: Path) -> None:
    checked = _run(
        [
            str(shutil.which("caddy")),
            "validate",
            "--config",
            str(EXAMPLES / "tls-front" / "Caddyfile"),
            "--adapter",
            "caddyfile",
        ],
        env={
            "HOME": str(tmp_path),
            "XDG_DATA_HOME": str(tmp_path),
            "XDG_CONFIG_HOME": str(tmp_path),
        },
    )
    assert checked.returncode == 0, checked.stderr
    assert '"level":"warn"' not in checked.stderr, checked.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze")
def test_systemd_analyze_accepts_the_units() -> None:
    units = [str(EXAMPLES / "systemd" / f"{n}.service") for n in ("radicale", "davproxy")]
    checked = _run(["systemd-analyze", "verify", *units])
    # Only the installation paths of the README may be missing on this machine.
    complaints = [
        line
        for line in checked.stderr.splitlines()
        if line and "/opt/davproxy/venv/bin/" not in line
    ]
    assert not complaints, checked.stderr


async def test_davical_example(tmp_path: Path, davical_server: davical.DavicalServer) -> None:
    """examples/davical on the tests' DAViCal: its header trust is the very PHP the
    embedded DAViCal runs, and a share goes round with DAViCal enforcing it (acl)."""
    php = (EXAMPLES / "davical" / "davical-conf.php").read_text(encoding="utf-8")
    basic = davical.php_config(davical_server.cluster, None)
    trust = davical.php_config(davical_server.cluster, "X-Remote-User")[len(basic) :]

    def statements(text: str) -> str:  # PHP without comments and white space
        return "".join(re.sub(r"//[^\n]*", "", text).split())

    assert trust and statements(trust) in statements(php), trust
    apache = (EXAMPLES / "davical" / "apache-davical.conf").read_text(encoding="utf-8")
    assert "Listen 127.0.0.1:8081" in apache and "ServerName 127.0.0.1:8081" in apache
    port = free_port()
    folder = copy_example(
        "davical", tmp_path,
        {DAVPROXY_PORT: f"port = {port}", "http://127.0.0.1:8081/caldav.php/": davical_server.trusted_url},
        None,
    )  # fmt: skip
    with start_davproxy(folder / "davproxy.toml", port=port) as proxy:
        direct = Endpoint(davical_server.trusted_url)
        pair = Pair("davical", direct, Endpoint(proxy.url), "/alice/", "/alice/", proxy, proxy)
        owner_cal, _ = await share_round(pair)
        async with raw_session() as session:  # DAViCal itself lets bob write there
            put = await fetch(
                session, "PUT", direct.url(owner_cal + "direct.ics"),
                {"X-Remote-User": "bob", "Content-Type": "text/calendar"}, event("direct"),
            )  # fmt: skip
            assert put.status == 201, put.body
            put = await fetch(
                session, "PUT", direct.url(owner_cal + "carol.ics"),
                {"X-Remote-User": "carol", "Content-Type": "text/calendar"}, event("carol"),
            )  # fmt: skip
            assert put.status == 403
