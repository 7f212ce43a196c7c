"""A real server: `python -m torchkeep serve ...` as a subprocess on 127.0.0.1, driven over TCP.

All load loops are bounded in request count and in time.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from .conftest import SeedMLP, eager_out, export_onnx, real_server, user_model_file, write_version

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


async def _load(
    base: str, *, clients: int, per_client: int, stop: asyncio.Event | None = None
) -> tuple[list[int], list[str]]:
    """``clients`` connections, each sending up to ``per_client`` requests; statuses and transport errors."""
    statuses: list[int] = []
    failures: list[str] = []
    rng = np.random.default_rng(0)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0) as client:

        async def one(i: int) -> None:
            for _ in range(per_client):
                if stop is not None and stop.is_set():
                    return
                try:
                    r = await client.post("/predict", json={"values": rng.standard_normal(10).tolist()})
                    statuses.append(r.status_code)
                except httpx.HTTPError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")

        await asyncio.wait_for(asyncio.gather(*[one(i) for i in range(clients)]), timeout=120)
    return statuses, failures


def test_real_server_ready_correct_and_64_concurrent_clients(tmp_path: Path) -> None:
    target, model = user_model_file(tmp_path)  # an eager torchkeep model file, class from the user's module
    args = ("--import", "serve_user_models", "--input-shape", "1,10", "--max-batch-size", "32")
    with real_server(target, *args, cwd=tmp_path) as base:
        assert httpx.get(base + "/healthz").json() == {"status": "ok"}
        meta = httpx.get(base + "/v1/metadata").json()
        assert meta["inputs"] == [{"name": "input", "shape": [None, 10], "dtype": "float32"}]
        assert meta["model"]["backend"] == "eager"
        xs = np.random.default_rng(1).standard_normal((20, 10)).astype(np.float32)
        for x in xs[:5]:
            r = httpx.post(base + "/predict", json={"values": x.tolist()})
            np.testing.assert_allclose(r.json()["prediction"], eager_out(model, [x]), rtol=1e-4, atol=1e-5)
        r = httpx.post(base + "/v1/predict", json={"inputs": xs.tolist()})
        np.testing.assert_allclose(r.json()["outputs"]["output"], eager_out(model, xs), rtol=1e-4, atol=1e-5)
        r = httpx.post(base + "/predict", content=b"{oops", headers={"content-type": "application/json"})
        assert r.status_code == 400

        statuses, failures = asyncio.run(_load(base, clients=64, per_client=10))
        assert failures == []
        assert len(statuses) == 640 and set(statuses) == {200}
        metrics = httpx.get(base + "/metrics").text
        assert 'torchkeep_requests_total{route="/predict",status="200"} 645' in metrics
        batches = [line for line in metrics.splitlines() if line.startswith("torchkeep_batch_size_count")]
        n_batches = int(float(batches[0].split()[-1]))
        assert n_batches < 640  # requests were merged into batches


def test_hot_reload_under_load_drops_nothing(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    v1, v2 = SeedMLP(), SeedMLP()
    now = time.time()
    write_version(models, "v1.onnx", v1, mtime=now - 60)
    with real_server(models, "--watch", str(models), "--poll-s", "0.2") as base:
        assert httpx.get(base + "/v1/metadata").json()["model"]["version"].startswith("v1.onnx")

        async def scenario() -> tuple[list[int], list[str], str]:
            stop = asyncio.Event()
            load = asyncio.create_task(_load(base, clients=32, per_client=200, stop=stop))
            await asyncio.sleep(0.5)
            (models / "v1b.onnx").write_bytes(b"not an onnx model at all")  # bad: refused, v1 keeps serving
            os.utime(models / "v1b.onnx", (now - 30, now - 30))
            await asyncio.sleep(0.6)
            await asyncio.to_thread(write_version, models, "v2.onnx", v2)
            version = ""
            async with httpx.AsyncClient(base_url=base) as c:
                for _ in range(100):  # bounded: up to 20 s
                    version = (await c.get("/v1/metadata")).json()["model"]["version"]
                    if version.startswith("v2.onnx"):
                        break
                    await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)
            stop.set()
            statuses, failures = await load
            return statuses, failures, version

        statuses, failures, version = asyncio.run(scenario())
        assert version.startswith("v2.onnx")
        assert failures == [] and statuses and set(statuses) == {200}
        x = [[0.25] * 10]
        r = httpx.post(base + "/v1/predict", json={"inputs": x}).json()
        np.testing.assert_allclose(r["outputs"]["output"], eager_out(v2, x), rtol=1e-4, atol=1e-5)
        meta = httpx.get(base + "/v1/metadata").json()
        assert any(k.startswith("v1b.onnx") for k in meta["refused_versions"])


def test_workers_flag_runs_processes(tmp_path: Path) -> None:
    model = SeedMLP()
    target = export_onnx(model, torch.randn(2, 10), tmp_path / "seed.onnx")
    with real_server(target, "--workers", "2") as base:
        statuses, failures = asyncio.run(_load(base, clients=8, per_client=10))
        assert failures == [] and set(statuses) == {200}
        r = httpx.post(base + "/predict", json={"values": [0.5] * 10})
        np.testing.assert_allclose(r.json()["prediction"], eager_out(model, [[0.5] * 10]), rtol=1e-4, atol=1e-5)


def test_serve_smoke_script(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "PYTHON": os.environ.get("PYTHON", __import__("sys").executable),
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "serve-smoke.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "serve-smoke: OK" in proc.stdout


def test_cli_reports_a_bad_target_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from torchkeep.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["serve", str(tmp_path / "missing.onnx"), "--port", "1"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "error:" in err and "no such file" in err
    with pytest.raises(SystemExit) as exc:
        main(["serve", str(tmp_path), "--max-batch-size", "0"])
    assert exc.value.code == 1 and "max_batch_size" in capsys.readouterr().err
