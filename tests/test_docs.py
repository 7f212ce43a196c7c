"""Docs that rot fail CI: every ```python block in README.md and docs/ runs, and so does every example.

Blocks of one page run in order in one fresh interpreter, in an empty temporary directory, on the
CPU, so a page may build on its earlier blocks. A marker on the line before a block changes that:

- ``<!-- skip: reason -->``: not run (code that needs a GPU, a remote service, or runs forever).
- ``<!-- file: NAME.py -->``: written to ``NAME.py`` in the directory instead of run, so later
  blocks (and CLI lines) can import it, as a user's own module.
- ``<!-- new-process -->``: this block and the ones after it run in another fresh interpreter
  (same directory), so "later, in another process" is what the test does too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"(?:<!--\s*(skip:[^>]*|file:\s*[\w.]+|new-process)\s*-->\s*\n)?```python\n(.*?)```", re.DOTALL)


def _pages() -> list[Path]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [p for p in pages if p.is_file() and "```python" in p.read_text(encoding="utf-8")]


def _marked_blocks(page: Path) -> list[tuple[str, str]]:
    """``(marker, code)`` per python block; marker is ``""``, ``"skip: ..."``, ``"file: x.py"`` or ``"new-process"``."""
    return [((m.group(1) or "").strip(), m.group(2)) for m in _BLOCK.finditer(page.read_text(encoding="utf-8"))]


def _blocks(page: Path) -> list[str]:
    return [code for marker, code in _marked_blocks(page) if not marker.startswith("skip:")]


def _scripts(page: Path, directory: Path) -> list[Path]:
    """Write the page's files and its scripts (one per process) into ``directory``, in order."""
    scripts: list[list[str]] = [[]]
    for i, (marker, code) in enumerate(_marked_blocks(page)):
        if marker.startswith("skip:"):
            continue
        if marker.startswith("file:"):
            (directory / marker.removeprefix("file:").strip()).write_text(code, encoding="utf-8")
            continue
        if marker == "new-process" and scripts[-1]:
            scripts.append([])
        scripts[-1].append(f"# --- block {i + 1}\n{code}")
    paths = []
    for n, blocks in enumerate(s for s in scripts if s):
        path = directory / f"page{n}.py"
        path.write_text("\n\n".join(blocks), encoding="utf-8")
        paths.append(path)
    return paths


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["TORCHKEEP_EXAMPLE_QUICK"] = "1"
    return env


@pytest.mark.slow
@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_page_code_blocks_run(page: Path, tmp_path: Path) -> None:
    scripts = _scripts(page, tmp_path)
    if not scripts:
        pytest.skip("every block on this page is marked skip")
    for script in scripts:  # one interpreter each: a "new-process" block starts the next
        proc = subprocess.run(
            [sys.executable, script.name],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, (
            f"{page.name} ({script.name}) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )


def _examples() -> list[Path]:
    return sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("example", _examples(), ids=lambda p: p.name)
def test_examples_run(example: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(example)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"{example.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def test_every_page_has_runnable_or_explicitly_skipped_blocks() -> None:
    # A ```py or ```Python fence would silently escape the runner above.
    for page in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        text = page.read_text(encoding="utf-8")
        assert "```py\n" not in text and "```Python" not in text, f"{page}: use ```python fences"


def test_markers_write_files_and_split_processes(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- file: mod.py -->\n```python\nX = 1\n```\n"
        "```python\nimport mod\n```\n"
        "<!-- skip: needs a GPU -->\n```python\nraise SystemExit(1)\n```\n"
        "<!-- new-process -->\n```python\nimport mod\nassert mod.X == 1\n```\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    out.mkdir()
    scripts = _scripts(page, out)
    assert (out / "mod.py").read_text(encoding="utf-8") == "X = 1\n"
    assert [p.name for p in scripts] == ["page0.py", "page1.py"]
    assert "import mod" in scripts[0].read_text(encoding="utf-8") and "SystemExit" not in scripts[0].read_text()
