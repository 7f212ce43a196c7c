"""Bad input never hurts the server: each mistake is a 4xx JSON error naming what was expected."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import torch

from torchkeep.runtime import TensorSpec

from .conftest import ModulePredictor, running, seed_predictor

X = [0.5] * 10
SPEC_TEXT = "'x': float32[batch, 10]"

# (route, body bytes, content type, status, error type, words in the message)
CASES: list[tuple[str, bytes, str | None, int, str, str]] = [
    ("/predict", b"{not json", "application/json", 400, "invalid_json", "not valid JSON"),
    ("/predict", b"", "application/json", 400, "invalid_json", "not valid JSON"),
    ("/predict", b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "invalid_json", "not valid JSON"),
    ("/predict", b'{"values": [1, 2, 3]}', "application/json", 422, "invalid_input", "found shape [3]"),
    (
        "/predict",
        b'{"values": [[1,2,3,4,5,6,7,8,9,10]]}',
        "application/json",
        422,
        "invalid_input",
        "found shape [1, 10]",
    ),
    ("/predict", b'{"values": ["a","b","c","d","e","f","g","h","i","j"]}', None, 422, "invalid_input", "string"),
    ("/predict", b'{"values": ["1","2","3","4","5","6","7","8","9","10"]}', None, 422, "invalid_input", "string"),
    (
        "/predict",
        b'{"values": [true,false,true,false,true,false,true,false,true,false]}',
        None,
        422,
        "invalid_input",
        "boolean",
    ),
    ("/predict", b'{"values": [null,1,2,3,4,5,6,7,8,9]}', None, 422, "invalid_input", "mixed or null"),
    ("/predict", b'{"values": [NaN,1,2,3,4,5,6,7,8,9]}', None, 422, "invalid_input", "NaN or Infinity"),
    ("/predict", b'{"values": [Infinity,1,2,3,4,5,6,7,8,9]}', None, 422, "invalid_input", "NaN or Infinity"),
    ("/predict", b'{"values": [1e999,1,2,3,4,5,6,7,8,9]}', None, 422, "invalid_input", "NaN or Infinity"),
    ("/predict", b'{"values": "1,2,3"}', None, 422, "invalid_input", "found str"),
    ("/predict", b'{"values": {"a": 1}}', None, 422, "invalid_input", "found dict"),
    ("/predict", b'{"vals": [1]}', None, 422, "invalid_input", '{"values": [...]}'),
    ("/predict", b"[1, 2]", None, 422, "invalid_input", '{"values": [...]}'),
    ("/v1/predict", b'{"inputs": []}', None, 422, "invalid_input", "found shape [0]"),
    ("/v1/predict", b'{"inputs": {"x": []}}', None, 422, "invalid_input", "found shape [0]"),
    ("/v1/predict", b'{"inputs": [[1,2,3,4,5,6,7,8,9,10], [1,2]]}', None, 422, "invalid_input", "rectangular"),
    ("/v1/predict", b'{"inputs": [1,2,3,4,5,6,7,8,9,10]}', None, 422, "invalid_input", "found shape [10]"),
    ("/v1/predict", b'{"inputs": {"y": [[1]]}}', None, 422, "invalid_input", "unexpected inputs ['y']"),
    ("/v1/predict", b'{"inputs": 3}', None, 422, "invalid_input", "'inputs' is int"),
    ("/v1/predict", b'{"values": [1]}', None, 422, "invalid_input", '{"inputs"'),
    ("/predict", b"values=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type", "application/json"),
    ("/predict", b"\x93NUMPY", "application/x-npy", 415, "unsupported_media_type", "application/json"),
    ("/v1/predict", b"1,2,3", "text/csv", 415, "unsupported_media_type", "application/x-npy"),
    ("/v1/predict", b"garbage", "application/x-npy", 400, "invalid_npy", "numpy.save"),
    ("/v1/predict", b"\x93NUMPY\x01\x00\xff\xff{'descr'", "application/x-npy", 400, "invalid_npy", "numpy.save"),
]


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


NPY_CASES = [
    (_npy(np.array([{"a": 1}], dtype=object)), 400, "invalid_npy"),  # would need pickle: refused
    (_npy(np.zeros((2, 9), np.float32)), 422, "invalid_input"),
    (_npy(np.zeros((0, 10), np.float32)), 422, "invalid_input"),
    (_npy(np.full((1, 10), np.nan, np.float32)), 422, "invalid_input"),
    (_npy(np.array([["a"] * 10])), 422, "invalid_input"),
]


def test_every_bad_input_is_a_clear_4xx(predictor: ModulePredictor) -> None:
    async def go() -> None:
        async with running(predictor) as c:
            for route, body, ctype, status, kind, words in CASES:
                headers = {"content-type": ctype} if ctype else {}
                r = await c.post(route, content=body, headers=headers)
                assert r.status_code == status, (route, body[:60], r.text)
                err = r.json()["error"]
                assert err["type"] == kind and words in err["message"], (body[:60], err)
                if status == 422:
                    assert SPEC_TEXT in err["message"]
            for body, status, kind in NPY_CASES:
                r = await c.post("/v1/predict", content=body, headers={"content-type": "application/x-npy"})
                assert r.status_code == status, r.text
                assert r.json()["error"]["type"] == kind
            # and it still serves
            r = await c.post("/predict", json={"values": X})
            assert r.status_code == 200
            metrics = (await c.get("/metrics")).text
            assert 'route="/predict",status="500"' not in metrics and 'status="500"' not in metrics

    asyncio.run(go())


def test_non_finite_allowed_by_option(predictor: ModulePredictor) -> None:
    async def go() -> None:
        async with running(predictor, allow_non_finite=True) as c:
            r = await c.post(
                "/predict", content=b'{"values": [NaN,1,2,3,4,5,6,7,8,9]}', headers={"content-type": "application/json"}
            )
            assert r.status_code == 200
            assert r.json()["prediction"] == [[None]]  # NaN output goes out as JSON null, never invalid JSON

    asyncio.run(go())


def test_body_over_limit_is_413_declared_and_streamed(predictor: ModulePredictor) -> None:
    big = b'{"values": [' + b"0.0," * 400 + b"0.0]}"
    seen: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(1000):  # 1000 x 1 KiB, no Content-Length: must stop reading early
            seen.append(i)
            yield b" " * 1024

    async def go() -> None:
        async with running(predictor, max_body_bytes=1024) as c:
            r = await c.post("/predict", content=big, headers={"content-type": "application/json"})
            assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"
            assert "1024" in r.json()["error"]["message"]
            r = await c.post("/predict", content=chunks(), headers={"content-type": "application/json"})
            assert r.status_code == 413
            assert len(seen) < 10
            assert (await c.post("/predict", json={"values": X})).status_code == 200

    asyncio.run(go())


class Flaky(torch.nn.Module):
    """Raises when an input holds 666, like a model with a data-dependent bug."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x == 666).any():
            raise RuntimeError("boom: unsupported value in the model")
        return x.sum(1, keepdim=True)


