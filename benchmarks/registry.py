"""Whole-model files: tk.save_model / tk.load_model against torch.save(model) and state_dict + rebuild.

One run measures every case on the same registered model (a stack of ``--layers`` x
nn.Linear(``--dim``, ``--dim``) fp32 built by a registered factory; default 8 x 4096, 512 MiB;
``--quick``: 8 x 1024, 32 MiB). Each case is repeated ``--repeats`` times, median reported; the
files are read once first so every load reads from the page cache. Loads include building the
model (its constructor runs and initializes weights, as it does for every rebuild), which is
listed on its own as "build only" so the file part can be read off. tk.load_model maps the file,
so its tensors are read when first used: the "+ first forward" column adds one forward pass to
every case, which is what a server's first request sees.

Usage::

    PYTHONPATH=$PWD/src python benchmarks/registry.py --quick
    PYTHONPATH=$PWD/src python benchmarks/registry.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import torchkeep as tk


@tk.register(name="bench-stack")
def stack(layers: int, dim: int) -> nn.Module:
    return nn.Sequential(*(nn.Linear(dim, dim) for _ in range(layers)))


def _median(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _read(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 x Linear(1024, 1024): seconds")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dim = args.dim or (1024 if args.quick else 4096)
    torch.manual_seed(0)
    model = stack(args.layers, dim).eval()
    mib = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    x = torch.randn(2, dim)
    with torch.no_grad():
        expected = model(x)

    with tempfile.TemporaryDirectory(prefix="tk-bench-registry-") as d:
        whole, sd, tkf = (os.path.join(d, n) for n in ("whole.pt", "state.pt", "model.safetensors"))

        def torch_whole_load() -> nn.Module:
            return torch.load(whole, weights_only=False)  # pickle: runs code named by the file

        def torch_rebuild() -> nn.Module:
            m = stack(args.layers, dim)
            m.load_state_dict(torch.load(sd, weights_only=True, mmap=True))
            return m.eval()

        saves = {
            "torch.save(model)": lambda: torch.save(model, whole),
            "torch.save(state_dict)": lambda: torch.save(model.state_dict(), sd),
            "tk.save_model": lambda: tk.save_model(model, tkf),
        }
        loads: dict[str, Callable[[], Any]] = {
            "build only (constructor)": lambda: stack(args.layers, dim),
            "torch.load(whole model, weights_only=False)": torch_whole_load,
            "build + load_state_dict(torch.load(weights_only=True))": torch_rebuild,
            "tk.load_model": lambda: tk.load_model(tkf),
            "tk.load_model(verify=False)": lambda: tk.load_model(tkf, verify=False),
        }
        save_times = {name: _median(fn, args.repeats) for name, fn in saves.items()}
        for path in (whole, sd, tkf):
            _read(path)
        for name, fn in loads.items():
            if name.startswith("build"):
                continue
            with torch.no_grad():
                assert torch.equal(fn()(x), expected), name
        load_times = {name: _median(fn, args.repeats) for name, fn in loads.items()}

        def first_forward(fn: Callable[[], Any]) -> Callable[[], Any]:
            def run() -> Any:
                with torch.no_grad():
                    return fn()(x)

            return run

        forward_times = {name: _median(first_forward(fn), args.repeats) for name, fn in loads.items()}

    print(f"model: {args.layers} x Linear({dim}, {dim}) fp32, {mib:.0f} MiB; median of {args.repeats}")
    print(f"load average: {' '.join(f'{v:.1f}' for v in os.getloadavg())}\n")
    base = save_times["torch.save(model)"]
    print(f"| {'save':<55} | seconds | vs torch.save(model) |")
    print(f"|{'-' * 57}|---------|----------------------|")
    for name, t in save_times.items():
        print(f"| {name:<55} | {t:7.3f} | {base / t:19.2f}x |")
    base = load_times["torch.load(whole model, weights_only=False)"]
    fbase = forward_times["torch.load(whole model, weights_only=False)"]
    print(f"\n| {'load':<55} | seconds | vs torch.load(whole) | + first forward | vs torch.load(whole) |")
    print(f"|{'-' * 57}|---------|----------------------|-----------------|----------------------|")
    for name, t in load_times.items():
        f = forward_times[name]
        print(f"| {name:<55} | {t:7.3f} | {base / t:19.2f}x | {f:15.3f} | {fbase / f:19.2f}x |")


if __name__ == "__main__":
    main()
