"""The DDP and FSDP2 training scripts of docs/guide/distributed.md, run on 2 real ranks."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from _dist_launch import launch

import torchkeep as tk

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide" / "distributed.md"


def _script(first_line: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.DOTALL)
    return next(b for b in blocks if b.startswith(f'"""{first_line}'))


@pytest.mark.slow
def test_guide_ddp_and_fsdp_scripts_checkpoint_on_two_ranks(tmp_path: Path) -> None:
    for kind in ("ddp", "fsdp"):
        (tmp_path / f"train_{kind}.py").write_text(_script(f"train_{kind}.py"))
    with ThreadPoolExecutor(2) as pool:  # the two jobs side by side, each on its own port
        runs = list(
            pool.map(
                lambda k: launch(2, [], script=tmp_path / f"train_{k}.py", cwd=tmp_path, timeout=150), ("ddp", "fsdp")
            )
        )
    for run in runs:
        run.check()
    run = runs[0]
    assert "epoch 3: loss" in run.logs[0]
    for kind in ("ddp", "fsdp"):
        step = tmp_path / "runs" / kind / "epoch-3"
        assert sorted(os.listdir(step)) == [
            "index.json",
            "shard-00000-of-00002.safetensors",
            "shard-00001-of-00002.safetensors",
        ]
        # and the 2-rank checkpoint restores a plain model on this one process
        net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
        if kind == "ddp":
            net.insert(2, torch.nn.Dropout(0.1))
        info = tk.load_checkpoint(step, model=net)
        assert info.epoch == 3 and info.metrics.get("loss", 0.0) == (info.metrics.get("loss", 0.0))
        full = tk.load(step)["model"]
        assert all(torch.equal(full[k], v) for k, v in net.state_dict().items())
