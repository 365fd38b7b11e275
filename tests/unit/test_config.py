from pathlib import Path

import pytest

from davproxy import config


def write(tmp_path: Path, upstream: str, mapping: str, main_extra: str = "") -> Path:
    (tmp_path / "m.toml").write_text(mapping)
    main = tmp_path / "main.toml"
    main.write_text(f'{main_extra}\n[[upstream]]\nname = "u"\n{upstream}\nmapping = "m.toml"\n')
    return main


def test_defaults_for_radicale(tmp_path: Path) -> None:
    cfg = config.load(
        write(
            tmp_path,
            'url = "http://127.0.0.1:5232"',
            'kind = "radicale"\n[identity]\nmode = "upstream-basic"\n',
        )
    )
    up = cfg.upstreams[0]
    assert cfg.server.port == 8080 and cfg.server.host == "127.0.0.1"
    assert cfg.store.path == tmp_path / "davproxy.sqlite3"
    assert up.prefix == "/" and str(up.url) == "http://127.0.0.1:5232/"
    assert up.layout == config.Layout("{user}/", "{user}/", "{user}/")
    assert up.href_mapping == "none"
    assert up.identity.trusted_header == "X-Remote-User" and up.identity.cache_seconds == 60


@pytest.mark.parametrize(
    ("kind", "prefix", "url", "expected"),
    [
        ("radicale", "/dav", "http://h/", "script-name"),
        ("radicale", "/dav/", "http://h/radicale/", "rewrite"),
        ("xandikos", "/dav/", "http://h/", "rewrite"),
        ("xandikos", "/dav/", "http://h/dav/", "none"),
    ],
)
def test_href_mapping_auto(tmp_path: Path, kind: str, prefix: str, url: str, expected: str) -> None:
    cfg = config.load(
        write(
            tmp_path,
            f'prefix = "{prefix}"\nurl = "{url}"',
            f'kind = "{kind}"\n[identity]\nmode = "upstream-basic"\n',
        )
    )
    assert cfg.upstreams[0].href_mapping == expected
    assert cfg.upstreams[0].prefix.endswith("/")


def test_xandikos_layout_and_directory(tmp_path: Path) -> None:
    mapping = (
        'kind = "xandikos"\n[identity]\nmode = "upstream-basic"\n'
        '[[users]]\nid = "alice"\nemails = ["Alice@Example.org"]\ndisplay_name = "Alice"\n'
    )
    up = config.load(write(tmp_path, 'url = "http://h/"', mapping)).upstreams[0]
    assert up.layout.calendar_home == "{user}/calendars/"
    assert up.users == (config.DirectoryUser("alice", ("alice@example.org",), "Alice"),)


@pytest.mark.parametrize(
    ("upstream", "mapping", "message"),
    [
        ('url = "http://h/"\nprefix = "dav"', "", "[upstream[0]] prefix: must start with '/'"),
        ('url = "http://h/?x=1"', "", "[upstream[0]] url: must not carry a query"),
        (
            'url = "http://h/"',
            'kind = "radicale"\n[identity]\nmode = "psychic"\n',
            "[identity] mode: must be one of",
        ),
        (
            'url = "http://h/"',
            'kind = "generic"\n[identity]\nmode = "upstream-basic"\n[layout]\nprincipal = "/{user}/"\n',
            "[layout] principal: is relative",
        ),
        (
            'url = "http://h/"',
            'kind = "radicale"\n[identity]\nmode = "upstream-basic"\ncache_seconds = "1"\n',
            "[identity] cache_seconds: must be a number",
        ),
        (
            'url = "http://h/"',
            'kind = "radicale"\n[identity]\nmode = "upstream-basic"\n[[users]]\nid = "a"\n[[users]]\nid = "a"\n',
            "[users[1]] id: 'a' is listed twice",
        ),
    ],
)
def test_errors_name_file_table_and_key(
    tmp_path: Path, upstream: str, mapping: str, message: str
) -> None:
    mapping = mapping or 'kind = "radicale"\n[identity]\nmode = "upstream-basic"\n'
    with pytest.raises(config.ConfigError) as error:
        config.load(write(tmp_path, upstream, mapping))
    assert message in str(error.value)
    assert str(tmp_path) in str(error.value)


def test_secret_from_env_is_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVC_PW", "hunter2")
    mapping = 'kind = "radicale"\n[identity]\nmode = "upstream-basic"\n[access]\nservice_user = "svc"\nservice_password_env = "SVC_PW"\n'
    cfg = config.load(write(tmp_path, 'url = "http://h/"', mapping))
    secret = cfg.upstreams[0].access.service_password
    assert secret is not None and secret.reveal() == "hunter2"
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(config.describe(cfg))


def test_two_upstreams_need_distinct_prefixes(tmp_path: Path) -> None:
    main = write(
        tmp_path, 'url = "http://h/"', 'kind = "radicale"\n[identity]\nmode = "upstream-basic"\n'
    )
    main.write_text(
        main.read_text() + '\n[[upstream]]\nname = "v"\nurl = "http://h2/"\nmapping = "m.toml"\n'
    )
    with pytest.raises(config.ConfigError, match=r"prefix: '/' is used twice"):
        config.load(main)


def test_top_level_key_errors_name_no_empty_table(tmp_path: Path) -> None:
    """A key at the top of a file is named alone, not as ``[] kind``."""
    with pytest.raises(config.ConfigError) as error:
        config.load(write(tmp_path, 'url = "http://h/"', 'kind = "radicalex"\n'))
    text = str(error.value)
    assert text.startswith(f"{tmp_path / 'm.toml'}: kind: must be one of radicale")
    assert "[]" not in text


@pytest.mark.parametrize(
    ("content", "position", "what"),
    [
        ("[server]\nport = 8080 8081\n", ", line 2, column 13: ", "expected newline"),
        ('x = "unterminated', ": ", "unterminated string at the end of the file"),
    ],
)
def test_invalid_toml_says_the_position_once(
    tmp_path: Path, content: str, position: str, what: str
) -> None:
    main = tmp_path / "main.toml"
    main.write_text(content)
    with pytest.raises(config.ConfigError) as error:
        config.load(main)
    text = str(error.value)
    assert text.startswith(f"{main}{position}invalid TOML: {what}"), text
    assert text.count(", line ") <= 1 and "(at" not in text
