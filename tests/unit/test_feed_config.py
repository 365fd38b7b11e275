"""Feed settings in the configuration: the main file's [feeds] and mapping files' [[feeds]]."""

from __future__ import annotations

from pathlib import Path

import pytest

from davproxy import config
from davproxy.config import FeedConfig, FeedsConfig, feed_url

MAPPING = 'kind = "radicale"\n[identity]\nmode = "upstream-basic"\n'


def write(tmp_path: Path, feeds: str = "", mapping_feeds: str = "") -> Path:
    """A main file (``feeds``: its [feeds] table body) and a mapping (``mapping_feeds``)."""
    (tmp_path / "m.toml").write_text(MAPPING + mapping_feeds)
    main = tmp_path / "main.toml"
    table = f"[feeds]\n{feeds}\n" if feeds else ""
    main.write_text(
        f'{table}[[upstream]]\nname = "u"\nurl = "http://127.0.0.1:5232"\nmapping = "m.toml"\n'
    )
    return main


def load_feeds(tmp_path: Path, *tables: str) -> tuple[FeedConfig, ...]:
    body = "".join(f"\n[[feeds]]\n{t}\n" for t in tables)
    return config.load(write(tmp_path, mapping_feeds=body)).upstreams[0].feeds


def error(tmp_path: Path, feeds: str = "", mapping_feeds: str = "") -> str:
    with pytest.raises(config.ConfigError) as caught:
        config.load(write(tmp_path, feeds, mapping_feeds))
    return str(caught.value)


# --- [feeds] ----------------------------------------------------------------------------------


def test_feeds_defaults(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path))
    assert cfg.feeds == FeedsConfig()
    assert cfg.feeds.allow_networks == ()  # nothing private is reachable by default
    assert cfg.feeds.max_bytes == 20 * 1024 * 1024
    assert cfg.feeds.fetch_timeout == 30.0
    assert cfg.feeds.max_redirects == 5
    assert (cfg.feeds.refresh_floor, cfg.feeds.refresh_default, cfg.feeds.refresh_ceiling) == (
        900,
        3600,
        86400,
    )
    assert cfg.feeds.jitter == 0.1 and cfg.feeds.retry_base == 60
    assert cfg.upstreams[0].feeds == ()
    # an empty [feeds] table is the same as none
    assert config.load(write(tmp_path, "# nothing\n")).feeds == FeedsConfig()


def test_feeds_settings_are_read(tmp_path: Path) -> None:
    cfg = config.load(
        write(
            tmp_path,
            'allow_networks = ["127.0.0.0/8", "::1", "10.0.0.0/8"]\n'
            "max_bytes = 2048\nfetch_timeout = 2.5\nmax_redirects = 0\n"
            "refresh_default = 600\nrefresh_floor = 60\nrefresh_ceiling = 60\n"
            "jitter = 0\nretry_base = 5\ntombstone_days = 0.5\n"
            'max_subscriptions_per_user = 0\nuser_agent = "test-agent/1"\n',
        )
    )
    assert cfg.feeds == FeedsConfig(
        allow_networks=("127.0.0.0/8", "::1", "10.0.0.0/8"),
        max_bytes=2048,
        fetch_timeout=2.5,
        max_redirects=0,
        refresh_default=600,
        refresh_floor=60,
        refresh_ceiling=60,
        jitter=0.0,
        retry_base=5,
        tombstone_days=0.5,
        max_subscriptions_per_user=0,
        user_agent="test-agent/1",
    )
    assert isinstance(cfg.feeds.jitter, float)


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        (
            "refresh_floor = 3600\nrefresh_ceiling = 600",
            "[feeds] refresh_ceiling: must be >= refresh_floor (3600)",
        ),
        ("refresh_ceiling = 600", "[feeds] refresh_ceiling: must be >= refresh_floor (900)"),
        ("jitter = 1.5", "[feeds] jitter: must be between 0 and 1; got 1.5"),
        ("jitter = -0.1", "[feeds] jitter: must be > "),
        (
            'allow_networks = ["127.0.0.0/8", "intranet"]',
            "[feeds] allow_networks: not an IP network: 'intranet'",
        ),
        ('allow_networks = ["10.0.0.0/33"]', "[feeds] allow_networks: not an IP network"),
        ('allow_networks = "127.0.0.0/8"', "[feeds] allow_networks: must be a list of strings"),
        ("max_bytes = 100", "[feeds] max_bytes: must be >= 1024; got 100"),
        ("max_redirects = 21", "[feeds] max_redirects: must be between 0 and 20; got 21"),
        ("fetch_timeout = 0", "[feeds] fetch_timeout: must be > 0.0"),
        ('fetch_timeout = "30"', "[feeds] fetch_timeout: must be a number"),
        ("refresh_floor = 0", "[feeds] refresh_floor: must be >= 1; got 0"),
        ("retry_base = true", "[feeds] retry_base: must be an integer, got True"),
        ("max_subscriptions_per_user = -1", "[feeds] max_subscriptions_per_user: must be >= 0"),
        ("refresh_intervall = 60", "[feeds] refresh_intervall: unknown key"),
    ],
)
def test_feeds_validation(tmp_path: Path, feeds: str, message: str) -> None:
    text = error(tmp_path, feeds=feeds)
    assert message in text
    assert str(tmp_path / "main.toml") in text


