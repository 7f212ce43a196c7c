"""torchkeep save_state / load_state with real Accelerate loops (tiny CPU models, a few steps each)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _pickle_scan import scan

import torchkeep as tk

accelerate = pytest.importorskip("accelerate")
from torchkeep.integrations.accelerate import load_state, save_state  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")

HERE = Path(__file__).parent


class Counter:
    def __init__(self) -> None:
        self.seen = 0

    def state_dict(self) -> dict[str, int]:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seen = state["seen"]


def _setup() -> tuple[Any, ...]:
    acc = accelerate.Accelerator(
        cpu=True, dataloader_config=accelerate.DataLoaderConfiguration(use_seedable_sampler=True)
    )
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    data = torch.utils.data.TensorDataset(torch.randn(8, 3), torch.randn(8, 2))
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True)
    model, opt, sched, loader = acc.prepare(model, opt, sched, loader)
    counter = Counter()
    acc.register_for_checkpointing(counter)
    return acc, model, opt, sched, loader, counter


def _train(acc: Any, model: Any, opt: Any, sched: Any, loader: Any, counter: Counter) -> None:
    for x, y in loader:
        acc.backward(torch.nn.functional.mse_loss(model(x), y))
        opt.step()
        sched.step()
        opt.zero_grad()
        counter.seen += len(x)


def test_round_trip_restores_every_object(tmp_path: Path) -> None:
    acc, model, opt, sched, loader, counter = _setup()
    _train(acc, model, opt, sched, loader, counter)
    save_state(acc, tmp_path / "s")
    assert set(scan(tmp_path).values()) == {"safetensors"}
    saved_weight = acc.unwrap_model(model).weight.detach().clone()
    saved_lr = sched.get_last_lr()
    _train(acc, model, opt, sched, loader, counter)  # move everything on
    info = load_state(acc, tmp_path / "s")
    assert torch.equal(acc.unwrap_model(model).weight, saved_weight)
    assert sched.get_last_lr() == saved_lr and counter.seen == 8
    assert set(info.objects) == {"model_0", "optimizer_0", "scheduler_0", "custom_0"}
    assert loader.iteration == 1  # the dataloader's epoch counter (drives the seedable sampler)


def test_corrupt_state_file_is_a_typed_error_and_changes_nothing(tmp_path: Path) -> None:
    acc, model, *_ = _setup()
    save_state(acc, tmp_path)
    state = tmp_path / "state.safetensors"
    data = bytearray(state.read_bytes())
    data[-2] ^= 0xFF
    state.write_bytes(bytes(data))
    before = acc.unwrap_model(model).weight.detach().clone()
    with pytest.raises(tk.CorruptCheckpointError, match=r"state\.safetensors"):
        load_state(acc, tmp_path)
    assert torch.equal(acc.unwrap_model(model).weight, before)
    assert sorted(os.listdir(tmp_path)) == ["state.safetensors"]  # nothing deleted


def test_pickled_accelerate_directory_is_refused(tmp_path: Path) -> None:
    acc, *_ = _setup()
    acc.save_state(str(tmp_path))  # accelerate's own: pickles
    with pytest.raises(tk.CheckpointNotFoundError, match=r"no state\.safetensors"):
        load_state(acc, tmp_path)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent.parent / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(HERE / "_accelerate_run.py"), *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow
def test_sigkill_midway_then_resume_is_bitwise_equal(tmp_path: Path) -> None:
    straight = _run(str(tmp_path / "a"), str(tmp_path / "a.out"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _run(str(tmp_path / "b"), str(tmp_path / "b.out"), "--kill-at-step", "10")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "b")) == ["epoch-0", "epoch-1"]
    resumed = _run(str(tmp_path / "b"), str(tmp_path / "b.out"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = tk.load(tmp_path / "a.out"), tk.load(tmp_path / "b.out")
    assert (a["step"], a["seen"]) == (b["step"], b["seen"]) == (16, 128)
    for name, tensor in a["model"].items():  # dropout and a shuffled, seedable sampler: RNG and positions resumed
        assert torch.equal(tensor, b["model"][name]), name
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), (index, key)
    assert set(scan(tmp_path / "a", tmp_path / "b").values()) == {"safetensors"}


def test_docstring_examples() -> None:
    import doctest

    import torchkeep.integrations.accelerate as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
