"""The serving core and the model repository, in-process: version policies, per-model reload, queue accounting."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from torchkeep.errors import ServeError
from torchkeep.serve import ServeOptions, ServingCore, VersionPolicy

from .conftest import SeedMLP, eager_out, export_onnx, running, seed_predictor


def _repo(root: Path, versions: dict[str, list[str]]) -> dict[tuple[str, str], SeedMLP]:
    models = {}
    for name, vs in versions.items():
        for v in vs:
            (root / name / v).mkdir(parents=True)
            m = SeedMLP().eval()
            export_onnx(m, torch.randn(2, 10), root / name / v / "model.onnx")
            models[(name, v)] = m
    return models


def _body(x: np.ndarray) -> dict[str, object]:
    return {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


@pytest.mark.parametrize(
    ("text", "available", "selected"),
    [
        ("latest", [1, 2, 3], [3]),
        ("latest:2", [3, 1, 2], [2, 3]),
        ("all", [2, 1], [1, 2]),
        ("specific:1,3", [1, 2], [1]),
    ],
)
def test_version_policy(text: str, available: list[int], selected: list[int]) -> None:
    assert VersionPolicy.parse(text).select(available) == selected


@pytest.mark.parametrize("text", ["newest", "latest:0", "latest:x", "specific:", "specific:0", "all:2"])
def test_bad_version_policy_shows_the_valid_forms(text: str) -> None:
    with pytest.raises(ServeError, match="latest:N"):
        VersionPolicy.parse(text)


def test_default_policy_loads_the_newest_version_and_v2_picks_it(tmp_path: Path) -> None:
    models = _repo(tmp_path, {"a": ["1", "2", "10"], "b": ["3"]})
    (tmp_path / "a" / "notes").mkdir()  # not a version: ignored

    async def go() -> None:
        async with running(str(tmp_path)) as c:
            core: ServingCore = c.app.state.server.core  # type: ignore[attr-defined]
            assert {(e.name, e.version) for e in core.entries()} == {("a", "10"), ("b", "3")}
            x = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
            r = await c.post("/v2/models/a/infer", json=_body(x))
            assert r.json()["model_version"] == "10"
            got = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(3, 1)
            np.testing.assert_allclose(got, eager_out(models[("a", "10")], x), rtol=1e-4, atol=1e-5)
            assert (await c.post("/v2/models/a/versions/2/infer", json=_body(x))).status_code == 404
            index = (await c.post("/v2/repository/index", content=b"")).json()
            states = {(m["name"], m["version"]): m["state"] for m in index}
            assert states[("a", "10")] == "READY" and states[("a", "2")] == "UNAVAILABLE"
            ready = (await c.post("/v2/repository/index", json={"ready": True})).json()
            assert {(m["name"], m["version"]) for m in ready} == {("a", "10"), ("b", "3")}
            # /predict serves the default model (the first by name).
            r = await c.post("/predict", json={"values": x[0].tolist()})
            np.testing.assert_allclose(r.json()["prediction"], eager_out(models[("a", "10")], x[:1]), rtol=1e-4)

    asyncio.run(go())


def test_repository_poll_loads_new_versions_and_reloads_changed_ones(tmp_path: Path) -> None:
    _repo(tmp_path, {"a": ["1"]})

    async def go() -> None:
        async with running(str(tmp_path), watch=str(tmp_path), poll_s=60) as c:
            core: ServingCore = c.app.state.server.core  # type: ignore[attr-defined]
            x = np.ones((1, 10), np.float32)
            # A new version appears: latest:1 swaps to it and drops version 1.
            newer = SeedMLP().eval()
            (tmp_path / "a" / "2").mkdir()
            export_onnx(newer, torch.randn(2, 10), tmp_path / "a" / "2" / "model.onnx")
            assert await asyncio.to_thread(core.poll_once)
            assert [e.version for e in core.entries()] == ["2"]
            r = await c.post("/v2/models/a/infer", json=_body(x))
            np.testing.assert_allclose(r.json()["outputs"][0]["data"], eager_out(newer, x).ravel(), rtol=1e-4)
            # The version folder gets a newer file: that version is reloaded in place.
            rebuilt = SeedMLP().eval()
            export_onnx(rebuilt, torch.randn(2, 10), tmp_path / "a" / "2" / "model2.onnx")
            assert await asyncio.to_thread(core.poll_once)
            r = await c.post("/v2/models/a/infer", json=_body(x))
            np.testing.assert_allclose(r.json()["outputs"][0]["data"], eager_out(rebuilt, x).ravel(), rtol=1e-4)
            assert not await asyncio.to_thread(core.poll_once)  # nothing new
            metrics = (await c.get("/metrics")).text
            assert 'torchkeep_model_reloads_total{result="ok"} 1' in metrics
            assert 'torchkeep_model_memory_bytes{model="a",version="2"}' in metrics

    asyncio.run(go())


def test_unknown_default_model_is_refused_at_start(tmp_path: Path) -> None:
    _repo(tmp_path, {"a": ["1"]})
    with pytest.raises(ServeError, match="not in the repository"):
        ServingCore.from_target(str(tmp_path), ServeOptions(default_model="zzz"))


def test_single_model_speaks_v2_and_refuses_repository_load(predictor: object) -> None:
    async def go() -> None:
        async with running(seed_predictor(), model_name="seed") as c:
            assert (await c.get("/v2/health/live")).json() == {"live": True}
            assert (await c.get("/v2/health/ready")).status_code == 200
            assert (await c.get("/v2/models/seed/ready")).status_code == 200
            meta = (await c.get("/v2/models/seed")).json()
            assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 10]}]
            assert (await c.get("/v2/models/seed/versions/1/config")).json()["max_batch_size"] == 32
            assert (await c.post("/v2/repository/models/seed/load")).status_code == 400
            assert (await c.get("/v2/models/seed/infer")).status_code == 405
            x = np.zeros((2, 10), np.float32)
            body = {**_body(x), "parameters": {"binary_data_output": True}, "id": "abc"}
            r = await c.post("/v2/models/seed/infer", json=body)
            n = int(r.headers["inference-header-content-length"])
            head = r.json() if n == len(r.content) else __import__("json").loads(r.content[:n])
            assert head["id"] == "abc" and head["outputs"][0]["parameters"]["binary_data_size"] == 8
            assert np.frombuffer(r.content[n:], np.float32).shape == (2,)

    asyncio.run(go())


def test_a_large_request_counts_once_against_the_queue(predictor: object) -> None:
    """Issue 18 item 8: one big request is cut into chunks but takes one place in --max-queue."""

    async def go() -> None:
        async with running(seed_predictor(), max_batch_size=4, max_queue=2, max_body_bytes=4_000_000) as c:
            x = np.random.default_rng(0).standard_normal((400, 10)).astype(np.float32)
            r = await c.post("/v1/predict", json={"inputs": x.tolist()})
            assert r.status_code == 200, r.text
            assert len(r.json()["outputs"]["output"]) == 400
            core: ServingCore = c.app.state.server.core  # type: ignore[attr-defined]
            assert core.depth == 0

    asyncio.run(go())


def test_a_large_request_does_not_starve_small_ones() -> None:
    """Issue 18 item 8: small requests are served between the chunks of a large one."""

    async def go() -> None:
        async with running(seed_predictor(), max_batch_size=4, max_wait_ms=0, max_body_bytes=8_000_000) as c:
            core: ServingCore = c.app.state.server.core  # type: ignore[attr-defined]
            done: list[str] = []
            x = np.random.default_rng(0).standard_normal((2000, 10)).astype(np.float32)

            async def big() -> None:
                r = await c.post("/v1/predict", json={"inputs": x.tolist()})
                assert r.status_code == 200 and len(r.json()["outputs"]["output"]) == 2000
                done.append("big")

            async def small() -> None:
                # Sent once the big request is being served (its chunks hold a queue place), not
                # after a fixed sleep: on a fast machine all 500 chunks can finish in 50 ms.
                async with asyncio.timeout(10):
                    while core.depth == 0:
                        await asyncio.sleep(0)
                r = await c.post("/predict", json={"values": x[0].tolist()})
                assert r.status_code == 200
                done.append("small")

            await asyncio.gather(big(), small())
            assert done == ["small", "big"]
            assert core.depth == 0

    asyncio.run(go())
