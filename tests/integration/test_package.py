"""The release package: built as a user would (``python -m build``), installed from the
wheel into a fresh virtual environment that shares nothing with the development one,
and started from there.  About 15-30 s (two venvs, dependencies from pip's cache)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import davproxy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = (
    "davproxy.example.toml",
    "radicale.mapping.example.toml",
    "xandikos.mapping.example.toml",
)


def run(*args: str | Path, cwd: Path, timeout: float = 300) -> str:
    """Run from outside the checkout, so nothing imports this folder's davproxy."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )
    assert result.returncode == 0, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


@pytest.mark.slow
def test_wheel_installs_into_a_clean_venv_and_runs(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    run(sys.executable, "-m", "venv", tools, cwd=tmp_path)
    run(tools / "bin" / "python", "-m", "pip", "install", "--quiet", "build", cwd=tmp_path)
    dist = tmp_path / "dist"
    run(tools / "bin" / "python", "-m", "build", "--outdir", dist, ROOT, cwd=tmp_path)
    version = davproxy.__version__
    wheel = dist / f"davproxy-{version}-py3-none-any.whl"
    sdist = dist / f"davproxy-{version}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), sorted(p.name for p in dist.iterdir())

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for name in EXAMPLES:
        assert f"davproxy-{version}.data/data/share/davproxy/config/{name}" in names
    with tarfile.open(sdist) as archive:
        members = set(archive.getnames())
    for name in EXAMPLES:
        assert f"davproxy-{version}/config/{name}" in members

    clean = tmp_path / "clean"
    run(sys.executable, "-m", "venv", clean, cwd=tmp_path)
    run(clean / "bin" / "python", "-m", "pip", "install", "--quiet", wheel, cwd=tmp_path)
    version_line = run(clean / "bin" / "davproxy", "--version", cwd=tmp_path).strip()
    assert version_line == f"davproxy {version}"
    example = clean / "share" / "davproxy" / "config" / "davproxy.example.toml"
    checked = run(clean / "bin" / "davproxy", "check-config", "--config", example, cwd=tmp_path)
    assert "configuration OK" in checked
    # the installed davproxy is the wheel's, not this checkout's
    where = run(
        clean / "bin" / "python", "-c", "import davproxy; print(davproxy.__file__)", cwd=tmp_path
    )
    assert str(clean) in where and str(ROOT) not in where
