"""Open Inference Protocol v2: the real tritonclient.http / tritonclient.grpc against `torchkeep serve REPO/`.

One subprocess server on 127.0.0.1 serves a repository of two models x two versions (plus a
model with mixed input datatypes); every answer is compared with the eager model. All load
loops are bounded in request count and time.
"""

from __future__ import annotations

import asyncio
import json
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from torch import nn

from .conftest import SeedMLP, export_onnx, free_port, real_server

pytestmark = pytest.mark.slow
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402


class Wide(nn.Module):
    """4 -> 3, a second model in the repository."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


class Mixed(nn.Module):
    """Inputs of several datatypes: FP32, INT32, BOOL, UINT8."""

    def forward(self, x: torch.Tensor, n: torch.Tensor, m: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return x * n.to(x.dtype) * m.to(x.dtype) + u.to(x.dtype)


def _export_mixed(path: Path) -> None:
    ex = (
        torch.randn(2, 3),
        torch.ones(2, 3, dtype=torch.int32),
        torch.ones(2, 3, dtype=torch.bool),
        torch.ones(2, 3, dtype=torch.uint8),
    )
    names = ["x", "n", "m", "u"]
    with warnings.catch_warnings():
        # The legacy exporter is deprecated but fast and quiet (as in conftest.export_onnx).
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
        _legacy_export(ex, names, path)


def _legacy_export(ex: tuple[torch.Tensor, ...], names: list[str], path: Path) -> None:
    torch.onnx.export(
        Mixed(),
        ex,
        str(path),
        input_names=names,
        output_names=["y"],
        dynamic_axes={**{k: {0: "batch"} for k in names}, "y": {0: "batch"}},
        dynamo=False,
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[tuple[str, str], nn.Module]]:
    root = tmp_path_factory.mktemp("repo")
    torch.manual_seed(0)
    models: dict[tuple[str, str], nn.Module] = {}
    for name, cls, dim in (("mlp", SeedMLP, 10), ("wide", Wide, 4)):
        for version in ("1", "2"):
            folder = root / name / version
            folder.mkdir(parents=True)
            module = cls().eval()
            export_onnx(module, torch.randn(2, dim), folder / "model.onnx")
            models[(name, version)] = module
    (root / "mixed" / "1").mkdir(parents=True)
    _export_mixed(root / "mixed" / "1" / "model.onnx")
    (root / ".hidden").mkdir()
    (root / "README.txt").write_text("not a model")
    return root, models


@pytest.fixture(scope="module")
def server(repo: tuple[Path, dict[tuple[str, str], nn.Module]]) -> Iterator[tuple[str, int]]:
    root, _ = repo
    grpc_port = free_port()
    args = (
        "--version-policy",
        "all",
        "--default-model",
        "mlp",
        "--grpc-port",
        str(grpc_port),
        "--max-body-bytes",
        "65536",
        "--body-timeout-s",
        "1",
    )
    with real_server(root, *args) as base:
        yield base, grpc_port


def _eager(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def test_http_client_health_metadata_and_infer(server: tuple[str, int], repo: tuple[Path, dict]) -> None:
    base, _ = server
    _, models = repo
    client = httpclient.InferenceServerClient(base.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp") and client.is_model_ready("wide", "2")
    assert not client.is_model_ready("mlp", "7")
    meta = client.get_server_metadata()
    assert meta["name"] == "torchkeep" and "binary_tensor_data" in meta["extensions"]
    mm = client.get_model_metadata("wide")
    assert mm["versions"] == ["1", "2"]
    assert mm["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    for version in ("1", "2"):
        for binary_in in (True, False):
            for binary_out in (True, False):
                inp = httpclient.InferInput("x", list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=binary_in)
                out = httpclient.InferRequestedOutput("output", binary_data=binary_out)
                res = client.infer("wide", [inp], model_version=version, outputs=[out], request_id="r1")
                np.testing.assert_allclose(
                    res.as_numpy("output"), _eager(models[("wide", version)], x), rtol=1e-5, atol=1e-6
                )
                assert res.get_response()["model_version"] == version
    # No version: the newest loaded one; /predict serves the default model.
    inp = httpclient.InferInput("x", [1, 10], "FP32")
    x10 = np.ones((1, 10), np.float32)
    inp.set_data_from_numpy(x10)
    res = client.infer("mlp", [inp])
    np.testing.assert_allclose(res.as_numpy("output"), _eager(models[("mlp", "2")], x10), rtol=1e-5, atol=1e-6)
    r = httpx.post(base + "/predict", json={"values": x10[0].tolist()})
    np.testing.assert_allclose(r.json()["prediction"], _eager(models[("mlp", "2")], x10), rtol=1e-5, atol=1e-6)
    client.close()


def test_several_datatypes_over_http_and_grpc(server: tuple[str, int]) -> None:
    base, grpc_port = server
    rng = np.random.default_rng(1)
    arrays = {
        "x": rng.standard_normal((3, 3)).astype(np.float32),
        "n": rng.integers(-3, 3, (3, 3)).astype(np.int32),
        "m": rng.integers(0, 2, (3, 3)).astype(bool),
        "u": rng.integers(0, 255, (3, 3)).astype(np.uint8),
    }
    dt = {"x": "FP32", "n": "INT32", "m": "BOOL", "u": "UINT8"}
    want = Mixed()(*(torch.from_numpy(a) for a in arrays.values())).numpy()
    hc = httpclient.InferenceServerClient(base.removeprefix("http://"))
    for binary in (True, False):
        inputs = []
        for k, a in arrays.items():
            i = httpclient.InferInput(k, list(a.shape), dt[k])
            i.set_data_from_numpy(a, binary_data=binary)
            inputs.append(i)
        np.testing.assert_allclose(hc.infer("mixed", inputs).as_numpy("y"), want, rtol=1e-6)
    gc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    assert gc.is_server_live() and gc.is_server_ready() and gc.is_model_ready("mixed")
    assert not gc.is_model_ready("nope")
    assert gc.get_server_metadata().name == "torchkeep"
    meta = gc.get_model_metadata("mixed")
    assert [(t.name, t.datatype) for t in meta.inputs] == [("x", "FP32"), ("n", "INT32"), ("m", "BOOL"), ("u", "UINT8")]
    inputs = []
    for k, a in arrays.items():
        i = grpcclient.InferInput(k, list(a.shape), dt[k])
        i.set_data_from_numpy(a)
        inputs.append(i)
    res = gc.infer("mixed", inputs, outputs=[grpcclient.InferRequestedOutput("y")])
    np.testing.assert_allclose(res.as_numpy("y"), want, rtol=1e-6)
    # Errors as gRPC status codes.
    bad = grpcclient.InferInput("x", [3, 3], "FP64")
    bad.set_data_from_numpy(arrays["x"].astype(np.float64))
    with pytest.raises(InferenceServerException) as err:
        gc.infer("mixed", [bad, *inputs[1:]])
    assert "INVALID_ARGUMENT" in str(err.value.status())
    with pytest.raises(InferenceServerException) as err:
        gc.infer("nope", inputs)
    assert "NOT_FOUND" in str(err.value.status())
    gc.close()
    hc.close()


def test_grpc_and_rest_share_the_core(server: tuple[str, int], repo: tuple[Path, dict]) -> None:
    base, grpc_port = server
    _, models = repo
    x = np.random.default_rng(2).standard_normal((4, 10)).astype(np.float32)
    gc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    i = grpcclient.InferInput("x", [4, 10], "FP32")
    i.set_data_from_numpy(x)
    res = gc.infer("mlp", [i], model_version="1")
    np.testing.assert_allclose(res.as_numpy("output"), _eager(models[("mlp", "1")], x), rtol=1e-5, atol=1e-6)
    gc.close()
    metrics = httpx.get(base + "/metrics").text
    assert 'torchkeep_model_memory_bytes{model="mlp",version="1"}' in metrics
    assert 'torchkeep_model_memory_bytes{model="wide",version="2"}' in metrics


def _raw_post(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        return s.recv(65536)


MALFORMED: list[tuple[str, dict[str, str], bytes, int]] = [
    ("/v2/models/mlp/infer", {}, b"{oops", 400),
    ("/v2/models/mlp/infer", {}, b"[]", 400),
    ("/v2/models/mlp/infer", {}, json.dumps({"inputs": []}).encode(), 400),
    # wrong datatype
    (
        "/v2/models/mlp/infer",
        {},
        json.dumps({"inputs": [{"name": "x", "shape": [1, 10], "datatype": "INT64", "data": [1] * 10}]}).encode(),
        400,
    ),
    (
        "/v2/models/mlp/infer",
        {},
        json.dumps({"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP99", "data": [1] * 10}]}).encode(),
        400,
    ),
    # shape / data length mismatch, wrong per-example shape, strings as numbers
    (
        "/v2/models/mlp/infer",
        {},
        json.dumps({"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP32", "data": [1] * 9}]}).encode(),
        400,
    ),
    (
        "/v2/models/mlp/infer",
        {},
        json.dumps({"inputs": [{"name": "x", "shape": [2, 5], "datatype": "FP32", "data": [1] * 10}]}).encode(),
        400,
    ),
    (
        "/v2/models/mlp/infer",
        {},
        json.dumps({"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP32", "data": ["a"] * 10}]}).encode(),
        400,
    ),
    (
        "/v2/models/mlp/infer",
        {},
        json.dumps({"inputs": [{"name": "x", "shape": [-1, 10], "datatype": "FP32", "data": [1] * 10}]}).encode(),
        400,
    ),
    (
        "/v2/models/mlp/infer",
        {},
        json.dumps({"inputs": [{"name": "y", "shape": [1, 10], "datatype": "FP32", "data": [1] * 10}]}).encode(),
        400,
    ),
    (
        "/v2/models/mlp/infer",
        {},
        json.dumps(
            {
                "inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP32", "data": [1] * 10}],
                "outputs": [{"name": "zz"}],
            }
        ).encode(),
        400,
    ),
    # unknown model / version
    ("/v2/models/nope/infer", {}, b"{}", 404),
    ("/v2/models/mlp/versions/9/infer", {}, b"{}", 404),
    # bad binary header lengths
    ("/v2/models/mlp/infer", {"Inference-Header-Content-Length": "999"}, b"{}", 400),
    ("/v2/models/mlp/infer", {"Inference-Header-Content-Length": "abc"}, b"{}", 400),
    ("/v2/models/mlp/infer", {"Inference-Header-Content-Length": "0"}, b"{}", 400),
    (
        "/v2/models/mlp/infer",
        {"Inference-Header-Content-Length": "74"},
        json.dumps(
            {"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP32", "parameters": {"binary_data_size": 40}}]}
        ).encode()[:74]
        + b"\0" * 8,
        400,
    ),
    ("/v2/repository/models/nope/unload", {}, b"", 404),
    ("/v2/nothing", {}, b"", 404),
]


def test_malformed_v2_requests_get_4xx_and_the_server_keeps_serving(server: tuple[str, int]) -> None:
    base, _ = server
    for path, headers, body, want in MALFORMED:
        r = httpx.post(base + path, content=body, headers={"content-type": "application/json", **headers})
        assert r.status_code == want, (path, headers, body[:80], r.text)
        assert isinstance(r.json()["error"], str) and r.json()["error"]
    # Binary sizes that do not add up to the bytes sent.
    head = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP32", "parameters": {"binary_data_size": 40}}]}
    ).encode()
    for tail in (b"\0" * 39, b"\0" * 41):
        r = httpx.post(
            base + "/v2/models/mlp/infer",
            content=head + tail,
            headers={"Inference-Header-Content-Length": str(len(head))},
        )
        assert r.status_code == 400, r.text
    # Oversized body: refused while being read.
    r = httpx.post(base + "/v2/models/mlp/infer", content=b"x" * 70_000)
    assert r.status_code == 413 and "error" in r.json()
    # A slow client: the body deadline answers 408 instead of holding the connection.
    port = int(base.rsplit(":", 1)[1])
    answer = _raw_post(port, b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    assert b" 408 " in answer.split(b"\r\n", 1)[0]
    # Still serving, and nothing was a 5xx.
    r = httpx.post(
        base + "/v2/models/mlp/infer",
        json={"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP32", "data": [0.5] * 10}]},
    )
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 1]
    metrics = httpx.get(base + "/metrics").text
    assert not [
        line for line in metrics.splitlines() if line.startswith("torchkeep_requests_total") and 'status="5' in line
    ]


def test_repository_index_load_unload_under_load(server: tuple[str, int]) -> None:
    base, _ = server
    index = httpx.post(base + "/v2/repository/index", json={}).json()
    assert {(m["name"], m["version"], m["state"]) for m in index} >= {
        ("mlp", "1", "READY"),
        ("mlp", "2", "READY"),
        ("wide", "1", "READY"),
        ("wide", "2", "READY"),
    }

    async def drive() -> tuple[list[int], list[int]]:
        statuses: list[int] = []
        control: list[int] = []
        stop = asyncio.Event()
        body = {"inputs": [{"name": "x", "shape": [2, 10], "datatype": "FP32", "data": [0.1] * 20}]}
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:

            async def load() -> None:
                for _ in range(150):
                    if stop.is_set():
                        return
                    r = await client.post("/v2/models/mlp/infer", json=body)
                    statuses.append(r.status_code)

            async def churn() -> None:
                for _ in range(3):
                    for op in ("unload", "load"):
                        r = await client.post(f"/v2/repository/models/wide/{op}")
                        control.append(r.status_code)
                        ready = await client.get("/v2/models/wide/ready")
                        assert ready.status_code == (400 if op == "unload" else 200)
                stop.set()

            await asyncio.wait_for(asyncio.gather(*[load() for _ in range(8)], churn()), timeout=120)
        return statuses, control

    statuses, control = asyncio.run(drive())
    assert control == [200] * 6
    assert statuses and set(statuses) == {200}
    x = np.ones((1, 4), np.float32)
    r = httpx.post(
        base + "/v2/models/wide/versions/2/infer",
        json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x.ravel().tolist()}]},
    )
    assert r.status_code == 200