def test_feeds_must_be_a_table(tmp_path: Path) -> None:
    main = write(tmp_path)
    main.write_text('feeds = "yes"\n' + main.read_text())
    with pytest.raises(config.ConfigError, match=r"\[feeds\] must be a table"):
        config.load(main)


# --- [[feeds]] ----------------------------------------------------------------------------------


def test_feed_defaults_and_fields(tmp_path: Path) -> None:
    first, second = load_feeds(
        tmp_path,
        'name = "team"\nurl = "https://example.org/team.ics"',
        'name = "Holidays_2026.v2-x"\nurl = "http://example.org:8080/h.ics?lang=de"\n'
        'users = ["alice", "bob"]\npublic = true\ndisplay_name = "Holidays"\n'
        'color = "#ff0000"\nrefresh_floor = 60\nrefresh_ceiling = 120',
    )
    assert first == FeedConfig(name="team", url="https://example.org/team.ics")
    assert first.users == ("*",) and first.public is False
    assert first.refresh_floor is None and first.refresh_ceiling is None
    assert second == FeedConfig(
        name="Holidays_2026.v2-x",
        url="http://example.org:8080/h.ics?lang=de",
        users=("alice", "bob"),
        public=True,
        display_name="Holidays",
        color="#ff0000",
        refresh_floor=60,
        refresh_ceiling=120,
    )


@pytest.mark.parametrize("name", ["a", "team", "A.b_c-d", "0day", "x" * 64, "trailing."])
def test_good_feed_names(tmp_path: Path, name: str) -> None:
    (feed,) = load_feeds(tmp_path, f'name = "{name}"\nurl = "https://h/x.ics"')
    assert feed.name == name


@pytest.mark.parametrize(
    "name", ["", ".hidden", "..", "-dash", "_under", "a/b", "a b", "x" * 65, "ümlaut", "a%2f"]
)
def test_bad_feed_names(tmp_path: Path, name: str) -> None:
    text = error(tmp_path, mapping_feeds=f'[[feeds]]\nname = "{name}"\nurl = "https://h/x.ics"\n')
    assert "[feeds[0]] name: must be 1-64 letters, digits" in text
    assert str(tmp_path / "m.toml") in text


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("webcal://example.org/team.ics", "http://example.org/team.ics"),
        ("webcals://example.org/team.ics", "https://example.org/team.ics"),
        ("WEBCALS://Example.ORG/Team.ics", "https://example.org/Team.ics"),
        ("webcal://example.org:8080/a.ics?x=1", "http://example.org:8080/a.ics?x=1"),
        ("https://example.org/team.ics#part", "https://example.org/team.ics"),
        ("  https://example.org/padded.ics  ", "https://example.org/padded.ics"),
    ],
)
def test_webcal_schemes_become_http(tmp_path: Path, given: str, url: str) -> None:
    (feed,) = load_feeds(tmp_path, f'name = "f"\nurl = "{given}"')
    assert feed.url == url
    assert feed_url(given) == url


