"""Sharded save (torchkeep.distributed, 2 ranks) vs rank-0 single-file save, same run.

A model of ~1 GiB of float32 parameters is sharded with FSDP2 (``fully_shard``) over 2 CPU
ranks (gloo). Each method saves it REPEATS times; the table shows the median and where the time
goes:

* sharded:   get_model_state_dict (local shards) → DCP planning collectives → each rank writes its
             shard (in parallel) → rank 0 writes index.json and renames the directory (commit).
* rank 0:    all-gather the full state dict to rank 0 (full_state_dict=True, cpu_offload=True)
             → rank 0 writes one file with tk.save.

Usage:
    python benchmarks/distributed.py            # ~1 GiB
    python benchmarks/distributed.py --quick    # ~64 MiB, seconds
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _model(total_bytes: int) -> torch.nn.Module:
    width = 4096 if total_bytes >= 512 * 2**20 else 1024
    per_layer = width * width * 4
    layers = max(2, round(total_bytes / per_layer))
    return torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)])


def _worker(rank: int, world: int, port: int, total_bytes: int, repeats: int, root: str, queue: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=600))
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    import torchkeep as tk
    from torchkeep.checkpoint.sharded import _api as dapi
    from torchkeep.checkpoint.sharded import _dcp

    torch.manual_seed(0)
    model = _model(total_bytes)
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())  # global size (DTensor)

    phases: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t

        return wrapper

    # instrument (benchmark only): where the sharded save spends its time
    _dcp.ShardWriter.write_data = timed("write shard", _dcp.ShardWriter.write_data)  # type: ignore[method-assign]
    _dcp.ShardWriter.finish = timed("commit (index + rename)", _dcp.ShardWriter.finish)  # type: ignore[method-assign]
    dapi.get_model_state_dict = timed("state dict (local shards)", dapi.get_model_state_dict)  # type: ignore[attr-defined]

    results: dict[str, list[dict[str, float]]] = {"sharded": [], "rank0": []}
    for i in range(repeats):
        for method in ("sharded", "rank0"):
            path = os.path.join(root, f"{method}-{i}")
            phases.clear()
            dist.barrier()
            t0 = time.perf_counter()
            if method == "sharded":
                tk.save_checkpoint(path, model=model, rng=False)
            else:
                t = time.perf_counter()
                full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
                phases["gather full state to rank 0"] = time.perf_counter() - t
                if rank == 0:
                    t = time.perf_counter()
                    tk.save({"model": full}, path + ".safetensors")
                    phases["rank 0 writes one file"] = time.perf_counter() - t
                del full
            dist.barrier()
            total = time.perf_counter() - t0
            results[method].append({"total": total, **phases})
            if rank == 0:
                shutil.rmtree(path, ignore_errors=True)
                if os.path.exists(path + ".safetensors"):
                    os.unlink(path + ".safetensors")
    queue.put((rank, nbytes, results))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="~64 MiB model, 2 repeats")
    parser.add_argument("--size-mib", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    size = (args.size_mib or (64 if args.quick else 1024)) * 2**20
    repeats = args.repeats or (2 if args.quick else 3)
    root = tempfile.mkdtemp(prefix="tk-bench-dist-", dir=args.dir)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    world = 2
    try:
        mp.start_processes(
            _worker,
            args=(world, _free_port(), size, repeats, root, queue),
            nprocs=world,
            join=True,
            start_method="spawn",
        )
        got = sorted(queue.get() for _ in range(world))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    nbytes = got[0][1]
    load = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    print(f"model: {nbytes / 2**20:.0f} MiB float32, FSDP2 over {world} CPU ranks (gloo); {repeats} repeats, median")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; load: {load}")
    print()

    def med(method: str, key: str) -> float:
        # a phase's time is the slowest rank's (the save waits for it)
        per_repeat = [max(r[2][method][i].get(key, 0.0) for r in got) for i in range(repeats)]
        return statistics.median(per_repeat)

    sharded, rank0 = med("sharded", "total"), med("rank0", "total")
    print("| method | total s | GiB/s | vs rank-0 file |")
    print("|---|---:|---:|---:|")
    for name, t in (("sharded (torchkeep.distributed)", sharded), ("rank-0 single file (tk.save)", rank0)):
        print(f"| {name} | {t:.2f} | {nbytes / 2**30 / t:.2f} | {rank0 / t:.2f}x |")
    print()
    print("| where the time goes (slowest rank) | sharded s | rank-0 file s |")
    print("|---|---:|---:|")
    keys = [
        "state dict (local shards)",
        "write shard",
        "commit (index + rename)",
        "gather full state to rank 0",
        "rank 0 writes one file",
    ]
    for key in keys:
        a, b = med("sharded", key), med("rank0", key)
        print(f"| {key} | {a:.2f} | {b:.2f} |")
    other_s = sharded - sum(med("sharded", k) for k in keys[:3])
    other_r = rank0 - sum(med("rank0", k) for k in keys[3:])
    print(f"| other (DCP planning collectives, barriers) | {max(other_s, 0):.2f} | {max(other_r, 0):.2f} |")


if __name__ == "__main__":
    sys.exit(main())