def test_model_exception_is_500_with_request_id_and_neighbours_survive(caplog: pytest.LogCaptureFixture) -> None:
    p = ModulePredictor(Flaky(), [TensorSpec("x", (None, 3), "float32")], [TensorSpec("y", (None, 1), "float32")])

    async def go() -> None:
        async with running(p, max_wait_ms=20) as c:
            bodies = [{"values": [666.0, 0, 0] if i == 5 else [float(i), 1, 1]} for i in range(12)]
            rs = await asyncio.gather(*[c.post("/predict", json=b) for b in bodies])
            for i, r in enumerate(rs):
                if i == 5:
                    assert r.status_code == 500
                    err = r.json()["error"]
                    assert err["type"] == "internal" and err["request_id"] == r.headers["x-request-id"]
                    assert err["request_id"] in caplog.text
                else:
                    assert r.status_code == 200 and r.json()["prediction"] == [[i + 2.0]]
            assert (await c.post("/predict", json={"values": [1, 2, 3]})).json() == {"prediction": [[6.0]]}

    with caplog.at_level("ERROR", logger="torchkeep.serve"):
        asyncio.run(go())


class Gate(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.open.wait(10)
        return x


def _gated() -> tuple[ModulePredictor, Gate]:
    gate = Gate()
    return ModulePredictor(gate, [TensorSpec("x", (None, 2), "float32")], [TensorSpec("y", (None, 2), "float32")]), gate


def test_full_queue_is_503_with_retry_after_never_hangs() -> None:
    p, gate = _gated()

    async def go() -> None:
        async with running(p, max_queue=2, max_batch_size=1, max_wait_ms=0, warmup=False) as c:
            tasks = [asyncio.create_task(c.post("/predict", json={"values": [1.0, 2.0]})) for _ in range(8)]
            # one running, two queued: the other five are answered without waiting for the model
            async with asyncio.timeout(10):
                while sum(t.done() for t in tasks) < 5:
                    await asyncio.sleep(0.01)
            full = [t for t in tasks if t.done()]
            for t in full:
                r = t.result()
                assert r.status_code == 503 and r.headers["retry-after"] == "1"
                assert r.json()["error"]["type"] == "queue_full"
            gate.open.set()
            done = await asyncio.wait_for(asyncio.gather(*tasks), 10)
            assert sum(r.status_code == 200 for r in done) == 8 - len(full)
            assert "torchkeep_queue_depth 0" in (await c.get("/metrics")).text

    asyncio.run(go())


def test_request_timeout_is_504() -> None:
    p, gate = _gated()

    async def go() -> None:
        async with running(p, timeout_ms=200, warmup=False, max_batch_size=1) as c:
            rs = await asyncio.gather(*[c.post("/predict", json={"values": [1.0, 2.0]}) for _ in range(3)])
            for r in rs:
                assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
            gate.open.set()
            r = await c.post("/predict", json={"values": [1.0, 2.0]})
            assert r.status_code == 200 and r.json()["prediction"] == [[1.0, 2.0]]
            assert p.calls == [1, 1]  # the blocked call and this one: timed-out requests never ran

    asyncio.run(go())


class BadShape(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> Any:
        return x.sum()  # drops the batch dimension


def test_output_without_batch_dim_is_500_not_a_crash() -> None:
    p = ModulePredictor(BadShape(), [TensorSpec("x", (None, 2), "float32")], [TensorSpec("y", (None,), "float32")])

    async def go() -> None:
        async with running(p, warmup=False) as c:
            r = await c.post("/predict", json={"values": [1.0, 2.0]})
            assert r.status_code == 500 and r.json()["error"]["type"] == "internal"
            assert (await c.get("/healthz")).status_code == 200

    asyncio.run(go())


def test_warmup_refuses_nan_model() -> None:
    from torchkeep.errors import PredictorError
    from torchkeep.serve._loading import warm_up

    p = seed_predictor()
    with torch.no_grad():
        p.module.net[0].weight.fill_(float("nan"))
    with pytest.raises(PredictorError, match="NaN or Infinity"):
        warm_up(p)


def test_a_model_that_fails_warm_up_never_becomes_ready() -> None:
    from torchkeep.errors import PredictorError

    p = seed_predictor()
    with torch.no_grad():
        p.module.net[0].bias.fill_(float("inf"))

    async def go() -> None:
        async with running(p):
            pass  # pragma: no cover - startup must fail

    with pytest.raises(PredictorError, match="warm-up"):
        asyncio.run(go())
