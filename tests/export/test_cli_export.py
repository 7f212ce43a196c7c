"""`torchkeep export MODEL_FILE ...`: the tutorial's export CLI, on a torchkeep model file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

MODELS = """
import torch
import torchkeep as tk


@tk.register(name="cli-tutorial-mlp")
class MyModel(torch.nn.Module):
    def __init__(self, in_dim: int = 10, out_dim: int = 1) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(in_dim, 32), torch.nn.ReLU(), torch.nn.Linear(32, out_dim))

    def forward(self, x):
        return self.net(x)


@tk.register(name="cli-two-inputs")
class TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.lin = torch.nn.Linear(3, 4)

    def forward(self, ids, x):
        return self.emb(ids).sum(1) + self.lin(x)
"""


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "torchkeep", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Saved once per module: each subprocess pays a full `import torch`.
    tmp_path = tmp_path_factory.mktemp("cli")
    (tmp_path / "models.py").write_text(MODELS)
    script = (
        "import models, torch, torchkeep as tk\n"
        "tk.save_model(models.MyModel(), 'model.safetensors')\n"
        "tk.save_model(models.TwoInputs(), 'two.safetensors')\n"
        "m = models.MyModel()\n"
        "tk.save_checkpoint('ckpt.safetensors', model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1), step=3)\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{tmp_path}")
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True, timeout=120)
    return tmp_path


@pytest.mark.slow
def test_cli_exports_the_tutorial_formats(model_files: Path) -> None:
    proc = _run(
        [
            "export",
            "--weights",
            "model.safetensors",
            "-m",
            "models",
            "--torchscript",
            "--onnx",
            "--output-dir",
            "exported",
            "--input-shape",
            "1,10",
            "--opset",
            "18",
        ],
        model_files,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = model_files / "exported"
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.onnx", "model.torchscript.pt"]
    assert "torchscript" in proc.stdout and "onnx" in proc.stdout and "max abs err" in proc.stdout
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["inputs"] == [{"name": "x", "shape": [None, 10], "dtype": "float32"}]
    assert manifest["source"]["file"] == "model.safetensors"
    assert manifest["source"]["model"]["name"] == "cli-tutorial-mlp"
    assert manifest["artifacts"]["onnx"]["options"]["opset"] == 18


@pytest.mark.slow
def test_cli_two_inputs_json_and_parity(model_files: Path) -> None:
    proc = _run(
        [
            "export",
            "two.safetensors",
            "-m",
            "models",
            "--pt2",
            "--input-shape",
            "1,5",
            "--dtype",
            "int64",
            "--input-shape",
            "1,3",
            "--dtype",
            "float32",
            "--output-dir",
            "out2",
            "--json",
        ],
        model_files,
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert [i["dtype"] for i in manifest["inputs"]] == ["int64", "float32"]
    assert set(manifest["artifacts"]["pt2"]["parity"]) == {"1", "3", "17"}


@pytest.mark.slow
def test_cli_bad_input_is_one_line_and_nonzero(model_files: Path) -> None:
    proc = _run(["export", "model.safetensors", "-m", "models", "--input-shape", "1,x"], model_files)
    assert proc.returncode == 2
    assert "not a shape" in proc.stderr
    proc = _run(["export", "model.safetensors", "--input-shape", "1,10", "-o", "never"], model_files)
    assert proc.returncode == 1  # the registered class was never imported
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert not (model_files / "never").exists()


@pytest.mark.slow
def test_cli_exports_from_a_training_checkpoint(model_files: Path) -> None:
    proc = _run(
        ["export", "ckpt.safetensors", "-m", "models", "--pt2", "--input-shape", "1,10", "-o", "from_ckpt"], model_files
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((model_files / "from_ckpt" / "export.json").read_text())
    assert manifest["artifacts"]["pt2"]["ok"] and manifest["source"]["file"] == "ckpt.safetensors"