@pytest.mark.parametrize(
    "given",
    [
        "https://user:secret@example.org/team.ics",
        "https://user@example.org/team.ics",
        "https://:secret@example.org/team.ics",
        "webcals://user:secret@example.org/team.ics",
        "ftp://example.org/team.ics",
        "file:///etc/passwd",
        "example.org/team.ics",
        "https:///team.ics",
        "https://example.org:99999/team.ics",
        "",
    ],
)
def test_bad_feed_urls_are_refused(tmp_path: Path, given: str) -> None:
    assert feed_url(given) is None
    text = error(tmp_path, mapping_feeds=f'[[feeds]]\nname = "f"\nurl = "{given}"\n')
    assert "[feeds[0]] url: must be an http(s):// or webcal(s):// URL without credentials" in text


def test_duplicate_feed_names_are_refused(tmp_path: Path) -> None:
    text = error(
        tmp_path,
        mapping_feeds='[[feeds]]\nname = "team"\nurl = "https://a/x.ics"\n'
        '[[feeds]]\nname = "other"\nurl = "https://b/x.ics"\n'
        '[[feeds]]\nname = "team"\nurl = "https://c/x.ics"\n',
    )
    assert f"{tmp_path / 'm.toml'}: [feeds[2]] name: 'team' is used twice" in text


def test_same_url_under_two_names_is_fine(tmp_path: Path) -> None:
    feeds = load_feeds(
        tmp_path, 'name = "a"\nurl = "https://h/x.ics"', 'name = "b"\nurl = "webcals://h/x.ics"'
    )
    assert [f.url for f in feeds] == ["https://h/x.ics", "https://h/x.ics"]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('name = "f"\nurl = "https://h/x"\nrefresh = 60', "[feeds[0]] refresh: unknown key"),
        ('name = "f"\nurl = "https://h/x"\nUsers = ["a"]', "[feeds[0]] Users: unknown key"),
        ('url = "https://h/x"', "[feeds[0]] name: is required"),
        ('name = "f"', "[feeds[0]] url: is required"),
        ('name = 7\nurl = "https://h/x"', "[feeds[0]] name: must be a string"),
        ('name = "f"\nurl = "https://h/x"\npublic = "yes"', "[feeds[0]] public: must be true"),
        ('name = "f"\nurl = "https://h/x"\nusers = "alice"', "[feeds[0]] users: must be a list"),
        (
            'name = "f"\nurl = "https://h/x"\nrefresh_floor = 600\nrefresh_ceiling = 60',
            "[feeds[0]] refresh_ceiling: must be >= refresh_floor (600)",
        ),
        (
            'name = "f"\nurl = "https://h/x"\nrefresh_floor = 0',
            "[feeds[0]] refresh_floor: must be >= 1",
        ),
    ],
)
def test_feed_table_errors(tmp_path: Path, table: str, message: str) -> None:
    text = error(tmp_path, mapping_feeds=f"[[feeds]]\n{table}\n")
    assert message in text
    assert str(tmp_path / "m.toml") in text


def test_feeds_must_be_an_array_of_tables(tmp_path: Path) -> None:
    text = error(tmp_path, mapping_feeds='[feeds]\nname = "f"\nurl = "https://h/x"\n')
    assert "feeds: must be an array of tables ([[feeds]])" in text


def test_only_one_bound_per_feed_may_be_given(tmp_path: Path) -> None:
    (floor_only,) = load_feeds(tmp_path, 'name = "f"\nurl = "https://h/x"\nrefresh_floor = 10')
    assert (floor_only.refresh_floor, floor_only.refresh_ceiling) == (10, None)
    (ceiling_only,) = load_feeds(tmp_path, 'name = "f"\nurl = "https://h/x"\nrefresh_ceiling = 10')
    assert (ceiling_only.refresh_floor, ceiling_only.refresh_ceiling) == (None, 10)
