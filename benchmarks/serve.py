"""Serving throughput: the tutorial's FastAPI server vs ``torchkeep serve``, same model, same load.

For each model this script starts, one after the other on 127.0.0.1:

(a) the naive server exactly as the deployment tutorial writes it (FastAPI, a pydantic body,
    a sync ``def predict`` that runs one request per model call under ``torch.no_grad()``, the
    TorchScript file loaded with ``torch.jit.load``, ``uvicorn.run(app)``), and
(b) ``python -m torchkeep serve`` on the same weights (dynamic batching, one torch thread),

then drives each with the same bounded load generator: ``--concurrency`` keep-alive
connections (raw asyncio HTTP/1.1, so the client costs little CPU), a warm-up, then a fixed
``--duration``. It prints requests/s, p50/p99 latency, error counts and the ratios.

Models: the tutorials' MLP (10→32→1); a wide MLP (512→4096→4096→10) that gains a lot from
batching; a small CNN that gains little from batching on a CPU (shown for honesty).

    python benchmarks/serve.py            # full run (about 2 minutes)
    python benchmarks/serve.py --quick    # a few seconds per server
    python benchmarks/serve.py --ray      # wide MLP: one process vs Ray Serve with 1 and 2 replicas
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

SRC = str(Path(__file__).resolve().parents[1] / "src")

NAIVE_APP = textwrap.dedent(
    """
    # The tutorial's app.py, verbatim except for the model path and port taken from argv.
    import sys

    from fastapi import FastAPI
    import torch
    from pydantic import BaseModel
    import uvicorn

    model = torch.jit.load(sys.argv[1])
    model.eval()

    app = FastAPI()

    class InputData(BaseModel):
        values: list[float]

    @app.post("/predict")
    def predict(data: InputData):
        x = torch.tensor(data.values).unsqueeze(0)  # (1, D)
        with torch.no_grad():
            output = model(x)
        return {"prediction": output.tolist()}

    if __name__ == "__main__":
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]))
    """
)


MODELS_PY = textwrap.dedent(
    """
    import torch
    from torch import nn

    import torchkeep as tk


    @tk.register(name="bench-seed-mlp")
    class SeedMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)


    @tk.register(name="bench-wide-mlp")
    class WideMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(512, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 10)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)


    @tk.register(name="bench-small-cnn")
    class SmallCNN(nn.Module):
        # Input: a flat 3*32*32 vector (the tutorial client sends flat lists), reshaped inside.
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            )
            self.head = nn.Linear(64 * 8 * 8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x.reshape(-1, 3, 32, 32)).flatten(1))
    """
)

# name -> (class in MODELS_PY, input size)
MODELS: dict[str, tuple[str, int]] = {
    "seed-mlp": ("SeedMLP", 10),
    "wide-mlp": ("WideMLP", 512),
    "small-cnn": ("SmallCNN", 3 * 32 * 32),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_artifacts(name: str, workdir: Path, onnx: bool) -> tuple[Path, Path, int]:
    """TorchScript file for the naive server, and the torchkeep serving target, same weights.

    The torchkeep target is a ``tk.save_model`` file served by the eager backend (the same
    PyTorch kernels as the naive server), or with ``onnx`` an ONNX file (ONNX Runtime backend).
    """
    import importlib

    import torchkeep as tk

    (workdir / "bench_models.py").write_text(MODELS_PY)
    if str(workdir) not in sys.path:
        sys.path.insert(0, str(workdir))
    module = importlib.import_module("bench_models")
    cls_name, dim = MODELS[name]
    torch.manual_seed(0)
    model = getattr(module, cls_name)().eval()
    example = torch.randn(2, dim)
    traced = workdir / f"{name}.traced.pt"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, example), str(traced))
    if not onnx:
        target = workdir / f"{name}.safetensors"
        tk.save_model(model, target)
        return traced, target, dim
    target = workdir / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(target),
            input_names=["x"],
            output_names=["output"],
            dynamic_axes={"x": {0: "batch"}, "output": {0: "batch"}},
            dynamo=False,
        )
    return traced, target, dim


async def _one_connection(
    port: int, bodies: list[bytes], stop_at: float, record_from: float, lat: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            body = bodies[i % len(bodies)]
            i += 1
            writer.write(
                b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            t1 = time.perf_counter()
            if t0 >= record_from:
                code = int(status_line.split()[1]) if status_line else 0
                if code == 200:
                    lat.append(t1 - t0)
                else:
                    errors.append(code)
    finally:
        writer.close()


async def drive(port: int, dim: int, concurrency: int, warmup: float, duration: float) -> dict[str, float]:
    """Bounded load: ``concurrency`` connections for warmup + duration seconds; stats over duration."""
    rng = np.random.default_rng(0)
    bodies = [json.dumps({"values": rng.standard_normal(dim).round(4).tolist()}).encode() for _ in range(16)]
    start = time.perf_counter()
    record_from, stop_at = start + warmup, start + warmup + duration
    lat: list[float] = []
    errors: list[int] = []
    await asyncio.wait_for(
        asyncio.gather(*[_one_connection(port, bodies, stop_at, record_from, lat, errors) for _ in range(concurrency)]),
        timeout=warmup + duration + 60,
    )
    arr = np.array(lat) * 1000 if lat else np.array([float("nan")])
    return {
        "rps": len(lat) / duration,
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
        "errors": float(len(errors)),
    }


def wait_ready(port: int, proc: subprocess.Popen[bytes], path: str, dim: int, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early with {proc.returncode}")
        try:
            if path == "/readyz":
                ok = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            else:
                ok = (
                    httpx.post(f"http://127.0.0.1:{port}/predict", json={"values": [0.0] * dim}, timeout=5).status_code
                    == 200
                )
            if ok:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("server did not become ready")


def run_server(
    cmd: list[str], ready_path: str, port: int, dim: int, args: argparse.Namespace, cwd: Path
) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc, ready_path, dim)
        return asyncio.run(drive(port, dim, args.concurrency, args.warmup, args.duration))
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _tk_serve_cmd(target: Path, port: int, dim: int, args: argparse.Namespace, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torchkeep",
        "serve",
        str(target),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-batch-size",
        str(args.max_batch_size),
        "--max-wait-ms",
        str(args.max_wait_ms),
        "--threads",
        str(args.threads),
        "--import",
        "bench_models",
        "--input-shape",
        f"1,{dim}",
        *extra,
    ]


def _run_ray_row(cmd: list[str], port: int, dim: int, args: argparse.Namespace, cwd: Path) -> dict[str, float]:
    # Ray needs longer to start (a local instance, a proxy, replicas) and to shut down cleanly.
    env = {**os.environ, "PYTHONPATH": SRC, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc, "/readyz", dim, timeout=300)
        return asyncio.run(drive(port, dim, args.concurrency, args.warmup, args.duration))
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def ray_comparison(args: argparse.Namespace) -> None:
    """The wide MLP: one ``torchkeep serve`` process vs ``--ray --replicas 1`` vs ``--ray --replicas 2``.

    Each server is a fresh subprocess (Ray: a fresh local instance with all CPUs) driven by the
    same bounded load; Ray's HTTP proxy and each replica are separate processes, so the Ray rows
    pay one extra local hop per request.
    """
    name = "wide-mlp"
    workdir = Path(tempfile.mkdtemp(prefix="tk-serve-ray-bench-"))
    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, load: {os.getloadavg()}")
    print(
        f"# {name}; {args.concurrency} connections, {args.warmup:g}s warm-up + {args.duration:g}s measured per server"
    )
    rows: list[tuple[str, dict[str, float]]] = []
    try:
        _, target, dim = write_artifacts(name, workdir, args.onnx)
        configs: list[tuple[str, tuple[str, ...]]] = [
            ("torchkeep serve (1 process)", ()),
            ("Ray Serve, 1 replica", ("--ray", "--replicas", "1")),
            ("Ray Serve, 2 replicas", ("--ray", "--replicas", "2")),
        ]
        for label, extra in configs:
            port = free_port()
            result = _run_ray_row(_tk_serve_cmd(target, port, dim, args, *extra), port, dim, args, workdir)
            rows.append((label, result))
            print(f"  {label}: {result['rps']:.0f} req/s", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    base = rows[0][1]
    print()
    print("| server | req/s | p50 ms | p99 ms | non-200 | throughput vs 1 process | p99 vs 1 process |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r in rows:
        print(
            f"| {label} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {int(r['errors'])} "
            f"| {r['rps'] / max(base['rps'], 1e-9):.2f}× | {r['p99'] / base['p99']:.2f}× |"
        )
    print(f"\n# load after run: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps([{"server": label, **r} for label, r in rows], indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (seconds)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=None, help="seconds measured per server")
    parser.add_argument("--warmup", type=float, default=None)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in torchkeep serve")
    parser.add_argument(
        "--onnx", action="store_true", help="serve an ONNX file (onnxruntime) instead of the eager model file"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument(
        "--ray",
        action="store_true",
        help="instead: the wide MLP on one torchkeep process vs Ray Serve with 1 and 2 replicas (the `ray` extra)",
    )
    args = parser.parse_args()
    args.duration = args.duration or (3.0 if args.quick else 15.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    if args.ray:
        ray_comparison(args)
        return
    workdir = Path(tempfile.mkdtemp(prefix="tk-serve-bench-"))
    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, load: {os.getloadavg()}")
    print(
        f"# torchkeep serves {'an ONNX file (onnxruntime)' if args.onnx else 'a tk.save_model file (eager)'}; naive: TorchScript"
    )
    print(f"# {args.concurrency} connections, {args.warmup:g}s warm-up + {args.duration:g}s measured per server")
    rows: list[dict[str, Any]] = []
    try:
        for name in args.models.split(","):
            traced, target, dim = write_artifacts(name, workdir, args.onnx)
            port = free_port()
            naive_py = workdir / "naive_app.py"
            naive_py.write_text(NAIVE_APP)
            naive = run_server(
                [sys.executable, str(naive_py), str(traced), str(port)], "/predict", port, dim, args, workdir
            )
            port = free_port()
            tk_cmd = [
                sys.executable,
                "-m",
                "torchkeep",
                "serve",
                str(target),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--max-batch-size",
                str(args.max_batch_size),
                "--max-wait-ms",
                str(args.max_wait_ms),
                "--threads",
                str(args.threads),
                "--import",
                "bench_models",
                "--input-shape",
                f"1,{dim}",
            ]
            tk = run_server(tk_cmd, "/readyz", port, dim, args, workdir)
            row = {
                "model": name,
                "naive": naive,
                "torchkeep": tk,
                "throughput_ratio": tk["rps"] / max(naive["rps"], 1e-9),
                "p99_ratio": tk["p99"] / naive["p99"],
            }
            rows.append(row)
            print(
                f"  {name}: naive {naive['rps']:.0f} req/s, torchkeep {tk['rps']:.0f} req/s ({row['throughput_ratio']:.2f}x)",
                flush=True,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print("| model | server | req/s | p50 ms | p99 ms | non-200 | throughput vs naive | p99 vs naive |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        for kind in ("naive", "torchkeep"):
            r = row[kind]
            ratio = f"{row['throughput_ratio']:.2f}×" if kind == "torchkeep" else "1.00×"
            p99 = f"{row['p99_ratio']:.2f}×" if kind == "torchkeep" else "1.00×"
            print(
                f"| {row['model']} | {kind} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {int(r['errors'])} | {ratio} | {p99} |"
            )
    print(f"\n# load after run: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
