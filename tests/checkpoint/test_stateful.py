"""The versioned custom-state pattern: a hand-written LR scheduler whose state carries a version."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import torchkeep as tk


class MyLRSchedulerV1:
    """The tutorial's scheduler as first written: version 1, base_lr/decay_rate/step_num."""

    def __init__(self, base_lr: float = 0.01, decay_rate: float = 0.9) -> None:
        self.base_lr, self.decay_rate, self.step_num = base_lr, decay_rate, 0

    def step(self) -> None:
        self.step_num += 1

    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, "params": {"base_lr": self.base_lr, "decay_rate": self.decay_rate}, "state": {"step_num": self.step_num}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = tk.upgrade_state(state, version=1, owner="MyLRScheduler")
        self.base_lr = state["params"]["base_lr"]
        self.decay_rate = state["params"]["decay_rate"]
        self.step_num = state["state"]["step_num"]


def _v1_to_v2(state: dict[str, Any]) -> dict[str, Any]:
    # version 2 added warmup and renamed step_num -> last_step
    return {"params": {**state["params"], "warmup_steps": 0}, "state": {"last_step": state["state"]["step_num"]}}


class MyLRScheduler:
    """Version 2 of the same class: it still loads version-1 states."""

    VERSION = 2

    def __init__(self, base_lr: float = 0.01, decay_rate: float = 0.9, warmup_steps: int = 5) -> None:
        self.base_lr, self.decay_rate, self.warmup_steps, self.last_step = base_lr, decay_rate, warmup_steps, 0

    def get_lr(self) -> float:
        warm = min(1.0, (self.last_step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return self.base_lr * warm * self.decay_rate**self.last_step

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": self.VERSION,
            "params": {"base_lr": self.base_lr, "decay_rate": self.decay_rate, "warmup_steps": self.warmup_steps},
            "state": {"last_step": self.last_step},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = tk.upgrade_state(state, version=self.VERSION, upgrades={1: _v1_to_v2}, owner="MyLRScheduler")
        self.base_lr = state["params"]["base_lr"]
        self.decay_rate = state["params"]["decay_rate"]
        self.warmup_steps = state["params"]["warmup_steps"]
        self.last_step = state["state"]["last_step"]


def test_old_version_is_upgraded_through_a_checkpoint(tmp_path) -> None:
    old = MyLRSchedulerV1(0.05, 0.5)
    for _ in range(3):
        old.step()
    path = tmp_path / "c.safetensors"
    tk.save_checkpoint(path, scheduler=old, model=torch.nn.Linear(1, 1))
    new = MyLRScheduler()
    info = tk.load_checkpoint(path, scheduler=new)
    assert info.objects["scheduler"] == "object"
    assert (new.base_lr, new.decay_rate, new.warmup_steps, new.last_step) == (0.05, 0.5, 0, 3)
    assert new.get_lr() == 0.05 * 0.5**3


def test_same_version_round_trips(tmp_path) -> None:
    s = MyLRScheduler(0.1, 0.9, 3)
    s.last_step = 7
    path = tmp_path / "c.safetensors"
    tk.save_checkpoint(path, scheduler=s)
    t = MyLRScheduler()
    tk.load_checkpoint(path, scheduler=t)
    assert t.state_dict() == s.state_dict()


def test_newer_state_is_refused_and_object_unchanged(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    tk.save_checkpoint(path, scheduler=MyLRScheduler())
    old = MyLRSchedulerV1(0.3)
    with pytest.raises(tk.StateMismatchError, match="MyLRScheduler: the saved state is version 2, but this code reads versions up to 1"):
        tk.load_checkpoint(path, scheduler=old)
    assert old.base_lr == 0.3


def test_upgrade_state_rules() -> None:
    assert tk.upgrade_state({"a": 1}, version=1) == {"a": 1, "version": 1}  # no version key: version 1
    chain = {1: lambda s: {**s, "b": 2}, 2: lambda s: {**s, "c": s["b"] + 1}}
    original = {"version": 1, "a": 1}
    assert tk.upgrade_state(original, version=3, upgrades=chain) == {"version": 3, "a": 1, "b": 2, "c": 3}
    assert original == {"version": 1, "a": 1}  # input untouched
    with pytest.raises(tk.StateMismatchError, match=r"no upgrade from version 2 to 3.*add upgrades\[2\]"):
        tk.upgrade_state({"version": 1}, version=3, upgrades={1: dict})
    with pytest.raises(tk.StateMismatchError, match="not a positive int"):
        tk.upgrade_state({"version": "2"}, version=3)
