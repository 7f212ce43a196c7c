"""A read-only manager restores while another process trains with keep_last=1 (steps vanish under it)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import torchkeep as tk

SRC = str(Path(tk.__file__).resolve().parent.parent)
HERE = Path(__file__).resolve().parent


@pytest.mark.slow
@pytest.mark.parametrize("dedup", [False, True], ids=["plain", "dedup"])
def test_read_only_restore_while_training_with_keep_last_1(tmp_path: Path, dedup: bool) -> None:
    run = tmp_path / "run"
    writer = subprocess.Popen(
        [sys.executable, str(HERE / "_busy_writer.py"), SRC, str(run), "1" if dedup else "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        model = torch.nn.Linear(128, 128)
        steps = []
        with tk.CheckpointManager(run, read_only=True, model=model) as reader, warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # a vanished step must not be reported as a corrupt one
            for _ in range(200):
                info = reader.restore()
                assert info is not None and info.step is not None
                # the restored weights are those of the step the info names, never a mix
                assert torch.equal(model.weight, torch.full_like(model.weight, float(info.step)))
                assert torch.equal(model.bias, torch.full_like(model.bias, float(info.step)))
                steps.append(info.step)
        assert writer.poll() is None, "the writer died"
        assert steps == sorted(steps) and len(set(steps)) > 1, steps
    finally:
        writer.kill()
        writer.wait()
        if writer.stdout is not None:
            writer.stdout.close()
