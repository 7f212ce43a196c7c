"""Framework checkpoints: each framework's default files against torchkeep's integration, same run.

One model (``--size`` MiB of fp32 parameters in Linear(1024, 1024) layers; default 512 MiB) plus
its Adam state (2x more). For each framework, "save" is one checkpoint written the framework's way
and torchkeep's way; "resume" reads it back and restores the live model and optimizer (what a
restart pays before its first step). Files are in the page cache on resume.

- Lightning: ``TorchCheckpointIO`` (torch.save of the whole dict) vs ``TorchkeepCheckpointIO``,
  on the dict Lightning builds (``state_dict`` + ``optimizer_states`` + progress).
- HF Trainer: ``Trainer`` vs ``TorchkeepTrainer`` saving/loading optimizer, scheduler and RNG
  (``_save_optimizer_and_scheduler`` + ``_save_rng_state`` and their loads; the model weights
  are ``save_pretrained``'s safetensors in both and are not timed).
- Accelerate: ``accelerator.save_state`` / ``load_state`` vs torchkeep's ``save_state`` / ``load_state``.

Usage::

    PYTHONPATH=$PWD/src python benchmarks/integrations.py --size 64     # seconds
    PYTHONPATH=$PWD/src python benchmarks/integrations.py               # 512 MiB + Adam: ~1.5 GiB state

Targets (issue 14): save at least 0.95x the default's speed; resume at least 3x faster.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

warnings.filterwarnings("ignore")
DIM = 1024


def build(size_mib: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    layers = max(1, size_mib * 2**20 // (DIM * DIM * 4))
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(DIM, DIM) for _ in range(layers)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3)
    opt.step()
    for p in model.parameters():
        p.grad = None
    return model, opt


def timed(fn: Callable[[], Any], repeat: int, before: Callable[[], Any] | None = None) -> float:
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fresh(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def lightning_cases(model: nn.Module, opt: torch.optim.Optimizer, root: Path, repeat: int) -> dict[str, float]:
    from lightning.pytorch.plugins import TorchCheckpointIO

    from torchkeep.integrations.lightning import TorchkeepCheckpointIO

    ckpt = {
        "epoch": 0,
        "global_step": 1,
        "state_dict": model.state_dict(),
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [],
        "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 1}}}},
    }
    out: dict[str, float] = {}
    for name, io in (("default", TorchCheckpointIO()), ("torchkeep", TorchkeepCheckpointIO())):
        path = root / f"lightning-{name}" / "last.ckpt"
        out[f"save {name}"] = timed(lambda io=io, path=path: io.save_checkpoint(ckpt, path), repeat)

        def resume(io: Any = io, path: Path = path) -> None:
            loaded = io.load_checkpoint(path)
            model.load_state_dict(loaded["state_dict"])
            opt.load_state_dict(loaded["optimizer_states"][0])

        out[f"resume {name}"] = timed(resume, repeat)
    return out


def hf_cases(model: nn.Module, opt: torch.optim.Optimizer, root: Path, repeat: int) -> dict[str, float]:
    import transformers

    from torchkeep.integrations.transformers import TorchkeepTrainer

    out: dict[str, float] = {}
    for name, cls in (("default", transformers.Trainer), ("torchkeep", TorchkeepTrainer)):
        args = transformers.TrainingArguments(output_dir=str(root / f"hf-{name}"), report_to=[], use_cpu=True)
        trainer = cls(model=model, args=args)
        trainer.create_optimizer_and_scheduler(num_training_steps=10)
        for param in model.parameters():  # one step: the Trainer's AdamW gets its full state
            param.grad = torch.full_like(param, 1e-3)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        path = root / f"hf-{name}" / "checkpoint-1"

        def save(trainer: Any = trainer, path: Path = path) -> None:
            trainer._save_optimizer_and_scheduler(str(path))
            trainer._save_rng_state(str(path))

        out[f"save {name}"] = timed(save, repeat, before=lambda path=path: fresh(path))

        def resume(trainer: Any = trainer, path: Path = path) -> None:
            trainer._load_optimizer_and_scheduler(str(path))
            trainer._load_rng_state(str(path))

        out[f"resume {name}"] = timed(resume, repeat)
    return out


def accelerate_cases(model: nn.Module, opt: torch.optim.Optimizer, root: Path, repeat: int) -> dict[str, float]:
    import accelerate

    from torchkeep.integrations.accelerate import load_state, save_state

    acc = accelerate.Accelerator(cpu=True)
    pmodel, popt = acc.prepare(model, opt)
    out: dict[str, float] = {}
    default, mine = root / "acc-default", root / "acc-torchkeep"
    out["save default"] = timed(lambda: acc.save_state(str(default)), repeat, before=lambda: fresh(default))
    out["resume default"] = timed(lambda: acc.load_state(str(default)), repeat)
    out["save torchkeep"] = timed(lambda: save_state(acc, mine), repeat, before=lambda: fresh(mine))
    out["resume torchkeep"] = timed(lambda: load_state(acc, mine), repeat)
    del pmodel, popt
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512, help="MiB of fp32 parameters (Adam adds 2x); default 512")
    p.add_argument("--repeat", type=int, default=3, help="runs per case (median shown)")
    p.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    p.add_argument("--only", default="lightning,hf,accelerate", help="comma-separated frameworks")
    a = p.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    model, opt = build(a.size)
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values()) * 3
    print(f"state: {len(model)} x Linear({DIM}, {DIM}) + Adam = {nbytes / 2**30:.2f} GiB; median of {a.repeat} runs")
    print(f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}")
    cases = {
        "lightning": ("Lightning", lightning_cases),
        "hf": ("HF Trainer", hf_cases),
        "accelerate": ("Accelerate", accelerate_cases),
    }
    rows = []
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        for key in a.only.split(","):
            label, fn = cases[key]
            r = fn(model, opt, Path(tmp), a.repeat)
            rows.append((label, r))
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp, exist_ok=True)
    print()
    print(
        "| framework | save default (s) | save torchkeep (s) | save speed vs default | resume default (s) | resume torchkeep (s) | resume speed-up |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r in rows:
        print(
            f"| {label} | {r['save default']:.3f} | {r['save torchkeep']:.3f} | {r['save default'] / r['save torchkeep']:.2f}x "
            f"| {r['resume default']:.3f} | {r['resume torchkeep']:.3f} | {r['resume default'] / r['resume torchkeep']:.2f}x |"
        )


if __name__ == "__main__":
    main()
