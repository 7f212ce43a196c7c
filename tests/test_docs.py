"""Docs that rot fail CI: every ```python block in README.md and docs/ runs, and so does every example.

Blocks of one page run in order in one fresh interpreter, in an empty temporary directory, on the
CPU, so a page may build on its earlier blocks. A block preceded by ``<!-- skip: reason -->`` is
not run (for code that needs a GPU, a remote service, or runs forever, e.g. a server).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"(<!--\s*skip:[^>]*-->\s*\n)?```python\n(.*?)```", re.DOTALL)


def _pages() -> list[Path]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [p for p in pages if p.is_file() and "```python" in p.read_text(encoding="utf-8")]


def _blocks(page: Path) -> list[str]:
    return [m.group(2) for m in _BLOCK.finditer(page.read_text(encoding="utf-8")) if not m.group(1)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["TORCHKEEP_EXAMPLE_QUICK"] = "1"
    return env


@pytest.mark.slow
@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_page_code_blocks_run(page: Path, tmp_path: Path) -> None:
    blocks = _blocks(page)
    if not blocks:
        pytest.skip("every block on this page is marked skip")
    script = "\n\n".join(f"# --- block {i + 1}\n{b}" for i, b in enumerate(blocks))
    (tmp_path / "page.py").write_text(script, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "page.py"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, f"{page.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def _examples() -> list[Path]:
    return sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("example", _examples(), ids=lambda p: p.name)
def test_examples_run(example: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(example)], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, f"{example.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def test_every_page_has_runnable_or_explicitly_skipped_blocks() -> None:
    # A ```py or ```Python fence would silently escape the runner above.
    for page in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        text = page.read_text(encoding="utf-8")
        assert "```py\n" not in text and "```Python" not in text, f"{page}: use ```python fences"
