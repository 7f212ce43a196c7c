"""Tiny training runs used by test_resume.py.

    python resume_script.py '[{"scenario": "mlp", "out": "a.st"}, {"scenario": "mlp", "stop_after": 5,
                               "ckpt": "c.st"}, ...]'

Each job runs a scenario to its end and writes the final model/optimizer state to ``out`` with
tk.save, or stops after ``stop_after`` optimizer steps and saves a checkpoint to ``ckpt`` (a
killed run); ``resume`` starts from such a checkpoint.
"""

from __future__ import annotations

import json
import math
import random
import sys
from typing import Any

import numpy as np
import torch
from torch import nn

import torchkeep as tk

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


def warmup(step: int) -> float:  # a plain function: not state, recreated by the resumed process
    return min(1.0, (step + 1) / 4) * 0.5 ** (step // 6)


def build(scenario: str):
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    scaler = None
    if scenario == "mlp":
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.7)
    elif scenario == "cnn":
        model = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3),
            nn.Flatten(), nn.Linear(4 * 6 * 6, 3),
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=12)
    elif scenario == "transformer":
        layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.1, batch_first=True)
        model = nn.Sequential(nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False), nn.Linear(16, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    elif scenario == "loader":
        model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=4)
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    return model, opt, sched, scaler


def batch(scenario: str) -> tuple[torch.Tensor, torch.Tensor]:
    # Data come from the global generators on purpose: the checkpoint's RNG state must restore them.
    if scenario == "mlp":
        x = torch.randn(8, 6) + float(np.random.rand())
        return x, x.sum(1, keepdim=True) * random.random()
    if scenario == "cnn":
        return torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    x = torch.randn(4, 5, 16)
    return x, x.mean((1, 2)).unsqueeze(1)


def loss_of(scenario: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if scenario == "cnn":
        return nn.functional.cross_entropy(model(x), y)
    if scenario == "transformer":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)[:, 0]
        return nn.functional.mse_loss(out.float(), y)
    return nn.functional.mse_loss(model(x), y)


def step_once(scenario, model, opt, sched, scaler, x, y) -> None:
    opt.zero_grad()
    loss = loss_of(scenario, model, x, y)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    sched.step()


def run(job: dict[str, Any]) -> None:
    """One training run: to the end (writing job["out"]), or until job["stop_after"] steps (checkpoint)."""
    scenario, stop_after = job["scenario"], job.get("stop_after")
    model, opt, sched, scaler = build(scenario)
    model.train()
    objects: dict[str, Any] = {"model": model, "optimizer": opt, "scheduler": sched}
    if scaler is not None:
        objects["scaler"] = scaler
    step = 0

    def checkpoint(epoch: int) -> None:
        tk.save_checkpoint(
            job["ckpt"], epoch=epoch, step=step, metrics={"step": step}, extra={"update_steps": step}, **objects
        )

    if scenario == "loader":
        gen = torch.Generator().manual_seed(1)
        data = torch.utils.data.TensorDataset(torch.randn(36, 3, generator=gen), torch.randn(36, 1, generator=gen))
        loader = tk.ResumableLoader(data, batch_size=8, shuffle=True, seed=5, num_workers=job.get("workers", 0))
        objects["loader"] = loader
        if job.get("resume"):
            info = tk.load_checkpoint(job["resume"], map_location="cpu", **objects)
            step = info.extra["update_steps"]
        for epoch in range(loader.epoch, 3):  # 5 batches an epoch (the last one has 4 samples)
            for x, y in loader:
                step_once(scenario, model, opt, sched, scaler, x, y)
                step += 1
                if step == stop_after and not job.get("save_at_epoch_end"):
                    return checkpoint(epoch)
            if stop_after is not None and step >= stop_after:
                return checkpoint(epoch)
    else:
        if job.get("resume"):
            info = tk.load_checkpoint(job["resume"], map_location="cpu", **objects)
            assert info.step == info.extra["update_steps"]
            step = info.step
        while step < 12:
            x, y = batch(scenario)
            step_once(scenario, model, opt, sched, scaler, x, y)
            step += 1
            if step == stop_after:
                return checkpoint(0)
    assert all(math.isfinite(float(v.float().sum())) for v in model.state_dict().values())
    final: dict[str, Any] = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "lr": [g["lr"] for g in opt.param_groups],
    }
    if scaler is not None:
        final["scale"] = scaler.get_scale()
    final["next_random"] = (torch.rand(3), random.random(), float(np.random.rand()))
    tk.save(final, job["out"])
    return None


def main() -> None:
    # Several independent runs per process (each starts by re-seeding everything) keep the
    # number of interpreter start-ups, the slow part of this test, at three.
    for job in json.loads(sys.argv[1]):
        run(job)


if __name__ == "__main__":
    main()
