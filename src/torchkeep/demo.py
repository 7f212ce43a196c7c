"""The end-to-end demo behind ``torchkeep demo``: every capability, on a small built-in model.

Each step is a function taking a :class:`DemoContext`; the CLI shows them with progress output.
Steps are added here as features land, so the demo always shows everything that exists.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import _api, _checkpoint, _format
from .errors import CorruptCheckpointError

__all__ = ["STEPS", "DemoContext", "run_demo", "train_steps"]

log = logging.getLogger(__name__)


@dataclass
class DemoContext:
    """Shared state between demo steps."""

    workdir: str
    notes: list[str] = field(default_factory=list)
    total_steps: int = 60
    kill_at: int = 25

    def note(self, line: str) -> None:
        self.notes.append(line)


def _make() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    return model, opt, sched


def train_steps(workdir: str, start: int, stop: int, *, resume: bool) -> torch.nn.Module:
    """Train the demo MLP from ``start`` to ``stop``, saving a checkpoint every step.

    Dropout and the synthetic batches draw from the global RNG, so a resumed run only matches
    an uninterrupted one if the checkpoint restores RNG state exactly.
    """
    model, opt, sched = _make()
    ckpt = os.path.join(workdir, "train.safetensors")
    if resume:
        info = _checkpoint.load_checkpoint(ckpt, model=model, optimizer=opt, scheduler=sched)
        start = int(info.step or 0)
    for step in range(start, stop):
        x = torch.randn(32, 10)
        y = x.sum(dim=1, keepdim=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        _checkpoint.save_checkpoint(
            ckpt, model=model, optimizer=opt, scheduler=sched, step=step + 1, metrics={"loss": loss.item()}
        )
    return model


def step_train_and_resume(ctx: DemoContext) -> None:
    """Train straight through; then train in a child process that is killed, and resume."""
    straight_dir = os.path.join(ctx.workdir, "straight")
    os.makedirs(straight_dir, exist_ok=True)
    reference = train_steps(straight_dir, 0, ctx.total_steps, resume=False)

    killed_dir = os.path.join(ctx.workdir, "killed")
    os.makedirs(killed_dir, exist_ok=True)
    ckpt = os.path.join(killed_dir, "train.safetensors")
    code = f"from torchkeep.demo import train_steps; train_steps({killed_dir!r}, 0, {ctx.total_steps}, resume=False)"
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.exists(ckpt) and (_checkpoint.read_info(ckpt).step or 0) >= ctx.kill_at:
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        raise RuntimeError(f"demo training child ended (exit {proc.returncode}) before it could be killed")
    proc.send_signal(signal.SIGKILL)  # mid-run, possibly mid-save: the file must stay whole
    proc.wait()
    info = _checkpoint.read_info(ckpt)
    ctx.note(f"training process SIGKILLed at step {info.step} of {ctx.total_steps}; resuming from its checkpoint")
    resumed = train_steps(killed_dir, 0, ctx.total_steps, resume=True)
    same = all(
        torch.equal(a, b) for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True)
    )
    if not same:
        raise RuntimeError("resumed parameters differ from the uninterrupted run")
    ctx.note(f"resumed run is bit-identical to the uninterrupted run after {ctx.total_steps} steps")


def step_verify_and_safety(ctx: DemoContext) -> None:
    """Verify checksums, show that corruption is caught by tensor name, and that nothing unpickles."""
    path = os.path.join(ctx.workdir, "straight", "train.safetensors")
    reader = _format.open_file(path)
    reader.verify()
    ctx.note(f"{len(reader.names)} tensors verified (xxh3) in {os.path.basename(path)}")
    bad = os.path.join(ctx.workdir, "corrupt.safetensors")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[-3] ^= 0x01
    with open(bad, "wb") as f:
        f.write(data)
    try:
        _api.load(bad)
    except CorruptCheckpointError as exc:
        ctx.note(f"a flipped bit is caught: {str(exc).split(': ', 1)[-1][:100]}")
    else:  # pragma: no cover - would be a bug
        raise RuntimeError("corruption was not detected")


STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("train, kill, resume bit-exactly", step_train_and_resume),
    ("verify checksums and catch corruption", step_verify_and_safety),
]


def run_demo(workdir: str | None = None, *, on_step: Callable[[str, DemoContext], None] | None = None) -> DemoContext:
    """Run every demo step in ``workdir`` (a temporary directory by default).

    Example:
        >>> ctx = run_demo()  # doctest: +SKIP
        >>> print("\\n".join(ctx.notes))  # doctest: +SKIP
    """
    ctx = DemoContext(workdir or tempfile.mkdtemp(prefix="torchkeep-demo-"))
    for title, fn in STEPS:
        if on_step is not None:
            on_step(title, ctx)
        fn(ctx)
    return ctx
