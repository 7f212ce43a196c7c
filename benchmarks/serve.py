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

Front ends (same run): a bare constant-response ASGI app on the same uvicorn stack (the
ceiling), then ONE ``torchkeep serve REPO/ --grpc-port`` answering ``/predict``, ``/v1/predict``
with a ``.npy`` body, Open Inference Protocol REST with JSON tensors and with the binary
extension, and gRPC (``ModelInfer`` with ``raw_input_contents`` on ``grpc.aio``; the only row not
driven by the raw HTTP/1.1 client), for the seed MLP and a 1x3x224x224 image input.

    python benchmarks/serve.py            # full run (about 4 minutes)
    python benchmarks/serve.py --quick    # a few seconds per server
    python benchmarks/serve.py --ray      # wide MLP: one process vs Ray Serve with 1 and 2 replicas
    python benchmarks/serve.py --quick --protocols-only
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


def raw_post(path: str, body: bytes, content_type: str = "application/json", extra: str = "") -> bytes:
    """One HTTP/1.1 keep-alive POST, ready to write."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _one_connection(
    port: int, requests: list[bytes], stop_at: float, record_from: float, lat: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            writer.write(requests[i % len(requests)])
            i += 1
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
    """Bounded load on ``/predict``: ``concurrency`` connections for warmup + duration seconds."""
    rng = np.random.default_rng(0)
    bodies = [json.dumps({"values": rng.standard_normal(dim).round(4).tolist()}).encode() for _ in range(16)]
    return await drive_raw(port, [raw_post("/predict", b) for b in bodies], concurrency, warmup, duration)


def _stats(lat: list[float], errors: list[int], duration: float) -> dict[str, float]:
    arr = np.array(lat) * 1000 if lat else np.array([float("nan")])
    return {
        "rps": len(lat) / duration,
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
        "errors": float(len(errors)),
    }


async def drive_raw(
    port: int, requests: list[bytes], concurrency: int, warmup: float, duration: float
) -> dict[str, float]:
    """Bounded load: ``concurrency`` keep-alive connections cycling through raw ``requests``."""
    bodies = requests
    start = time.perf_counter()
    record_from, stop_at = start + warmup, start + warmup + duration
    lat: list[float] = []
    errors: list[int] = []
    await asyncio.wait_for(
        asyncio.gather(*[_one_connection(port, bodies, stop_at, record_from, lat, errors) for _ in range(concurrency)]),
        timeout=warmup + duration + 60,
    )
    return _stats(lat, errors, duration)


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
# ---- protocols: one torchkeep server, every front end, against the bare-stack ceiling ----------

BARE_APP = textwrap.dedent(
    """
    # The ceiling: a constant-response ASGI app on the same uvicorn + httptools + uvloop stack.
    import sys

    import uvicorn

    BODY = b'{"prediction": [[0.1]]}'
    HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})


    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
    """
)

IMAGE_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn


    class TinyImageNet(nn.Module):
        # A 1x3x224x224 input with very little compute: the row measures the wire format.
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 8, stride=8)
            self.head = nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.conv(x).mean(dim=(2, 3)))
    """
)


def _protocol_requests(shape: tuple[int, ...], model: str) -> dict[str, list[bytes]]:
    import io

    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    out: dict[str, list[bytes]] = {"/predict": [], "/v1/predict npy": [], "v2 REST JSON": [], "v2 REST binary": []}
    for x in xs:
        if len(shape) == 2:
            out["/predict"].append(raw_post("/predict", json.dumps({"values": x[0].round(4).tolist()}).encode()))
        if model == "seed-mlp":  # /v1 serves the default model only
            buf = io.BytesIO()
            np.save(buf, x, allow_pickle=False)
            out["/v1/predict npy"].append(raw_post("/v1/predict", buf.getvalue(), "application/x-npy"))
        v2 = {"inputs": [{"name": "x", "shape": list(shape), "datatype": "FP32", "data": x.ravel().round(4).tolist()}]}
        out["v2 REST JSON"].append(raw_post(f"/v2/models/{model}/infer", json.dumps(v2).encode()))
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": list(shape),
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        out["v2 REST binary"].append(
            raw_post(
                f"/v2/models/{model}/infer",
                head + x.tobytes(),
                "application/octet-stream",
                f"Inference-Header-Content-Length: {len(head)}\r\n",
            )
        )
    return {k: v for k, v in out.items() if v}


