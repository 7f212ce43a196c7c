"""`torchkeep demo` (what `make demo` runs) works end to end and shows every step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "torchkeep", "demo", "--workdir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "bit-identical to the uninterrupted run" in out
    assert "a flipped bit is caught" in out
    assert "rebuilt DemoMLP" in out
    assert "audit caught" in out
    for artifact in ("model.pt2", "model.onnx", "model.torchscript.pt"):
        assert f"{artifact}: matches eager at batch 1, 3, 17" in out
    assert "predictors agree with eager" in out
    assert "fastest is" in out
    assert "64 × 200" in out
    assert "demo finished" in out
