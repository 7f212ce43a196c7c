"""Every torch.optim optimizer, lr_scheduler and GradScaler survives a checkpoint and continues identically."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as L

import torchkeep as tk


def _model(sparse: bool = False) -> nn.Module:
    torch.manual_seed(1)
    if sparse:
        return nn.Sequential(nn.Embedding(10, 4, sparse=True))
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def _loss(model: nn.Module, i: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + i)
    if isinstance(model[0], nn.Embedding):
        return model(torch.randint(0, 10, (6,), generator=g)).pow(2).mean()
    x = torch.randn(5, 4, generator=g)
    return (model(x) - 1).pow(2).mean()


OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.1),
    "SGD-nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "Adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "Adam-amsgrad": lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True),
    "Adam-tensor-lr": lambda p: torch.optim.Adam(p, lr=torch.tensor(0.01)),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    "Adamax": lambda p: torch.optim.Adamax(p, lr=0.01),
    "NAdam": lambda p: torch.optim.NAdam(p, lr=0.01),
    "NAdam-decoupled": lambda p: torch.optim.NAdam(p, lr=0.01, decoupled_weight_decay=True, weight_decay=0.1),
    "RAdam": lambda p: torch.optim.RAdam(p, lr=0.01),
    "Adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1),
    "Adadelta": lambda p: torch.optim.Adadelta(p),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
    "Rprop": lambda p: torch.optim.Rprop(p, lr=0.01),
    "ASGD": lambda p: torch.optim.ASGD(p, lr=0.01, t0=2),
    "LBFGS": lambda p: torch.optim.LBFGS(p, lr=0.5, max_iter=3, history_size=4),
    "SparseAdam": lambda p: torch.optim.SparseAdam(p, lr=0.01),
    "Adafactor": lambda p: torch.optim.Adafactor(p, lr=0.01),
    "Muon": lambda p: torch.optim.Muon([q for q in p if q.ndim == 2], lr=0.01),
}


def _run(model: nn.Module, opt: torch.optim.Optimizer, sched: Any, steps: range, scaler: Any = None) -> None:
    for i in steps:
        def closure(i: int = i) -> torch.Tensor:
            opt.zero_grad()
            loss = _loss(model, i)
            loss.backward()
            return loss

        if isinstance(opt, torch.optim.LBFGS):
            loss = opt.step(closure)
        elif scaler is not None:
            opt.zero_grad()
            loss = _loss(model, i)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss = closure()
            opt.step()
        if isinstance(sched, L.ReduceLROnPlateau):
            sched.step(float(loss.detach()) + (1.0 if i % 2 else 0.0))
        elif sched is not None:
            sched.step()


def _assert_same_state(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (where, list(a), list(b))
        for k in a:
            _assert_same_state(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_state(x, y, f"{where}[{i}]")
    elif callable(a):
        assert callable(b), where
    else:
        assert a == b or (a != a and b != b), (where, a, b)


def _roundtrip(tmp_path, make_opt, make_sched=None, scaler_factory=None, sparse=False) -> None:
    model = _model(sparse)
    opt = make_opt(list(model.parameters()))
    sched = make_sched(opt) if make_sched else None
    scaler = scaler_factory() if scaler_factory else None
    _run(model, opt, sched, range(4), scaler)
    objects: dict[str, Any] = {"model": model, "optimizer": opt}
    if sched is not None:
        objects["scheduler"] = sched
    if scaler is not None:
        objects["scaler"] = scaler
    path = tmp_path / "ckpt.safetensors"
    tk.save_checkpoint(path, epoch=0, step=4, **objects)

    model2 = _model(sparse)
    with torch.no_grad():
        for p in model2.parameters():
            p.add_(1.0)  # make sure the load really overwrites
    opt2 = make_opt(list(model2.parameters()))
    sched2 = make_sched(opt2) if make_sched else None
    scaler2 = scaler_factory() if scaler_factory else None
    restored: dict[str, Any] = {"model": model2, "optimizer": opt2}
    if sched2 is not None:
        restored["scheduler"] = sched2
    if scaler2 is not None:
        restored["scaler"] = scaler2
    info = tk.load_checkpoint(path, **restored)
    assert info.step == 4

    _run(model, opt, sched, range(4, 9), scaler)
    _run(model2, opt2, sched2, range(4, 9), scaler2)
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)
    _assert_same_state(opt.state_dict(), opt2.state_dict(), "optimizer")
    if sched is not None:
        _assert_same_state(sched.state_dict(), sched2.state_dict(), "scheduler")
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt2.param_groups]
    if scaler is not None:
        _assert_same_state(scaler.state_dict(), scaler2.state_dict(), "scaler")


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_continues_identically(tmp_path, name: str) -> None:
    _roundtrip(tmp_path, OPTIMIZERS[name], sparse=name == "SparseAdam")


def _warmup(step: int) -> float:
    return min(1.0, (step + 1) / 3)


class _Warmup:
    """A callable object: LambdaLR's state_dict keeps its __dict__ (unlike plain functions)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup)


SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "StepLR": lambda o: L.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o: L.MultiStepLR(o, milestones=[2, 5], gamma=0.5),
    "ConstantLR": lambda o: L.ConstantLR(o, factor=0.5, total_iters=3),
    "LinearLR": lambda o: L.LinearLR(o, start_factor=0.2, total_iters=5),
    "ExponentialLR": lambda o: L.ExponentialLR(o, gamma=0.9),
    "PolynomialLR": lambda o: L.PolynomialLR(o, total_iters=8, power=2.0),
    "CosineAnnealingLR": lambda o: L.CosineAnnealingLR(o, T_max=6),
    "CosineAnnealingWarmRestarts": lambda o: L.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2),
    "CyclicLR": lambda o: L.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=2),
    "OneCycleLR": lambda o: L.OneCycleLR(o, max_lr=0.1, total_steps=20),
    "OneCycleLR-linear": lambda o: L.OneCycleLR(o, max_lr=0.1, total_steps=20, anneal_strategy="linear"),
    "ReduceLROnPlateau": lambda o: L.ReduceLROnPlateau(o, patience=1, factor=0.5),
    "LambdaLR": lambda o: L.LambdaLR(o, _warmup),
    "LambdaLR-callable-object": lambda o: L.LambdaLR(o, _Warmup(4)),
    "MultiplicativeLR": lambda o: L.MultiplicativeLR(o, lambda step: 0.95),
    "SequentialLR": lambda o: L.SequentialLR(
        o, [L.LinearLR(o, start_factor=0.1, total_iters=3), L.ExponentialLR(o, gamma=0.9)], milestones=[3]
    ),
    "ChainedScheduler": lambda o: L.ChainedScheduler([L.ConstantLR(o, factor=0.5, total_iters=3), L.ExponentialLR(o, gamma=0.9)]),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_continues_identically(tmp_path, name: str) -> None:
    momentum = 0.9 if name.startswith(("CyclicLR", "OneCycleLR")) else 0.0
    _roundtrip(tmp_path, lambda p: torch.optim.SGD(p, lr=0.1, momentum=momentum), SCHEDULERS[name])


@pytest.mark.parametrize("name", ["StepLR", "OneCycleLR", "CosineAnnealingWarmRestarts", "ReduceLROnPlateau"])
def test_scheduler_with_tensor_lr(tmp_path, name: str) -> None:
    _roundtrip(tmp_path, lambda p: torch.optim.Adam(p, lr=torch.tensor(0.01)), SCHEDULERS[name])


def test_grad_scaler_disabled_on_cpu(tmp_path) -> None:
    _roundtrip(tmp_path, OPTIMIZERS["Adam"], scaler_factory=lambda: torch.amp.GradScaler("cpu", enabled=False))


def test_grad_scaler_enabled_on_cpu(tmp_path) -> None:
    # torch >= 2.3 supports a CPU GradScaler; its scale and growth tracker must come back exactly.
    _roundtrip(tmp_path, OPTIMIZERS["Adam"], scaler_factory=lambda: torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2))