async def drive_grpc(
    port: int, shape: tuple[int, ...], model: str, concurrency: int, warmup: float, duration: float
) -> dict[str, float]:
    """``concurrency`` in-flight ModelInfer calls on one grpc.aio channel (raw_input_contents)."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=list(shape))
    request.raw_input_contents.append(x.tobytes())
    lat: list[float] = []
    errors: list[int] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        start = time.perf_counter()
        record_from, stop_at = start + warmup, start + warmup + duration

        async def worker() -> None:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    await stub.ModelInfer(request)
                    ok = True
                except grpc.aio.AioRpcError:
                    ok = False
                if t0 >= record_from:
                    (lat.append(time.perf_counter() - t0) if ok else errors.append(1))

        await asyncio.wait_for(asyncio.gather(*[worker() for _ in range(concurrency)]), warmup + duration + 60)
    return _stats(lat, errors, duration)


def run_protocols(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    """Rows: bare ceiling, then each front end of ONE torchkeep server on a repository of two models."""
    import importlib

    import torchkeep as tk

    repo = workdir / "repo"
    (workdir / "bench_image.py").write_text(IMAGE_MODEL)
    if str(workdir) not in sys.path:
        sys.path.insert(0, str(workdir))
    torch.manual_seed(0)
    seed = importlib.import_module("bench_models").SeedMLP().eval()
    image = importlib.import_module("bench_image").TinyImageNet().eval()
    shapes = {"seed-mlp": (1, 10), "image": (1, 3, 224, 224)}
    for name, module in (("seed-mlp", seed), ("image", image)):
        (repo / name / "1").mkdir(parents=True)
        example = torch.randn(2, *shapes[name][1:])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(repo / name / "1" / "model.onnx"),
                input_names=["x"],
                output_names=["output"],
                dynamic_axes={"x": {0: "batch"}, "output": {0: "batch"}},
                dynamo=False,
            )
    del tk
    rows: list[dict[str, Any]] = []
    bare_port = free_port()
    (workdir / "bare_app.py").write_text(BARE_APP)
    env = {**os.environ, "PYTHONPATH": SRC}
    bare = subprocess.Popen([sys.executable, str(workdir / "bare_app.py"), str(bare_port)], env=env)
    try:
        time.sleep(2)
        body = [raw_post("/predict", b'{"values": [0.1]}')]
        ceiling = asyncio.run(drive_raw(bare_port, body, args.concurrency, args.warmup, args.duration))
        rows.append({"model": "-", "route": "bare ASGI ceiling", **ceiling})
        print(f"  bare ceiling: {ceiling['rps']:.0f} req/s", flush=True)
    finally:
        bare.terminate()
        bare.wait(15)
    port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "torchkeep", "serve", str(repo), "--host", "127.0.0.1", "--port", str(port),
           "--grpc-port", str(grpc_port), "--version-policy", "all", "--default-model", "seed-mlp",
           "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
           "--threads", str(args.threads)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc, "/readyz", 10)
        for name, shape in shapes.items():
            for route, requests in _protocol_requests(shape, name).items():
                r = asyncio.run(drive_raw(port, requests, args.concurrency, args.warmup, args.duration))
                rows.append({"model": name, "route": route, **r})
                print(f"  {name} {route}: {r['rps']:.0f} req/s", flush=True)
            r = asyncio.run(drive_grpc(grpc_port, shape, name, args.concurrency, args.warmup, args.duration))
            rows.append({"model": name, "route": "v2 gRPC", **r})
            print(f"  {name} v2 gRPC: {r['rps']:.0f} req/s", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows


def print_protocols(rows: list[dict[str, Any]]) -> None:
    ceiling = rows[0]["rps"]
    base = {r["model"]: r["rps"] for r in rows if r["route"] == "v2 REST JSON"}
    print()
    print("| model | route | req/s | p50 ms | p99 ms | non-200 | vs bare ceiling | vs v2 REST JSON |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        vs_json = f"{r['rps'] / base[r['model']]:.2f}×" if r["model"] in base else "-"
        print(
            f"| {r['model']} | {r['route']} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {int(r['errors'])} "
            f"| {r['rps'] / ceiling:.2f}× | {vs_json} |"
        )


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
    parser.add_argument(
        "--protocols-only", action="store_true", help="only the front-end rows (bare ceiling, /predict, v2, gRPC)"
    )
    parser.add_argument("--no-protocols", action="store_true", help="skip the front-end rows")
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
    protocol_rows: list[dict[str, Any]] = []
    try:
        if not args.no_protocols:
            (workdir / "bench_models.py").write_text(MODELS_PY)
            protocol_rows = run_protocols(args, workdir)
        for name in [] if args.protocols_only else args.models.split(","):
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
    if protocol_rows:
        print_protocols(protocol_rows)
    print(f"\n# load after run: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"naive_vs_torchkeep": rows, "protocols": protocol_rows}, indent=2))


if __name__ == "__main__":
    main()
