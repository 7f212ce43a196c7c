"""File I/O: tk.save / tk.load against torch.save / torch.load, safetensors and raw file I/O.

One run measures every case on the same state dict (32 x nn.Linear(4096, 4096) fp32, ~2 GiB;
``--quick``: 8 x nn.Linear(2048, 2048), ~128 MiB), each case in a fresh subprocess (median of
``--repeat`` runs, default 3) so that its
peak RSS is its own. Saves end with fsync (as tk.save does); loads read files that are in the
page cache (each file is read once before the load cases). "touch" reads one element per 4 KiB
page of every tensor, which is what it costs to fault in a memory-mapped tensor.

Usage::

    PYTHONPATH=$PWD/src python benchmarks/io.py --quick
    PYTHONPATH=$PWD/src python benchmarks/io.py            # ~2 GiB, needs ~8 GiB free RAM and disk
    PYTHONPATH=$PWD/src python benchmarks/io.py --cases load --dir /dev/shm/tk   # loads only, on tmpfs

Targets (issue 2): save >= 0.95x raw write; save adds <= 64 MiB + largest tensor over the state's
own memory; lazy load of 2 GiB <= 50 ms; load + verify + touch >= 5x faster than
torch.load(weights_only=True) with the file in page cache.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SAVE_CASES = ["raw write", "tk.save", "torch.save", "safetensors save_file"]
LOAD_CASES = [
    "raw read",
    "tk.load lazy (verify=False)",
    "tk.load + touch (verify=False)",
    "tk.load verify + touch",
    "torch.load(weights_only=True) + touch",
    "torch.load(mmap=True) + touch",
    "safetensors load_file + touch",
]
PAGE = 4096


def _rss_kib() -> tuple[int, int]:
    """(current RSS, current anonymous RSS) in KiB, from /proc (Linux)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                fields[key] = int(value.split()[0])
    return fields.get("VmRSS", 0), fields.get("RssAnon", 0)


def _state(layers: int, dim: int) -> dict[str, Any]:
    import torch

    state = {}
    for i in range(layers):
        # Filled (not torch.empty): every page must be real memory, as in a trained model.
        state[f"layers.{i}.weight"] = torch.full((dim, dim), 0.001 * (i + 1))
        state[f"layers.{i}.bias"] = torch.full((dim,), -0.5 * i)
    return state


