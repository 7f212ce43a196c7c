"""Repository hygiene: no merge-conflict markers in any tracked text file."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_MARKER = re.compile(r"^(<{7}|={7}|>{7})( |$)", re.MULTILINE)


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    suffixes = {".py", ".md", ".toml", ".txt", ".sh", ".json", ".cfg", ".yml", ".yaml", ""}
    return [ROOT / p for p in out.splitlines() if Path(p).suffix in suffixes and (ROOT / p).is_file()]


def test_no_merge_conflict_markers() -> None:
    offenders = []
    for path in _tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        if _MARKER.search(text):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == [], f"merge-conflict markers left in: {offenders}"
