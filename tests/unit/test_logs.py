import json
import logging

import pytest

from davproxy.config import LoggingConfig
from davproxy.edge import logs


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level
    logs.access_log.disabled = False


def test_json_access_line_has_fields_and_escapes_the_path(capsys) -> None:
    logs.setup(LoggingConfig(level="info", format="json"))
    logs.log_access("PUT", "/alice/a%0a\nfake line", "passthrough", "alice", 201, 0.0123, 0.01)
    line = capsys.readouterr().err.strip()
    assert "\n" not in line  # a newline in a path cannot forge a second line
    entry = json.loads(line)
    assert entry["route"] == "passthrough" and entry["user"] == "alice"
    assert entry["status"] == 201 and entry["duration_ms"] == 12.3 and entry["upstream_ms"] == 10.0
    assert entry["path"] == "/alice/a%0a\\nfake line"


def test_text_access_line_and_switch_off(capsys) -> None:
    logs.setup(LoggingConfig(level="info", format="text"))
    logs.log_access("GET", "/x", "whoami", None, 200, 0.001)
    assert (
        "client=- GET /x route=whoami user=- status=200 1.0ms upstream=-" in capsys.readouterr().err
    )
    logs.setup(LoggingConfig(level="info", access_log=False))
    logs.log_access("GET", "/x", "whoami", None, 200, 0.001)
    assert capsys.readouterr().err == ""


def test_client_comes_first_and_nothing_a_client_sends_can_fake_it(capsys) -> None:
    logs.setup(LoggingConfig(level="info", format="text"))
    logs.log_access(
        "PROPFIND", "/a b/client=6.6.6.6", "passthrough", "x client=6.6.6.6\n", 401, 0.002,
        None, "203.0.113.9", "failed",
    )  # fmt: skip
    line = capsys.readouterr().err.strip()
    assert "\n" not in line
    message = line.split("davproxy.access: ", 1)[1]
    assert message.startswith("client=203.0.113.9 PROPFIND /a\\x20b/client=6.6.6.6 ")
    assert message.endswith(" login=failed")
    assert "user=x\\x20client=6.6.6.6\\n status=401" in message
    assert len(message.split(" ")) == 9  # one token per field


def test_json_line_has_client_and_login(capsys) -> None:
    logs.setup(LoggingConfig(level="info", format="json"))
    logs.log_access("GET", "/x", "passthrough", None, 429, 0.0, None, "2001:db8::1", "refused")
    entry = json.loads(capsys.readouterr().err.strip())
    assert entry["client"] == "2001:db8::1" and entry["login"] == "refused"
    logs.log_access("GET", "/x", "passthrough", "alice", 200, 0.0, None, "127.0.0.1")
    assert "login" not in json.loads(capsys.readouterr().err.strip())


def test_unparsable_requests_are_one_line_not_a_traceback(capsys) -> None:
    from aiohttp.http_exceptions import InvalidURLError

    logs.setup(LoggingConfig(level="info", format="text"))
    server_log = logging.getLogger("aiohttp.server")
    try:
        raise InvalidURLError("not/a/path\x1b[31m")
    except InvalidURLError as exc:
        server_log.exception("Error handling request from %s", "203.0.113.9", exc_info=exc)
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "INFO aiohttp.server: refused an unparsable request from 203.0.113.9 (400)" in err
    assert "\x1b" not in err  # escaped
    server_log.error("something else")  # other aiohttp errors are left as they are
    assert "ERROR aiohttp.server: something else" in capsys.readouterr().err
    logs.setup(LoggingConfig(level="warning", format="text"))
    try:
        raise InvalidURLError("x")
    except InvalidURLError as exc:
        server_log.exception("Error handling request from %s", "203.0.113.9", exc_info=exc)
    assert capsys.readouterr().err == ""
