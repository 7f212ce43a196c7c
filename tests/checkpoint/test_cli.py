"""`torchkeep diff` and the checkpoint part of `torchkeep inspect`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import torchkeep as tk
from torchkeep.cli._diff import diff_files

SRC = str(Path(tk.__file__).resolve().parent.parent)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "torchkeep", *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def two_checkpoints(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"

    def step() -> None:
        opt.zero_grad()
        model(torch.randn(2, 3)).sum().backward()
        opt.step()

    step()
    tk.save_checkpoint(a, model=model, optimizer=opt, epoch=1, step=10, metrics={"loss": 0.5})
    step()
    opt.param_groups[0]["lr"] = 0.005
    model.add_module("2", nn.Linear(2, 2))  # a tensor added...
    delattr(model, "0")  # ...and one removed (the 0.* keys)
    tk.save_checkpoint(b, model=model, optimizer=opt, epoch=2, step=20, metrics={"loss": 0.25}, extra={"note": "x"})
    return a, b


def test_diff_files_reports_tensors_values_and_info(two_checkpoints) -> None:
    a, b = two_checkpoints
    r = diff_files(str(a), str(b))
    assert r["tensors"]["added"] == ["model/2.bias", "model/2.weight"]
    assert r["tensors"]["removed"] == ["model/0.bias", "model/0.weight"]
    changed = {e["name"]: e["max_abs_diff"] for e in r["tensors"]["changed"]}
    assert changed["model/1.weight"] == pytest.approx(0.01, rel=1e-3)  # Adam's first step moves by lr
    assert "optimizer/state/0/exp_avg" in changed
    assert not any(n.startswith("__rng__") for n in changed)
    values = {c["path"]: (c["a"], c["b"]) for c in r["values"]["changed"]}
    assert values["optimizer/param_groups/0/lr"] == (0.01, 0.005)
    assert r["values"]["added"] == {"__extra__/note": "x"}
    assert r["checkpoint"]["epoch"] == [1, 2] and r["checkpoint"]["step"] == [10, 20]
    assert r["checkpoint"]["metrics"] == [{"loss": 0.5}, {"loss": 0.25}]
    assert r["rng_changed"] == ["torch"]
    assert not r["identical"]


def test_diff_identical_and_shape_change(tmp_path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    tk.save({"w": torch.ones(2, 3), "n": float("nan")}, a)
    tk.save({"w": torch.ones(2, 3), "n": float("nan")}, b)
    tk.save({"w": torch.ones(3, 2, dtype=torch.float16), "n": float("nan")}, c)
    assert diff_files(str(a), str(b))["identical"]
    (entry,) = diff_files(str(a), str(c))["tensors"]["changed"]
    assert entry == {"name": "w", "dtype": ["float32", "float16"], "shape": [[2, 3], [3, 2]], "max_abs_diff": None}


@pytest.mark.slow
def test_cli_diff_json_and_text(two_checkpoints) -> None:
    a, b = two_checkpoints
    proc = _cli("diff", str(a), str(b), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["tensors"]["added"] == ["model/2.bias", "model/2.weight"]
    proc = _cli("diff", str(a), str(b), "--exit-code")
    assert proc.returncode == 1
    assert "epoch: 1 → 2" in proc.stdout and "optimizer/param_groups/0/lr" in proc.stdout
    assert "model/1.weight" in proc.stdout and "files differ" in proc.stdout


@pytest.mark.slow
def test_cli_inspect_shows_checkpoint_first_and_bad_file_is_one_line(two_checkpoints, tmp_path) -> None:
    a, _ = two_checkpoints
    proc = _cli("inspect", str(a))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1].startswith("checkpoint  epoch=1 step=10")
    assert "objects: model (module), optimizer (optimizer)" in proc.stdout
    assert "torch " + torch.__version__ in proc.stdout
    missing = _cli("diff", str(a), str(tmp_path / "nope.safetensors"))
    assert missing.returncode == 1 and missing.stderr.startswith("error:") and "no such file" in missing.stderr
