"""Training checkpoints: tk.save_checkpoint / tk.load_checkpoint against torch.save / torch.load.

The state is a model of 16 x nn.Linear(4096, 4096) fp32 (~1 GiB of parameters) plus its Adam
state (exp_avg and exp_avg_sq: 2x more), ~3 GiB in all (``--quick``: 8 x nn.Linear(1024, 1024),
~96 MiB). Every save ends with fsync (tk.save_checkpoint does, through its atomic commit); the raw
write is the same bytes written straight from tensor memory to one file, then fsync — the floor.
Loads read files that are in the page cache and restore into the same live model and optimizer.
"touch" then reads one element per 4 KiB page of every optimizer state tensor, which is what
the first optimizer step costs extra for memory-mapped state (tk.load_checkpoint, mmap=True).

Usage::

    PYTHONPATH=$PWD/src python benchmarks/checkpoint.py --quick
    PYTHONPATH=$PWD/src python benchmarks/checkpoint.py           # ~3 GiB: needs ~8 GiB RAM and disk

Targets (issue 3): save within 1.05x of the raw write; load faster than torch.load.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import torchkeep as tk

PAGE = 4096


def build(layers: int, dim: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    with torch.no_grad():
        model = nn.Sequential(*[nn.Linear(dim, dim) for _ in range(layers)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3)
    opt.step()  # allocates exp_avg / exp_avg_sq: the optimizer state is 2x the parameters
    for p in model.parameters():
        p.grad = None
    return model, opt


def state_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    n = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    for s in opt.state.values():
        n += sum(t.numel() * t.element_size() for t in s.values() if isinstance(t, torch.Tensor))
    return n


def raw_write(path: Path, model: nn.Module, opt: torch.optim.Optimizer) -> None:
    tensors = list(model.state_dict().values())
    for s in opt.state.values():
        tensors.extend(t for t in s.values() if isinstance(t, torch.Tensor))
    with open(path, "wb", buffering=0) as f:
        for t in tensors:
            f.write(memoryview(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()))
        os.fsync(f.fileno())


def torch_save(path: Path, model: nn.Module, opt: torch.optim.Optimizer) -> None:
    with open(path, "wb") as f:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1}, f)
        f.flush()
        os.fsync(f.fileno())


def touch(opt: torch.optim.Optimizer) -> float:
    total = 0.0
    for s in opt.state.values():
        for t in s.values():
            if isinstance(t, torch.Tensor) and t.numel():
                flat = t.reshape(-1)
                step = max(1, PAGE // t.element_size())
                total += float(flat[::step].sum())
    return total


def timed(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="~96 MiB instead of ~3 GiB (seconds)")
    p.add_argument("--repeat", type=int, default=None, help="runs per case (median is shown)")
    p.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    a = p.parse_args()
    layers, dim = (8, 1024) if a.quick else (16, 4096)
    repeat = a.repeat or (5 if a.quick else 3)
    torch.set_num_threads(1)

    model, opt = build(layers, dim)
    nbytes = state_bytes(model, opt)
    print(f"state: {layers} x Linear({dim}, {dim}) + Adam = {nbytes / 2**30:.2f} GiB; median of {repeat} runs")
    print(f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}")

    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        d = Path(tmp)
        raw, tkp, ptp = d / "raw.bin", d / "ckpt.safetensors", d / "ckpt.pt"
        save_rows = [
            ("raw write + fsync (floor)", lambda: raw_write(raw, model, opt)),
            ("tk.save_checkpoint", lambda: tk.save_checkpoint(tkp, model=model, optimizer=opt, epoch=1)),
            ("torch.save + fsync", lambda: torch_save(ptp, model, opt)),
        ]
        save_times = {}
        for name, fn in save_rows:
            save_times[name] = timed(fn, repeat)
            (raw if name.startswith("raw") else tkp if name.startswith("tk") else ptp).unlink(missing_ok=True)
            fn()  # leave the file for the load cases
        raw.unlink()

        for path in (tkp, ptp):  # into the page cache for every load case alike
            with open(path, "rb") as f:
                while f.read(64 << 20):
                    pass

        def torch_load(mmap: bool, do_touch: bool) -> Callable[[], Any]:
            def run() -> None:
                ckpt = torch.load(ptp, map_location="cpu", weights_only=True, mmap=mmap)
                model.load_state_dict(ckpt["model"])
                opt.load_state_dict(ckpt["optimizer"])
                if do_touch:
                    touch(opt)

            return run

        def tk_load(verify: bool, do_touch: bool) -> Callable[[], Any]:
            def run() -> None:
                tk.load_checkpoint(tkp, model=model, optimizer=opt, verify=verify)
                if do_touch:
                    touch(opt)

            return run

        load_rows = [
            ("torch.load(weights_only=True) + load_state_dict", torch_load(False, False)),
            ("torch.load(mmap=True) + load_state_dict + touch", torch_load(True, True)),
            ("tk.load_checkpoint (verify=True)", tk_load(True, False)),
            ("tk.load_checkpoint (verify=True) + touch", tk_load(True, True)),
            ("tk.load_checkpoint (verify=False) + touch", tk_load(False, True)),
        ]
        load_times = {name: timed(fn, repeat) for name, fn in load_rows}
        sizes = {"tk": tkp.stat().st_size, "torch": ptp.stat().st_size}

    floor = save_times["raw write + fsync (floor)"]
    gib = nbytes / 2**30
    print()
    print("| save | time (s) | GiB/s | vs raw write |")
    print("|---|---:|---:|---:|")
    for name, t in save_times.items():
        print(f"| {name} | {t:.3f} | {gib / t:.2f} | {t / floor:.2f}x |")
    base = load_times["torch.load(weights_only=True) + load_state_dict"]
    print()
    print("| load (file in page cache) | time (s) | GiB/s | speed-up vs torch.load |")
    print("|---|---:|---:|---:|")
    for name, t in load_times.items():
        print(f"| {name} | {t:.3f} | {gib / t:.2f} | {base / t:.2f}x |")
    print()
    print(f"file sizes: torchkeep {sizes['tk'] / 2**30:.3f} GiB, torch.save {sizes['torch'] / 2**30:.3f} GiB")
    save_ratio = save_times["tk.save_checkpoint"] / floor
    load_ratio = base / load_times["tk.load_checkpoint (verify=True) + touch"]
    print(
        f"targets: save {save_ratio:.2f}x raw write (target <= 1.05x): {'met' if save_ratio <= 1.05 else 'MISSED'}; "
        f"load+verify+touch {load_ratio:.2f}x faster than torch.load (target > 1x): "
        f"{'met' if load_ratio > 1 else 'MISSED'}"
    )


if __name__ == "__main__":
    sys.exit(main())
