"""The README's configuration reference and the example files list exactly the keys the
loader reads: a key added to the code without documentation fails here, and so does a
documented key the code no longer knows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from davproxy import config

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "config"
# Top-level keys that hold tables (main file and mapping files).
TABLES = frozenset(
    {"server", "store", "logging", "monitoring", "feeds", "upstream"}
    | {"layout", "identity", "access", "users", "groups"}
)


def _table_label(file: Path, name: str) -> str:
    """The README's spelling of a table: ``[server]``, ``[[upstream]]``, '' for top level."""
    if not name:
        return ""
    base = name.split(".")[-1]
    if base.endswith("]") and "[" in base:  # "upstream[0]", "feeds[1]": arrays of tables
        return f"[[{base.split('[')[0]}]]"
    return f"[{base}]"


def keys_the_loader_reads(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Load the example configuration, recording every key each table asked for."""
    seen: set[str] = set()
    finish = config.Table.finish

    def record(table: config.Table) -> None:
        label = _table_label(table.file, table.name)
        for key in table._used:
            if not label and key in TABLES:
                continue  # a sub-table, documented by its own keys
            seen.add(f"{label} {key}".strip())
        finish(table)

    monkeypatch.setattr(config.Table, "finish", record)
    config.load(CONFIG_DIR / "davproxy.example.toml")
    return seen


def keys_the_readme_documents() -> set[str]:
    """Keys in the first column of the README's "Main file" and "Mapping file" tables."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Main file", 1)[1].split("### Identity modes", 1)[0]
    documented: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        table = ""
        for item in re.findall(r"`([^`]+)`", first_cell):
            found = re.fullmatch(r"(\[\[?[a-z_]+\]\]?)\s*(\S+)?", item)
            if found:
                table = found.group(1)
                if found.group(2):
                    documented.add(f"{table} {found.group(2)}")
            else:
                documented.add(f"{table} {item}".strip())
    return documented


def test_readme_reference_matches_the_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    read = keys_the_loader_reads(monkeypatch)
    documented = keys_the_readme_documents()
    assert sorted(read - documented) == [], "keys the code reads but the README does not list"
    assert sorted(documented - read) == [], "keys the README lists but the code does not read"


def test_example_files_show_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    read = keys_the_loader_reads(monkeypatch)
    examples = "\n".join(
        p.read_text(encoding="utf-8") for p in sorted(CONFIG_DIR.glob("*.example.toml"))
    )
    shown = set(re.findall(r"^#?\s*([a-z_]+)\s*=", examples, flags=re.MULTILINE))
    missing = sorted(k for k in read if k.split()[-1] not in shown)
    assert missing == [], "keys without an example line in config/*.example.toml"
