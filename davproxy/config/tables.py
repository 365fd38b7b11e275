"""Reading TOML configuration: typed, checked access that names file, table and key.

Every loader in ``davproxy.config`` reads through ``Table``; an unknown key, a wrong
type or a missing required key is a ``ConfigError`` worded for the operator.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """A configuration problem, worded for the operator: file, table, key, what is wrong."""


class MissingHtpasswd(ConfigError):
    """The htpasswd file a mapping names does not exist (``admin user add`` makes it)."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


class Secret:
    """A string that never shows itself in reprs, logs or check-config output."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Table:
    """Typed, checked access to one TOML table, naming file/table/key on every error."""

    def __init__(self, file: Path, name: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: [{name}] must be a table")
        self.file, self.name, self.data = file, name, data
        self._used: set[str] = set()

    def error(self, key: str, message: str) -> ConfigError:
        # A key at the top of the file has no table to name: ``file: kind: ...``.
        where = f"[{self.name}] {key}" if self.name else key
        return ConfigError(f"{self.file}: {where}: {message}")

    def _get(self, key: str, types: tuple[type, ...], default: Any, what: str) -> Any:
        self._used.add(key)
        if key not in self.data:
            if default is REQUIRED:
                raise self.error(key, "is required")
            return default
        value = self.data[key]
        # bool is an int in Python; a port of `true` is a mistake, not 1.
        if isinstance(value, bool) and bool not in types:
            raise self.error(key, f"must be {what}, got {value!r}")
        if not isinstance(value, types):
            raise self.error(key, f"must be {what}, got {value!r}")
        return value

    def text(self, key: str, default: Any = None, choices: tuple[str, ...] = ()) -> Any:
        value = self._get(key, (str,), default, "a string")
        if choices and value is not None and value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def integer(self, key: str, default: Any, minimum: int = 0, maximum: int | None = None) -> int:
        value = self._get(key, (int,), default, "an integer")
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise self.error(key, f"must be {bounds}; got {value}")
        return int(value)

    def optional_integer(
        self, key: str, minimum: int = 0, maximum: int | None = None
    ) -> int | None:
        """An integer whose absence means "use the default from elsewhere"."""
        self._used.add(key)
        return self.integer(key, None, minimum, maximum) if key in self.data else None

    def number(self, key: str, default: Any, minimum: float = 0.0) -> float:
        value = self._get(key, (int, float), default, "a number")
        if value <= minimum:
            raise self.error(key, f"must be > {minimum}; got {value}")
        return float(value)

    def flag(self, key: str, default: Any) -> bool:
        return bool(self._get(key, (bool,), default, "true or false"))

    def strings(self, key: str, default: Any = ()) -> tuple[str, ...]:
        value = self._get(key, (list,), default, "a list of strings")
        if not all(isinstance(item, str) for item in value):
            raise self.error(key, "must be a list of strings")
        return tuple(value)

    def table(self, key: str) -> Table:
        self._used.add(key)
        return Table(self.file, f"{self.name}.{key}" if self.name else key, self.data.get(key, {}))

    def tables(self, key: str) -> list[Table]:
        self._used.add(key)
        value = self.data.get(key, [])
        if not isinstance(value, list):
            raise self.error(key, "must be an array of tables ([[" + key + "]])")
        return [Table(self.file, f"{key}[{i}]", item) for i, item in enumerate(value)]

    def secret(self, key: str) -> Secret | None:
        """A secret given as ``<key>_file`` (path) or ``<key>_env`` (variable name)."""
        path = self.text(f"{key}_file")
        env = self.text(f"{key}_env")
        if key in self.data:
            raise self.error(key, f"inline secrets are refused; use {key}_file or {key}_env")
        if path and env:
            raise self.error(f"{key}_file", f"give either {key}_file or {key}_env, not both")
        if path:
            resolved = resolve(self.file, path)
            try:
                return Secret(resolved.read_text(encoding="utf-8").strip())
            except OSError as exc:
                raise self.error(f"{key}_file", f"cannot read {resolved}: {exc.strerror}") from None
        if env:
            if env not in os.environ:
                raise self.error(f"{key}_env", f"environment variable {env} is not set")
            return Secret(os.environ[env])
        return None

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self._used)
        if unknown:
            raise self.error(unknown[0], "unknown key (check the spelling against config/)")


REQUIRED = object()


def resolve(base_file: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_file.parent / path)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(toml_error(path, exc)) from None


_TOML_WHERE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def toml_error(path: Path, exc: tomllib.TOMLDecodeError) -> str:
    """``file, line N, column M: invalid TOML: what`` — the position once, up front.

    tomllib puts it at the end of its message (``... (at line 1, column 55)``), and
    newer Pythons also carry it as attributes; either way it is said once here."""
    message = str(exc.args[0]) if exc.args else str(exc)
    line, column = getattr(exc, "lineno", None), getattr(exc, "colno", None)
    found = _TOML_WHERE.search(message)
    if found:
        message = message[: found.start()]
        line, column = line or int(found.group(1)), column or int(found.group(2))
    if message.rstrip().endswith("(at end of document)"):
        message = message.rstrip()[: -len("(at end of document)")] + "at the end of the file"
    message = message.strip() or "cannot parse"
    message = message[0].lower() + message[1:]
    where = f"{path}, line {line}, column {column}" if line else str(path)
    return f"{where}: invalid TOML: {message}"
