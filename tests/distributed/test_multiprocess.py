"""Real multi-process runs (CPU, gloo): DDP and FSDP2 kill-and-resume, resharding, interrupted saves.

Every load below runs with pickle.load/loads/Unpickler and torch.load patched to raise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from _dist_launch import Run, launch

import torchkeep as tk
from torchkeep import distributed
from torchkeep.errors import CheckpointNotFoundError

pytestmark = pytest.mark.slow

ARGS = ["--steps", "6", "--save-at", "2", "3", "--modes", "ddp", "fsdp", "--async-modes", "fsdp"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Per mode (DDP sync saves, FSDP2 async saves): an uninterrupted reference run; the same run
    saving at steps 2 and 3 and SIGKILLed after step 4; a run resumed from step 3 to the end."""
    root = tmp_path_factory.mktemp("runs")
    killed = launch(2, ["train", *ARGS, "--full-at", "3", "--kill-after", "4", "--ckpt", str(root), "--out", str(root)])
    resumed = launch(2, ["train", *ARGS, "--resume", str(root), "--out", str(root)])
    return {"root": root, "killed": killed, "resumed": resumed}


def _same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: {sorted(a)} != {sorted(b)}"
        for k in a:
            _same(a[k], b[k], f"{where}/{k}")
    else:
        assert a == b, where


def _check_resume(runs: dict[str, Any], mode: str) -> None:
    assert runs["killed"].returncodes == [-9, -9], runs["killed"].logs
    runs["resumed"].check()
    for rank in (0, 1):
        ref = tk.load(runs["root"] / f"ref-{mode}-rank-{rank}.safetensors")
        got = tk.load(runs["root"] / f"resumed-{mode}-rank-{rank}.safetensors")
        _same(ref, got, f"rank {rank}")  # parameters, optimizer state and every RNG, bit for bit


def test_ddp_save_kill_resume_is_bitwise_equal(runs: dict[str, Any]) -> None:
    _check_resume(runs, "ddp")
    assert sorted(os.listdir(runs["root"] / "ddp" / "step-3")) == [
        "index.json",
        "shard-00000-of-00002.safetensors",
        "shard-00001-of-00002.safetensors",
    ]


def test_fsdp2_async_save_kill_resume_is_bitwise_equal(runs: dict[str, Any]) -> None:
    _check_resume(runs, "fsdp")
    assert sorted(os.listdir(runs["root"] / "fsdp")) == ["step-2", "step-3"]


def _reference_at_3(runs: dict[str, Any], mode: str) -> dict[str, Any]:
    return tk.load(runs["root"] / f"full-3-{mode}-rank-0.safetensors")


@pytest.mark.usefixtures("no_pickle")
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_rank_checkpoint_loads_on_one_process(mode: str, runs: dict[str, Any], tmp_path: Path) -> None:
    ckpt = runs["root"] / mode / "step-3"
    expected = _reference_at_3(runs, mode)
    full = tk.load(ckpt)  # no process group: the full, unsharded state
    _same(expected["model"], full["model"])
    from _dist_worker import build  # the same model, built plain

    model, opt, sched = build("plain", seed=123)
    info = tk.load_checkpoint(ckpt, model=model, optimizer=opt, scheduler=sched)
    assert info.step == 3 and info.extra == {"rank": 0, "seen": 3}
    _same(expected["model"], {k: v for k, v in model.state_dict().items()})
    names = [n for n, _ in model.named_parameters()]
    _same(expected["optimizer_state"], {names[i]: s for i, s in opt.state_dict()["state"].items()})
    out = tmp_path / "one.safetensors"
    distributed.consolidate(ckpt, out)
    _same(expected["model"], tk.load(out)["model"])


def test_two_rank_checkpoints_load_on_three_ranks(runs: dict[str, Any], tmp_path: Path) -> None:
    run: Run = launch(
        3,
        [
            "load",
            "--mode",
            "fsdp",
            "--ckpt",
            str(runs["root"] / "fsdp" / "step-3"),
            "--ckpt2",
            str(runs["root"] / "ddp" / "step-3"),
            "--manager",
            "--out",
            str(tmp_path),
        ],
    )
    run.check()
    for prefix, mode in (("a-", "fsdp"), ("b-", "ddp")):
        expected = _reference_at_3(runs, mode)
        for rank in range(3):
            got = tk.load(tmp_path / f"{prefix}rank-{rank}.safetensors")
            _same(expected["model"], got["model"], f"{prefix}{rank}")
            _same(expected["optimizer_state"], got["optimizer_state"], f"{prefix}{rank}")
            # ranks 0 and 1 get back their own extra; rank 2 did not exist when saving
            assert got["extra"] == {"rank": rank if rank < 2 else 0, "seen": 3}
            assert got["lr"] == [0.005]
    # then the same three ranks ran a CheckpointManager: async sharded saves, keep_last=2, restore
    for rank in range(3):
        got = tk.load(tmp_path / f"mgr-rank-{rank}.safetensors")
        assert got["step"] == 3 and got["steps"] == [2, 3] and got["extra"] == {"rank": rank}
        _same(got["expected"], got["restored"], f"manager rank {rank}")
    entries = tk.list_checkpoints(tmp_path / "mgr")
    assert [(e.step, e.kind, e.status) for e in entries] == [(2, "sharded", "ok"), (3, "sharded", "ok")]
    assert entries[-1].info is not None and entries[-1].info.metrics == {"loss": 1 / 3}


def test_rank_killed_mid_write_leaves_no_restorable_step(tmp_path: Path) -> None:
    run = launch(2, ["killsave", "--mode", "ddp", "--ckpt", str(tmp_path)], timeout=120)
    assert run.returncodes[1] == -9, run.logs[1]
    assert run.returncodes[0] != 0  # the survivor saw the save fail, and did not commit it
    assert "Nothing was committed" in run.logs[0]
    assert not (tmp_path / "step-2").exists()
    with pytest.raises(CheckpointNotFoundError):
        tk.load(tmp_path / "step-2")
    leftovers = [n for n in os.listdir(tmp_path) if n != "step-1"]
    assert all(n.startswith(".step-2.tmp-") for n in leftovers), leftovers
    distributed.sweep(tmp_path)
    assert os.listdir(tmp_path) == ["step-1"]
    from _dist_worker import build

    model = build("plain", seed=0)[0]
    fresh = build("plain", seed=99)[0]
    tk.load_checkpoint(tmp_path / "step-1", model=fresh)  # the last committed step is intact
    _same(model.state_dict(), fresh.state_dict())
