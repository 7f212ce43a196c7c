"""Bit-exact resume across processes: a run killed after k steps and resumed ends bit for bit
where the uninterrupted run ends (parameters, optimizer state, learning rate, next random numbers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import torchkeep as tk

SCRIPT = Path(__file__).with_name("resume_script.py")
SRC = str(Path(tk.__file__).resolve().parent.parent)


def _run(jobs: list[dict[str, Any]]) -> None:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), json.dumps(jobs)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _assert_bitwise_equal(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), f"{where}: max abs diff {(a.double() - b.double()).abs().max().item()}"
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_bitwise_equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_bitwise_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


# case id -> (scenario, stop after k steps, extra job fields)
CASES: dict[str, tuple[str, int, dict[str, Any]]] = {
    "mlp-adam-steplr": ("mlp", 5, {}),
    "cnn-dropout-bn-sgd-nesterov-onecycle": ("cnn", 7, {}),
    "transformer-adamw-lambdalr-gradscaler": ("transformer", 6, {}),
    "loader-workers0-mid-epoch": ("loader", 7, {"workers": 0}),
    "loader-workers0-epoch-boundary": ("loader", 10, {"workers": 0, "save_at_epoch_end": True}),
    "loader-workers2-mid-epoch": ("loader", 7, {"workers": 2}),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Three processes: every run straight; every run killed after k steps; every run resumed."""
    d = tmp_path_factory.mktemp("resume")
    _run([{"scenario": s, "out": str(d / f"straight-{s}.st")} for s in sorted({c[0] for c in CASES.values()})])
    _run([{"scenario": s, "stop_after": k, "ckpt": str(d / f"{case}.ckpt"), **kw} for case, (s, k, kw) in CASES.items()])
    _run([{"scenario": s, "resume": str(d / f"{case}.ckpt"), "out": str(d / f"resumed-{case}.st"), **kw} for case, (s, k, kw) in CASES.items()])
    return d


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_bit_exact_resume(runs: Path, case: str) -> None:
    scenario, stop_after, _ = CASES[case]
    info = tk.read_info(runs / f"{case}.ckpt")
    assert info.step == stop_after and info.objects["optimizer"] == "optimizer"
    straight, resumed = tk.load(runs / f"straight-{scenario}.st"), tk.load(runs / f"resumed-{case}.st")
    assert straight["optimizer"]["state"]  # the optimizer really has state to compare
    _assert_bitwise_equal(straight, resumed)


def test_comparison_is_not_vacuous() -> None:
    with pytest.raises(AssertionError, match="max abs diff"):
        _assert_bitwise_equal({"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([1.0, 2.0001])})