def _touch(obj: Any) -> float:
    import torch

    total = 0.0
    if isinstance(obj, torch.Tensor):
        flat = obj.reshape(-1)
        total += float(flat[:: max(1, PAGE // flat.element_size())].sum())
    elif isinstance(obj, dict):
        for v in obj.values():
            total += _touch(v)
    return total


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _raw_write(state: dict[str, Any], path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for t in state.values():
            view = memoryview(t.reshape(-1).numpy()).cast("B")
            for i in range(0, view.nbytes, 16 << 20):
                chunk = view[i : i + (16 << 20)]
                while chunk.nbytes:
                    chunk = chunk[os.write(fd, chunk) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def run_case(case: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one case in this (fresh) process and return its measurements."""
    import torch

    import torchkeep as tk

    torch.set_num_threads(min(4, os.cpu_count() or 1))
    work = Path(args.dir)
    out: dict[str, Any] = {"case": case}
    if case in SAVE_CASES:
        state = _state(args.layers, args.dim)
        base_rss, _ = _rss_kib()
        dest = str(work / "out.bin")
        if os.path.exists(dest):
            os.unlink(dest)
        start = time.perf_counter()
        if case == "raw write":
            _raw_write(state, dest)
        elif case == "tk.save":
            tk.save(state, dest)
        elif case == "torch.save":
            with open(dest, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
        elif case == "safetensors save_file":
            from safetensors.torch import save_file

            save_file(state, dest)
            _fsync_path(dest)
        out["seconds"] = time.perf_counter() - start
        out["bytes"] = sum(t.numel() * t.element_size() for t in state.values())
        out["largest_tensor"] = max(t.numel() * t.element_size() for t in state.values())
        out["rss_over_state_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
        os.unlink(dest)
        return out
    tk_file, pt_file = str(work / "state.safetensors"), str(work / "state.pt")
    base_rss, base_anon = _rss_kib()
    start = time.perf_counter()
    if case == "raw read":
        size = os.path.getsize(tk_file)
        buf = bytearray(size)
        view = memoryview(buf)
        with open(tk_file, "rb", buffering=0) as f:
            got = 0
            while got < size:
                got += f.readinto(view[got:]) or 0
        result: Any = buf
    elif case.startswith("tk.load"):
        verify = "verify +" in case
        result = tk.load(tk_file, verify=verify)
        if "touch" in case:
            _touch(result)
    elif case.startswith("torch.load(weights_only"):
        result = torch.load(pt_file, weights_only=True)
        _touch(result)
    elif case.startswith("torch.load(mmap"):
        result = torch.load(pt_file, mmap=True, weights_only=True)
        _touch(result)
    elif case.startswith("safetensors"):
        from safetensors.torch import load_file

        result = load_file(tk_file)
        _touch(result)
    out["seconds"] = time.perf_counter() - start
    out["bytes"] = os.path.getsize(tk_file)
    _, anon = _rss_kib()
    out["peak_rss_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    # Anonymous memory is what the load really costs; file-backed pages of a mapping are page cache.
    out["anon_rss_mib"] = (anon - base_anon) / 1024
    del result
    return out


def _child(case: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--case", case, "--dir", args.dir, "--layers", str(args.layers)]
    cmd += ["--dim", str(args.dim)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"case {case!r} failed:\n{proc.stderr}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _medians(cases: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The median of ``--repeat`` runs of each case (each in a fresh process), by time.

    The cases take turns (round r runs them all, starting one further along each round), so a
    burst of load from other processes, or the page cache left by the previous case, does not
    fall on one case only.
    """
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    for r in range(args.repeat):
        for case in cases[r % len(cases) :] + cases[: r % len(cases)]:
            if case in LOAD_CASES:
                # Re-read the file this case loads right before it: the save cases (and other
                # processes) may have pushed it out of the page cache.
                _warm(Path(args.dir) / ("state.pt" if case.startswith("torch.load") else "state.safetensors"))
            runs[case].append(_child(case, args))
    out = []
    for case in cases:
        ordered = sorted(runs[case], key=lambda run: float(run["seconds"]))
        out.append(ordered[len(ordered) // 2])
    return out


def _warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(64 << 20):
            pass


def _prepare(args: argparse.Namespace) -> None:
    """Write the files the load cases read, then read them once so they sit in the page cache."""
    code = (
        "import sys, torch, torchkeep as tk; sys.path.insert(0, sys.argv[1]); from io_bench_state import make;"
        "s = make(int(sys.argv[2]), int(sys.argv[3])); tk.save(s, sys.argv[4] + '/state.safetensors');"
        "torch.save(s, sys.argv[4] + '/state.pt')"
    )
    helper = Path(args.dir) / "io_bench_state.py"
    helper.write_text(
        "import torch\n"
        "def make(layers, dim):\n"
        "    return {k: v for i in range(layers) for k, v in ((f'layers.{i}.weight', torch.full((dim, dim), 0.001 * (i + 1))),"
        " (f'layers.{i}.bias', torch.full((dim,), -0.5 * i)))}\n"
    )
    subprocess.run([sys.executable, "-c", code, args.dir, str(args.layers), str(args.dim), args.dir], check=True)
    for name in ("state.safetensors", "state.pt"):
        with open(Path(args.dir) / name, "rb", buffering=0) as f:
            os.fsync(f.fileno())  # no dirty pages left to slow down the save cases' fsync


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="~128 MiB instead of ~2 GiB")
    parser.add_argument("--dir", default=None, help="where to write the files (default: a temp dir)")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per case, each in a fresh process; the median is kept (default 3)",
    )
    parser.add_argument("--cases", choices=["all", "save", "load"], default="all", help="which cases to run")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    if args.layers is None:
        args.layers = 8 if args.quick else 32
    if args.dim is None:
        args.dim = 2048 if args.quick else 4096
    if args.repeat is None:
        args.repeat = 3
    if args.case is not None:
        print(json.dumps(run_case(args.case, args)))
        return
    own_dir = args.dir is None
    args.dir = args.dir or tempfile.mkdtemp(prefix="tk-io-bench-")
    try:
        _prepare(args)
        cases = {"save": SAVE_CASES, "load": LOAD_CASES, "all": SAVE_CASES + LOAD_CASES}[args.cases]
        results = _medians(cases, args)
    finally:
        for name in ("state.safetensors", "state.pt", "out.bin", "io_bench_state.py"):
            with contextlib.suppress(OSError):
                os.unlink(Path(args.dir) / name)
        if own_dir:
            shutil.rmtree(args.dir, ignore_errors=True)
    report(results, args)


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    by = {r["case"]: r for r in results}
    size = 4 * args.layers * (args.dim * args.dim + args.dim)
    load = os.getloadavg()
    print(
        f"\nstate: {args.layers} x Linear({args.dim}, {args.dim}) fp32 = {size / 2**20:.0f} MiB, "
        f"largest tensor {4 * args.dim * args.dim / 2**20:.0f} MiB; files in {args.dir}; "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n"
    )
    targets = []
    if "raw write" in by:
        targets += _report_saves(by)
    if "raw read" in by:
        targets += _report_loads(by)
    print("\ntargets:")
    for line in targets:
        print("  " + line)
    if args.json:
        print(json.dumps(results, indent=1))


def _report_saves(by: dict[str, dict[str, Any]]) -> list[str]:
    print("| save (with fsync) | seconds | GB/s | vs raw write | peak RSS over the state |\n|---|---:|---:|---:|---:|")
    raw = by["raw write"]["seconds"]
    for case in SAVE_CASES:
        r = by[case]
        print(
            f"| {case} | {r['seconds']:.3f} | {r['bytes'] / r['seconds'] / 1e9:.2f} | {raw / r['seconds']:.2f}x "
            f"| {r['rss_over_state_mib']:.0f} MiB |"
        )
    s = by["tk.save"]
    budget = 64 + s["largest_tensor"] / 2**20
    return [
        f"save >= 0.95x raw write: {by['raw write']['seconds'] / s['seconds']:.2f}x",
        f"save RSS over state <= {budget:.0f} MiB: {s['rss_over_state_mib']:.0f} MiB",
    ]


def _report_loads(by: dict[str, dict[str, Any]]) -> list[str]:
    print("\n| load (file in page cache) | seconds | GB/s | vs raw read | vs torch.load | peak RSS | anon RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    raw = by["raw read"]["seconds"]
    torch_load = by["torch.load(weights_only=True) + touch"]["seconds"]
    for case in LOAD_CASES:
        r = by[case]
        print(
            f"| {case} | {r['seconds']:.4f} | {r['bytes'] / r['seconds'] / 1e9:.2f} | {raw / r['seconds']:.2f}x "
            f"| {torch_load / r['seconds']:.1f}x | {r['peak_rss_mib']:.0f} MiB | {r['anon_rss_mib']:.0f} MiB |"
        )
    lazy = by["tk.load lazy (verify=False)"]["seconds"]
    verify = by["tk.load verify + touch"]["seconds"]
    return [
        f"lazy load <= 50 ms (for 2 GiB): {lazy * 1000:.1f} ms",
        f"load + verify + touch >= 5x torch.load(weights_only=True): {torch_load / verify:.1f}x",
    ]


if __name__ == "__main__":
    main()
