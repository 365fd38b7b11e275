"""Groups of the mapping file (issue 15): [[groups]], group_file, nesting and cycles."""

from __future__ import annotations

from pathlib import Path

import pytest

from davproxy import config
from davproxy.config.groups import expand, find_cycle

from .test_config import write

MAPPING = (
    'kind = "radicale"\n{top}[identity]\nmode = "upstream-basic"\n'
    '[[users]]\nid = "alice"\nemails = ["alice@example.org"]\n'
)


def group(gid: str, *members: str, emails: tuple[str, ...] = (), name: str = "") -> str:
    listed = ", ".join(f'"{m}"' for m in members)
    mails = ", ".join(f'"{e}"' for e in emails)
    return (
        f'[[groups]]\nid = "{gid}"\ndisplay_name = "{name}"\nemails = [{mails}]\n'
        f"members = [{listed}]\n"
    )


def load(tmp_path: Path, *groups: str, top: str = "") -> config.UpstreamConfig:
    main = write(tmp_path, 'url = "http://h/"', MAPPING.format(top=top) + "".join(groups))
    return config.load(main).upstreams[0]


def test_nested_groups_load_and_expand(tmp_path: Path) -> None:
    up = load(
        tmp_path,
        group("family", "bob", "kids", emails=("Family@Example.org",), name="The Family"),
        group("kids", "carol", "dave"),
    )
    family = up.groups[0]
    assert (family.id, family.display_name, family.emails) == (
        "family", "The Family", ("family@example.org",),
    )  # fmt: skip
    members = {g.id: g.members for g in up.groups}
    assert family.members == ("bob", "kids")  # direct members, as written
    assert expand(members, "family") == {"bob", "carol", "dave"}
    assert expand(members, "kids") == {"carol", "dave"}


@pytest.mark.parametrize(
    ("groups", "wanted"),
    [
        ((group("a", "a"),), "a -> a"),
        ((group("a", "b"), group("b", "c"), group("c", "a")), "a -> b -> c -> a"),
    ],
)
def test_a_cycle_is_refused_at_load(tmp_path: Path, groups: tuple[str, ...], wanted: str) -> None:
    with pytest.raises(config.ConfigError, match="cycle") as error:
        load(tmp_path, *groups)
    assert wanted in str(error.value) and "m.toml" in str(error.value)


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ((group("alice", "bob"),), "is also a user's id"),
        ((group("team", "bob"), group("team", "carol")), "is listed twice"),
        ((group("a", "bob", emails=("alice@example.org",)),), "already belongs"),
        ((group("a", "b", emails=("x@e.org",)), group("b", "c", emails=("x@e.org",))), "already"),
        ((group(".hidden", "bob"),), "not a usable group id"),
        ((group("a:b", "bob"),), "not a usable group id"),
    ],
)
def test_bad_groups_are_refused(tmp_path: Path, groups: tuple[str, ...], message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        load(tmp_path, *groups)


def test_group_file_is_read_and_completed_by_tables(tmp_path: Path) -> None:
    (tmp_path / "groups").write_text("# Radicale's htgroup file\nfamily: bob carol\n\nops: dave\n")
    up = load(
        tmp_path,
        group("family", "erin", emails=("family@example.org",), name="Family"),
        top='group_file = "groups"\n',
    )
    by_id = {g.id: g for g in up.groups}
    assert by_id["family"].members == ("bob", "carol", "erin")
    assert by_id["family"].display_name == "Family"
    assert by_id["ops"].members == ("dave",)


def test_a_broken_group_file_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "groups").write_text("family: bob\nthis is not a group line\n")
    with pytest.raises(config.ConfigError, match="line 2"):
        load(tmp_path, top='group_file = "groups"\n')
    with pytest.raises(config.ConfigError, match="cannot read"):
        load(tmp_path, top='group_file = "missing"\n')


def test_find_cycle_on_an_acyclic_graph() -> None:
    assert find_cycle({"a": ("b", "u1"), "b": ("u2",), "c": ("a", "b")}) == []
