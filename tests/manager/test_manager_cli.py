"""``torchkeep ls DIR``: table and JSON, latest/best marked, corrupt files flagged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _manager_helpers import flip_byte
from typer.testing import CliRunner

import torchkeep as tk
from torchkeep.cli import app

SRC = str(Path(tk.__file__).resolve().parent.parent)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    with tk.CheckpointManager(tmp_path, monitor="val_loss", model=torch.nn.Linear(4, 4)) as mgr:
        for step, loss in [(100, 0.5), (200, 0.2), (300, 0.4)]:
            mgr.save(step=step, epoch=step // 100, metrics={"val_loss": loss, "lr": 0.001})
    return tmp_path


def test_ls_json_marks_latest_and_best(run_dir: Path) -> None:
    result = CliRunner().invoke(app, ["ls", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["monitor"] == "val_loss" and data["mode"] == "min"
    rows = data["checkpoints"]
    assert [(r["step"], r["epoch"], r["status"], r["marks"]) for r in rows] == [
        (100, 1, "ok", []),
        (200, 2, "ok", ["best"]),
        (300, 3, "ok", ["latest"]),
    ]
    assert rows[0]["metrics"] == {"val_loss": 0.5, "lr": 0.001}
    assert rows[0]["size_bytes"] == os.path.getsize(rows[0]["path"])


def test_ls_table_and_verify_flags_corruption(run_dir: Path) -> None:
    newest = sorted(run_dir.glob("ckpt-*"))[-1]
    flip_byte(newest)
    result = CliRunner().invoke(app, ["ls", str(run_dir)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "latest" in result.output and "best" in result.output and "val_loss=0.2" in result.output
    assert "corrupt" not in result.output  # headers are fine; only --verify reads the data
    result = CliRunner().invoke(app, ["ls", str(run_dir), "--verify", "--json"])
    rows = json.loads(result.output)["checkpoints"]
    assert [(r["step"], r["status"], r["marks"]) for r in rows] == [
        (100, "ok", []),
        (200, "ok", ["latest", "best"]),  # latest = newest *good* checkpoint, what restore() picks
        (300, "corrupt", []),
    ]
    assert "checksum mismatch" in rows[2]["error"]


def test_ls_monitor_override_and_empty_dir(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    result = CliRunner().invoke(app, ["ls", str(run_dir), "--json", "--monitor", "val_loss", "--mode", "max"])
    rows = json.loads(result.output)["checkpoints"]
    assert [r["marks"] for r in rows] == [["best"], [], ["latest"]]
    empty = tmp_path_factory.mktemp("empty")
    result = CliRunner().invoke(app, ["ls", str(empty)])
    assert result.exit_code == 0 and "no checkpoints" in result.output


def test_ls_missing_directory_is_an_error_not_an_empty_run(tmp_path: Path) -> None:
    missing = tmp_path / "runs" / "typo"
    with pytest.raises(tk.CheckpointNotFoundError, match="no such directory"):
        tk.list_checkpoints(missing)
    result = CliRunner().invoke(app, ["ls", str(missing)])
    assert result.exit_code != 0 and isinstance(result.exception, tk.CheckpointNotFoundError)
    assert not missing.exists() and not missing.parent.exists()  # listing creates nothing


@pytest.mark.slow
def test_ls_subprocess_does_not_take_the_lock(run_dir: Path) -> None:
    with tk.CheckpointManager(run_dir, model=torch.nn.Linear(4, 4)):  # a live writer holds the lock
        out = subprocess.run(
            [sys.executable, "-m", "torchkeep", "ls", str(run_dir)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": SRC, "COLUMNS": "200"},
            timeout=120,
            check=False,
        )
    assert out.returncode == 0, out.stderr
    assert "3 checkpoint(s)" in out.stdout and "latest" in out.stdout
