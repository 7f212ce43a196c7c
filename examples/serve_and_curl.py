"""Serve an exported model over HTTP and call it the way the tutorial's client does.

Run: python examples/serve_and_curl.py   (CPU; most of its time is the server starting)

1. The tutorial's model is exported (ONNX, verified) with ``tk.export``;
2. ``python -m torchkeep serve DIR`` starts on a free port of 127.0.0.1, as a subprocess;
3. the script waits for ``GET /readyz`` (model loaded and warmed up), then POSTs the tutorial's
   ``{"values": [...]}`` to ``/predict`` and a batch to ``/v1/predict`` with plain ``urllib``
   (what ``curl -X POST ... -d '{"values": [...]}'`` sends), and one bad request;
4. the answers are printed and compared with the eager model, and the server is stopped.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import torch
from torch import nn

import torchkeep as tk


class MyModel(nn.Module):
    """The tutorial's model: 10 inputs, one hidden layer, 1 output."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:  # a 4xx/5xx still carries a JSON body
        return exc.code, json.loads(exc.read() or b"null")


def wait_ready(base: str, server: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode} before it was ready")
        try:
            if call(f"{base}/readyz")[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            pass  # not listening yet
        time.sleep(0.2)
    raise SystemExit(f"the server was not ready after {timeout:.0f} s")


def talk_to(base: str, server: subprocess.Popen[bytes], model: nn.Module, log_path: Path) -> None:
    started = time.monotonic()
    try:
        wait_ready(base, server)
    except SystemExit:
        print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    print(f"ready after {time.monotonic() - started:.1f} s: GET /readyz -> 200")

    values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    status, answer = call(f"{base}/predict", {"values": values})
    print(f"POST /predict {{'values': [...10 numbers]}} -> {status} {answer}")
    expected = model(torch.tensor([values])).tolist()
    assert status == 200 and torch.allclose(torch.tensor(answer["prediction"]), torch.tensor(expected), atol=1e-5)
    print(f"eager model says {expected}: same")

    batch = torch.randn(3, 10)
    status, answer = call(f"{base}/v1/predict", {"inputs": batch.tolist()})
    print(f"POST /v1/predict (a batch of 3) -> {status} {answer}")
    assert status == 200

    status, answer = call(f"{base}/predict", {"values": [1.0, 2.0]})
    print(f"POST /predict with 2 numbers instead of 10 -> {status} {answer}")
    assert 400 <= status < 500
    assert call(f"{base}/healthz")[0] == 200  # and the server keeps serving


def main() -> None:
    torch.manual_seed(0)
    model = MyModel().eval()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "exported")
        tk.export(model, torch.randn(1, 10), out, formats=["onnx"])
        print(f"exported: {sorted(p.name for p in out.iterdir())}")

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "torchkeep", "serve", str(out), "--host", "127.0.0.1", "--port", str(port)]
        print("$", " ".join(["torchkeep", *command[3:]]))
        log_path = Path(tmp, "server.log")
        with log_path.open("wb") as log:  # a file, not a pipe: a chatty server never blocks on it
            server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            try:
                talk_to(base, server, model, log_path)
            finally:
                server.terminate()
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
        print("server stopped")


if __name__ == "__main__":
    main()
