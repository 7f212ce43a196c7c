"""In-process tests (httpx.ASGITransport) for every endpoint of the app."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
import pytest
import torch

from torchkeep.errors import ServeError, UsageError
from torchkeep.runtime import TensorSpec
from torchkeep.serve import ServeOptions, create_app

from .conftest import ModulePredictor, running

X = [0.1 * i for i in range(10)]


def eager(p: ModulePredictor, x: Any) -> np.ndarray:
    with torch.no_grad():
        return p.module(torch.tensor(np.asarray(x, dtype=np.float32))).numpy()


def test_predict_is_tutorial_compatible(predictor: ModulePredictor) -> None:
    async def go() -> None:
        async with running(predictor) as c:
            r = await c.post("/predict", json={"values": X})
            assert r.status_code == 200
            body = r.json()
            assert set(body) == {"prediction"}
            np.testing.assert_allclose(body["prediction"], eager(predictor, [X]), rtol=1e-6)
            assert np.asarray(body["prediction"]).shape == (1, 1)  # like the tutorial's output.tolist()

    asyncio.run(go())


def test_v1_predict_json_forms_and_npy(predictor: ModulePredictor) -> None:
    batch = np.random.default_rng(0).standard_normal((5, 10)).astype(np.float32)
    want = eager(predictor, batch)

    async def go() -> None:
        async with running(predictor) as c:
            for payload in ({"inputs": {"x": batch.tolist()}}, {"inputs": batch.tolist()}):
                r = await c.post("/v1/predict", json=payload)
                assert r.status_code == 200, r.text
                body = r.json()
                np.testing.assert_allclose(body["outputs"]["output"], want, rtol=1e-6)
                assert body["model"] == {"version": "in-process", "backend": "eager"}
            buf = io.BytesIO()
            np.save(buf, batch)
            r = await c.post("/v1/predict", content=buf.getvalue(), headers={"content-type": "application/x-npy"})
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(r.json()["outputs"]["output"], want, rtol=1e-6)
            headers = {"content-type": "application/x-npy", "accept": "application/x-npy"}
            r = await c.post("/v1/predict", content=buf.getvalue(), headers=headers)
            assert r.headers["content-type"] == "application/x-npy" and r.headers["x-model-version"] == "in-process"
            np.testing.assert_allclose(np.load(io.BytesIO(r.content), allow_pickle=False), want, rtol=1e-6)

    asyncio.run(go())


def test_health_ready_metadata_docs(predictor: ModulePredictor) -> None:
    async def go() -> None:
        async with running(predictor, max_batch_size=8) as c:
            assert (await c.get("/healthz")).json() == {"status": "ok"}
            r = await c.get("/readyz")
            assert r.status_code == 200 and r.json()["status"] == "ready"
            meta = (await c.get("/v1/metadata")).json()
            assert meta["inputs"] == [{"name": "x", "shape": [None, 10], "dtype": "float32"}]
            assert meta["outputs"][0]["name"] == "output"
            assert meta["model"]["backend"] == "eager" and meta["model"]["version"] == "in-process"
            assert meta["batching"]["max_batch_size"] == 8
            assert (await c.get("/docs")).status_code == 200
            spec = (await c.get("/openapi.json")).json()
            assert {"/predict", "/v1/predict", "/healthz", "/readyz", "/v1/metadata", "/metrics"} <= set(spec["paths"])
            r = await c.get("/nope")
            assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
            r = await c.get("/predict")
            assert r.status_code == 405 and "error" in r.json()

    asyncio.run(go())


def test_not_ready_before_start(predictor: ModulePredictor) -> None:
    import httpx

    async def go() -> None:
        app = create_app(predictor)  # lifespan not started: loaded, not warmed
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            assert (await c.get("/healthz")).status_code == 200
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            r = await c.post("/predict", json={"values": X})
            assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready"

    asyncio.run(go())


def test_metrics_prometheus_text(predictor: ModulePredictor) -> None:
    async def go() -> None:
        async with running(predictor) as c:
            await asyncio.gather(*[c.post("/predict", json={"values": X}) for _ in range(20)])
            await c.post("/predict", content=b"not json", headers={"content-type": "application/json"})
            r = await c.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            text = r.text
            assert 'torchkeep_requests_total{route="/predict",status="200"} 20' in text
            assert 'torchkeep_requests_total{route="/predict",status="400"} 1' in text
            assert 'torchkeep_request_duration_seconds_count{route="/predict"} 21' in text
            assert "# TYPE torchkeep_batch_size histogram" in text
            assert "torchkeep_batch_size_sum" in text and "torchkeep_queue_depth 0" in text
            total = sum(
                float(line.split()[-1]) for line in text.splitlines() if line.startswith("torchkeep_batch_size_sum")
            )
            assert total == 20  # every example of the 20 requests went through the batcher

    asyncio.run(go())


def test_requests_are_batched(predictor: ModulePredictor) -> None:
    async def go() -> None:
        async with running(predictor, max_batch_size=16, max_wait_ms=20) as c:
            predictor.calls.clear()
            rs = await asyncio.gather(*[c.post("/predict", json={"values": [float(i)] * 10}) for i in range(48)])
            assert {r.status_code for r in rs} == {200}
            assert max(predictor.calls) > 1 and max(predictor.calls) <= 16
            assert sum(predictor.calls) == 48
            for i, r in enumerate(rs):  # each answer belongs to its own request
                np.testing.assert_allclose(
                    r.json()["prediction"], eager(predictor, [[float(i)] * 10]), rtol=1e-4, atol=1e-6
                )

    asyncio.run(go())


def test_options_are_validated() -> None:
    with pytest.raises(UsageError, match="max_batch_size"):
        ServeOptions(max_batch_size=0)
    with pytest.raises(UsageError, match="max_wait_ms"):
        ServeOptions(max_wait_ms=-1)
    with pytest.raises(UsageError, match="threads"):
        ServeOptions(threads=True)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="unknown option"):
        ServeOptions.from_json('{"max_batchsize": 3}')
    assert ServeOptions.from_json(ServeOptions(max_queue=5).to_json()).max_queue == 5
    with pytest.raises(TypeError):
        ServeOptions(32)  # type: ignore[misc]  # keyword-only


class MultiInput(torch.nn.Module):
    def forward(self, ids: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ids.float().sum(1, keepdim=True) * scale, ids * 2


def test_multi_input_int_model() -> None:
    p = ModulePredictor(
        MultiInput(),
        [TensorSpec("ids", (None, 3), "int64"), TensorSpec("scale", (None, 1), "float32")],
        [TensorSpec("total", (None, 1), "float32"), TensorSpec("double", (None, 3), "int64")],
    )

    async def go() -> None:
        async with running(p) as c:
            r = await c.post("/v1/predict", json={"inputs": {"ids": [[1, 2, 3], [4, 5, 6]], "scale": [[1.0], [0.5]]}})
            assert r.status_code == 200, r.text
            assert r.json()["outputs"] == {"total": [[6.0], [7.5]], "double": [[2, 4, 6], [8, 10, 12]]}
            r = await c.post("/v1/predict", json={"inputs": [[[1, 2, 3]], [[2.0]]]})
            assert r.json()["outputs"]["total"] == [[12.0]]
            bad = [
                ({"inputs": {"ids": [[1.5, 2, 3]], "scale": [[1.0]]}}, "integers"),
                ({"inputs": {"ids": [[1, 2, 3]], "scale": [[1.0], [2.0]]}}, "different batch sizes"),
                ({"inputs": {"ids": [[1, 2, 3]]}}, "missing inputs ['scale']"),
                ({"inputs": {"ids": [[1, 2, 3]], "scale": [[1.0]], "extra": [1]}}, "unexpected inputs ['extra']"),
                ({"inputs": {"ids": [[2**70, 2, 3]], "scale": [[1.0]]}}, "ids"),
                ({"inputs": [[[1, 2, 3]]]}, "expected 2"),
            ]
            for payload, words in bad:
                r = await c.post("/v1/predict", json=payload)
                assert r.status_code == 422, (payload, r.text)
                assert words in r.json()["error"]["message"]
                assert "'ids': int64[batch, 3]" in r.json()["error"]["message"] or words == "different batch sizes"
            r = await c.post("/predict", json={"values": [1, 2, 3]})
            assert r.status_code == 422 and "/v1/predict" in r.json()["error"]["message"]
            buf = io.BytesIO()
            np.save(buf, np.zeros((1, 3), np.int64))
            r = await c.post("/v1/predict", content=buf.getvalue(), headers={"content-type": "application/x-npy"})
            assert r.status_code == 415

    asyncio.run(go())


def test_import_option_registers_user_modules(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from torchkeep.serve._loading import import_modules

    (tmp_path / "my_models_for_serve.py").write_text("LOADED = True\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    import_modules(["my_models_for_serve"])
    assert sys.modules["my_models_for_serve"].LOADED is True
    with pytest.raises(ServeError, match="--import no_such_module_xyz"):
        import_modules(["no_such_module_xyz"])
    with pytest.raises(UsageError, match="imports"):
        ServeOptions(imports="mypkg")  # type: ignore[arg-type]
    assert ServeOptions.from_json(ServeOptions(imports=("a", "b")).to_json()).imports == ("a", "b")


def test_eager_model_file_needs_input_shape(tmp_path: Any) -> None:
    from .conftest import user_model_file

    path, model = user_model_file(tmp_path)
    with pytest.raises(ServeError, match="--input-shape 1,10"):
        create_app(str(path), options=ServeOptions(imports=("serve_user_models",)))

    async def go() -> None:
        async with running(str(path), input_shapes=((1, 10),)) as c:
            meta = (await c.get("/v1/metadata")).json()
            assert meta["model"]["backend"] == "eager" and meta["model"]["version"].startswith("model.safetensors")
            r = await c.post("/predict", json={"values": X})
            np.testing.assert_allclose(r.json()["prediction"], model(torch.tensor([X])).detach().numpy(), rtol=1e-5)

    asyncio.run(go())
    with pytest.raises(UsageError, match="input_shapes"):
        ServeOptions(input_shapes=((0, 10),))
    with pytest.raises(UsageError, match="input_dtypes"):
        ServeOptions(input_shapes=((1, 2), (1, 3), (1, 4)), input_dtypes=("float32", "int64"))


@pytest.mark.gpu
def test_serves_on_cuda() -> None:
    from torchkeep.runtime import load_predictor

    from .conftest import SeedMLP

    model = SeedMLP()
    p = load_predictor(model, device="cuda:0", example_inputs=[torch.zeros(1, 10)])

    async def go() -> None:
        async with running(p, device="cuda:0") as c:
            assert (await c.get("/v1/metadata")).json()["model"]["device"].startswith("cuda")
            r = await c.post("/predict", json={"values": X})
            want = model.cpu()(torch.tensor([X])).detach().numpy()
            np.testing.assert_allclose(r.json()["prediction"], want, rtol=1e-3, atol=1e-4)

    asyncio.run(go())


def test_batch_larger_than_max_batch_size_is_split(predictor: ModulePredictor) -> None:
    batch = np.random.default_rng(3).standard_normal((70, 10)).astype(np.float32)

    async def go() -> None:
        async with running(predictor, max_batch_size=16) as c:
            predictor.calls.clear()
            r = await c.post("/v1/predict", json={"inputs": batch.tolist()})
            assert r.status_code == 200
            np.testing.assert_allclose(r.json()["outputs"]["output"], eager(predictor, batch), rtol=1e-5, atol=1e-6)
            assert max(predictor.calls) <= 16 and sum(predictor.calls) == 70

    asyncio.run(go())


class Halve(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x / 2).to(torch.bfloat16)


def test_scalar_examples_and_bfloat16_outputs() -> None:
    class TorchOut(ModulePredictor):  # returns torch tensors, as the Protocol allows
        def __call__(self, *args: Any) -> Any:
            with torch.inference_mode():
                return self.module(torch.from_numpy(np.asarray(args[0])))

    q = TorchOut(Halve(), [TensorSpec("x", (None,), "float32")], [TensorSpec("y", (None,), "bfloat16")])

    async def go() -> None:
        async with running(q) as c:
            r = await c.post("/predict", json={"values": 3.0})
            assert r.status_code == 200 and r.json() == {"prediction": [1.5]}
            r = await c.post("/v1/predict", json={"inputs": [1.0, 4.0]})
            assert r.json()["outputs"]["y"] == [0.5, 2.0]

    asyncio.run(go())
