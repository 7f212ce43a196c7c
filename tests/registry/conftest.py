"""Fixtures for the registry tests: a clean registry per test, importable model modules."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from torchkeep.models import _registry


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    """Each test sees the registry as it was before it, whatever it registers."""
    saved, saved_migrations = dict(_registry._REGISTRY), dict(_registry._MIGRATIONS)
    yield
    _registry._REGISTRY.clear()
    _registry._REGISTRY.update(saved)
    _registry._MIGRATIONS.clear()
    _registry._MIGRATIONS.update(saved_migrations)


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], Path]]:
    """Write ``name.py`` under a fresh sys.path entry; returns the directory."""
    root = tmp_path / "pkgs"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))

    def write(name: str, source: str) -> Path:
        (root / f"{name}.py").write_text(textwrap.dedent(source))
        sys.modules.pop(name, None)
        return root

    yield write
    for f in root.glob("*.py"):
        sys.modules.pop(f.stem, None)


@pytest.fixture
def run_python() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run a Python snippet in a fresh interpreter (same torchkeep, extra sys.path entries)."""
    import os

    def run(code: str, *paths: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        src = str(Path(_registry.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([src, *map(str, paths)])
        env["OMP_NUM_THREADS"] = "1"
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=120,
        )

    return run
