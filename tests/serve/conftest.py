"""Fixtures for the server tests: a Predictor over an nn.Module, apps run in-process, real servers."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from torch import nn

from torchkeep.runtime import TensorSpec
from torchkeep.serve import ServeOptions, create_app

SRC = str(Path(__file__).resolve().parents[2] / "src")


class SeedMLP(nn.Module):
    """The tutorials' model: 10 -> 32 -> 1."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ModulePredictor:
    """Test double satisfying torchkeep.runtime.Predictor over an eager nn.Module."""

    backend = "eager"
    device = "cpu"

    def __init__(self, module: nn.Module, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
        self.module = module.eval()
        self.inputs = inputs
        self.outputs = outputs
        self.calls: list[int] = []

    def __call__(self, *args: Any) -> Any:
        self.calls.append(int(np.asarray(args[0]).shape[0]))
        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(np.asarray(a)) for a in args))
        if isinstance(out, tuple):
            return tuple(o.numpy() for o in out)
        return out.numpy()


def seed_predictor() -> ModulePredictor:
    return ModulePredictor(
        SeedMLP(), [TensorSpec("x", (None, 10), "float32")], [TensorSpec("output", (None, 1), "float32")]
    )


@pytest.fixture
def predictor() -> ModulePredictor:
    return seed_predictor()


@contextlib.asynccontextmanager
async def running(target: Any, **opts: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An app with its lifespan started, and an httpx client talking to it in-process."""
    app = create_app(target, options=ServeOptions(**opts))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Write an ONNX file with a dynamic batch dimension (the legacy exporter: fast, no warnings)."""
    module.eval()
    with warnings.catch_warnings():
        # The legacy exporter is deprecated but fast and quiet; the model is trivial to trace.
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
        _export(module, example, path)
    return path


def _export(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=["x"],
        output_names=["output"],
        dynamic_axes={"x": {0: "batch"}, "output": {0: "batch"}},
        dynamo=False,
    )


@contextlib.contextmanager
def real_server(
    target: str | os.PathLike[str], *args: str, timeout: float = 60.0, cwd: str | os.PathLike[str] | None = None
) -> Iterator[str]:
    """`python -m torchkeep serve TARGET --port P ...` on 127.0.0.1; yields the base URL once ready."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torchkeep", "serve", str(target), "--host", "127.0.0.1", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise AssertionError(f"server exited with {proc.returncode}:\n{out}")
            try:
                if httpx.get(base + "/readyz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server not ready in time")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout:
            proc.stdout.close()


def write_version(directory: Path, name: str, module: nn.Module, dim: int = 10, *, mtime: float | None = None) -> Path:
    """Publish a model version the way a trainer should: write a hidden temp file, then rename."""
    tmp = directory / f".{name}.tmp"
    export_onnx(module, torch.randn(2, dim), tmp)
    final = directory / name
    os.replace(tmp, final)
    if mtime is not None:
        os.utime(final, (mtime, mtime))
    return final


def eager_out(module: nn.Module, x: Any) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(torch.tensor(np.asarray(x, dtype=np.float32))).numpy()


USER_MODULE = """
import torch
import torchkeep as tk


@tk.register(name="serve-test-mlp")
class ServeTestMLP(torch.nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(10, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x)
"""


def user_model_file(directory: Path) -> tuple[Path, nn.Module]:
    """A user's module registering a model class (``--import serve_user_models``) and a model file."""
    import importlib
    import sys

    import torchkeep as tk

    (directory / "serve_user_models.py").write_text(USER_MODULE)
    sys.path.insert(0, str(directory))
    try:
        sys.modules.pop("serve_user_models", None)
        module = importlib.import_module("serve_user_models")
        model = module.ServeTestMLP(hidden=16)
        path = directory / "model.safetensors"
        tk.save_model(model, path)
    finally:
        sys.path.remove(str(directory))
    return path, model
