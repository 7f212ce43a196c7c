"""Kill a training run, resume it, and get bit for bit the run that was never interrupted.

Run: python examples/train_and_resume.py   (TORCHKEEP_EXAMPLE_QUICK=1: a few seconds, CPU)

Three training processes run the same script (a small MLP with dropout, Adam, a StepLR
scheduler, a shuffled ``tk.ResumableLoader``):

1. a reference run that trains to the end without interruption;
2. a run that saves checkpoints with ``tk.CheckpointManager`` every few steps and is killed
   with SIGKILL in the middle of an epoch, after its last save (the steps since are lost);
3. a run with the same code that calls ``mgr.restore()``, finds the newest good checkpoint,
   and continues from there: model, optimizer, scheduler, data order and RNG state.

At the end the final weights of runs 1 and 3 are compared with ``torch.equal``: identical.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

import torchkeep as tk

QUICK = os.environ.get("TORCHKEEP_EXAMPLE_QUICK") == "1"
EPOCHS = 3 if QUICK else 10
SAVE_EVERY = 3  # optimizer steps
KILL_AT = 11  # optimizer step at which run 2 dies (mid-epoch: 8 batches per epoch)


def train(run_dir: Path, *, kill_at: int | None) -> None:
    """One training process. Resumes from ``run_dir`` if it holds a checkpoint."""
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    data = TensorDataset(torch.randn(64, 8), torch.randn(64, 1))
    # A DataLoader that remembers its place mid-epoch (and draws no global random numbers).
    loader = tk.ResumableLoader(data, batch_size=8, shuffle=True, seed=0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)

    with tk.CheckpointManager(
        run_dir / "ckpt", keep_last=2, model=model, optimizer=optimizer, scheduler=scheduler, loader=loader
    ) as mgr:
        info = mgr.restore()  # None on a fresh run
        step = info.step if info is not None else 0
        start_epoch = loader.epoch
        print(f"  {'resumed at step ' + str(step) if info else 'fresh run'} (epoch {start_epoch})", flush=True)
        for epoch in range(start_epoch, EPOCHS):
            for x, y in loader:  # after a restore: the rest of the interrupted epoch only
                loss = nn.functional.mse_loss(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                if step % SAVE_EVERY == 0:
                    mgr.save(step=step, epoch=epoch, metrics={"loss": loss.item()})
                    print(f"  step {step:3d}  loss {loss.item():.4f}  saved", flush=True)
                if step == kill_at:
                    print(f"  step {step:3d}  SIGKILL (steps since the last save are lost)", flush=True)
                    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
    tk.save(model.state_dict(), run_dir / "final.safetensors")
    print(f"  finished at step {step}", flush=True)


def run(run_dir: Path, *, kill_at: int | None = None) -> int:
    args = [sys.executable, __file__, "--train", str(run_dir)] + ([] if kill_at is None else [str(kill_at)])
    return subprocess.run(args, check=False).returncode


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        reference, interrupted = Path(tmp, "reference"), Path(tmp, "interrupted")
        print("1. reference run, never interrupted")
        assert run(reference) == 0
        print("2. the same run, killed")
        rc = run(interrupted, kill_at=KILL_AT)
        print(f"  exit status {rc}; checkpoints on disk: {[c.step for c in tk.list_checkpoints(interrupted / 'ckpt')]}")
        print("3. the same command again: it resumes")
        assert run(interrupted) == 0

        a = tk.load(reference / "final.safetensors")
        b = tk.load(interrupted / "final.safetensors")
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        print(f"bit-exact: {same} ({len(a)} tensors compared with torch.equal)")
        if not same:
            raise SystemExit(1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--train":
        torch.set_num_threads(1)
        train(Path(sys.argv[2]), kill_at=int(sys.argv[3]) if len(sys.argv) > 3 else None)
    else:
        main()
