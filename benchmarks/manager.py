"""How long does ``CheckpointManager.save()`` stall the training loop? async_save vs synchronous.

For a ~1 GiB state (a stack of Linear layers plus AdamW moments), in one run:

* ``tk.save_checkpoint``       — a plain atomic save (write + fsync), the baseline;
* ``manager sync save()``      — the manager's full synchronous save (write, verify, commit,
  retention): what the loop waits for without async_save;
* ``manager async save()``     — what the loop waits for with ``async_save=True`` (snapshot to
  host memory), measured from the second save on (buffers are reused from then on);
* ``async save() + wait()``    — the same save until the file is durable, for reference.

The target is async blocking ≤ 10 % of the synchronous save. Run ``python benchmarks/manager.py``
(``--quick`` for ~64 MiB in seconds; ``--dir`` to put the files on a given disk).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch

import torchkeep as tk


def build(total_bytes: int, device: str = "cpu") -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Model + AdamW whose state (params + 2 moments) is about ``total_bytes``."""
    width = 2048
    per_layer = width * width * 4 * 3  # weight + exp_avg + exp_avg_sq, float32
    layers = max(1, round(total_bytes / per_layer))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # materialize the moments
    return model, opt


def state_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    n = sum(p.numel() * p.element_size() for p in model.parameters())
    for s in opt.state.values():
        n += sum(v.numel() * v.element_size() for v in s.values() if isinstance(v, torch.Tensor))
    return n


def mutate(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~64 MiB state, 2 repeats")
    ap.add_argument("--size-mib", type=int, default=None, help="state size (default 1024, quick 64)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--device", default="cpu", help="where the state lives: cpu or cuda (pinned async copies)")
    args = ap.parse_args()
    size = (args.size_mib or (64 if args.quick else 1024)) * 2**20
    repeats = args.repeats or (2 if args.quick else 3)
    torch.manual_seed(0)
    model, opt = build(size, args.device)
    nbytes = state_bytes(model, opt)
    root = Path(tempfile.mkdtemp(prefix="tk-bench-manager-", dir=args.dir))

    plain, sync, blocking, total = [], [], [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        tk.save_checkpoint(root / f"plain-{r}.safetensors", model=model, optimizer=opt, step=r)
        plain.append(time.perf_counter() - t0)
        os.unlink(root / f"plain-{r}.safetensors")

    with tk.CheckpointManager(root / "sync", keep_last=1, model=model, optimizer=opt) as mgr:
        for r in range(repeats):
            mutate(model)
            t0 = time.perf_counter()
            mgr.save(step=r)
            sync.append(time.perf_counter() - t0)

    with tk.CheckpointManager(root / "async", keep_last=1, async_save=True, model=model, optimizer=opt) as mgr:
        for r in range(repeats + 1):
            mutate(model)
            t0 = time.perf_counter()
            mgr.save(step=r)
            t1 = time.perf_counter()
            mutate(model)  # training goes on at once
            mgr.wait()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            if r > 0:  # the first save also allocates the host buffers
                blocking.append(t1 - t0)
                total.append(t2 - t0)

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    base = med(sync)
    rows = [
        ("tk.save_checkpoint (plain atomic save)", med(plain)),
        ("manager sync save() — loop blocked", base),
        ("manager async save() — loop blocked", med(blocking)),
        ("manager async save() + wait() — durable", med(total)),
    ]
    print(f"state: {nbytes / 2**30:.2f} GiB ({nbytes / 2**20:.0f} MiB), repeats: {repeats}, dir: {root}")
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"torch {torch.__version__}, state on {args.device}\n")
    print(f"| {'what':<42} | {'seconds (median)':>16} | {'vs sync save':>12} |")
    print(f"|{'-' * 44}|{'-' * 18}|{'-' * 14}|")
    for name, t in rows:
        print(f"| {name:<42} | {t:>16.3f} | {t / base:>11.1%} |")
    ratio = med(blocking) / base
    print(f"\nasync blocking / sync save = {ratio:.1%} (target <= 10%): {'PASS' if ratio <= 0.10 else 'MISS'}")
    for p in sorted(root.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    root.rmdir()


if __name__ == "__main__":
    main()
