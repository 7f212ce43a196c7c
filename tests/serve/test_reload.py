"""Hot reload: a new version is verified, then swapped in; a bad one is refused and the old one serves."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from torchkeep.serve._loading import find_version

from .conftest import SeedMLP, eager_out, running, write_version

X = [[0.3] * 10]


def _nan_model() -> SeedMLP:
    m = SeedMLP()
    with torch.no_grad():
        m.net[2].weight.fill_(float("nan"))
    return m


class Wider(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(12, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def test_newest_version_and_hidden_files_ignored(tmp_path: Path) -> None:
    now = time.time()
    write_version(tmp_path, "a.onnx", SeedMLP(), mtime=now - 20)
    b = write_version(tmp_path, "b.onnx", SeedMLP(), mtime=now - 10)
    (tmp_path / ".c.onnx.tmp").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("not a model")
    path, version = find_version(str(tmp_path))
    assert path == str(b) and version.startswith("b.onnx")
    with pytest.raises(FileNotFoundError, match="no such file"):
        find_version(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no model file"):
        find_version(str(empty))


def test_swap_then_refuse_bad_versions(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = time.time()
    v1, v2 = SeedMLP(), SeedMLP()
    write_version(tmp_path, "v1.onnx", v1, mtime=now - 100)

    async def go() -> None:
        async with running(str(tmp_path), watch=str(tmp_path), poll_s=3600) as c:
            server = c.app.state.server  # type: ignore[attr-defined]
            meta = (await c.get("/v1/metadata")).json()
            assert meta["model"]["version"].startswith("v1.onnx")
            r = await c.post("/v1/predict", json={"inputs": X})
            np.testing.assert_allclose(r.json()["outputs"]["output"], eager_out(v1, X), rtol=1e-5, atol=1e-6)

            write_version(tmp_path, "v2.onnx", v2, mtime=now - 90)
            assert await asyncio.to_thread(server.watcher.check_once)
            r = await c.post("/v1/predict", json={"inputs": X})
            assert r.json()["model"]["version"].startswith("v2.onnx")
            np.testing.assert_allclose(r.json()["outputs"]["output"], eager_out(v2, X), rtol=1e-5, atol=1e-6)

            # A corrupt file, a NaN model, a model with other inputs: each refused, v2 keeps serving.
            for i, publish in enumerate(
                [
                    lambda: (tmp_path / "v3.onnx").write_bytes(b"\x08\x07garbage-not-onnx"),
                    lambda: write_version(tmp_path, "v4.onnx", _nan_model()),
                    lambda: write_version(tmp_path, "v5.onnx", Wider(), dim=12),
                ]
            ):
                publish()
                newest = max(tmp_path.glob("v*.onnx"), key=lambda p: p.stat().st_mtime_ns)
                import os

                os.utime(newest, (now - 80 + i, now - 80 + i))
                assert not await asyncio.to_thread(server.watcher.check_once)
                assert not await asyncio.to_thread(server.watcher.check_once)  # refused once, not retried
                meta = (await c.get("/v1/metadata")).json()
                assert meta["model"]["version"].startswith("v2.onnx")
                assert len(meta["refused_versions"]) == i + 1
                r = await c.post("/v1/predict", json={"inputs": X})
                assert r.status_code == 200
                np.testing.assert_allclose(r.json()["outputs"]["output"], eager_out(v2, X), rtol=1e-5, atol=1e-6)
            reasons = " ".join(meta["refused_versions"].values())
            assert "NaN" in reasons and "changed" in reasons
            metrics = (await c.get("/metrics")).text
            assert 'torchkeep_model_reloads_total{result="ok"} 1' in metrics
            assert 'torchkeep_model_reloads_total{result="refused"} 3' in metrics

    with caplog.at_level("INFO", logger="torchkeep.serve"):
        asyncio.run(go())
    assert "hot reload: refused" in caplog.text
    # A successful swap is routine (INFO); only refusals are worth a warning or an error.
    assert [r.levelname for r in caplog.records if "now serving" in r.getMessage()] == ["INFO"]


def test_in_flight_batch_finishes_on_old_version(tmp_path: Path) -> None:
    """The batcher reads the slot once per batch: swapping mid-batch does not touch that batch."""
    import threading

    from torchkeep.runtime import TensorSpec

    from .conftest import ModulePredictor

    started, release = threading.Event(), threading.Event()

    class Slow(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            started.set()
            release.wait(10)
            return x * 0 + 1

    old = ModulePredictor(Slow(), [TensorSpec("x", (None, 2), "float32")], [TensorSpec("y", (None, 2), "float32")])

    class Two(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 0 + 2

    new = ModulePredictor(Two(), old.inputs, old.outputs)

    async def go() -> None:
        async with running(old, warmup=False) as c:
            server = c.app.state.server  # type: ignore[attr-defined]
            task = asyncio.create_task(c.post("/predict", json={"values": [5.0, 5.0]}))
            await asyncio.to_thread(started.wait, 10)
            from torchkeep.serve import ModelSlot

            server._swap(ModelSlot(predictor=new, version="v-new"))
            release.set()
            r = await task
            assert r.json()["prediction"] == [[1.0, 1.0]]
            r = await c.post("/v1/predict", json={"inputs": [[5.0, 5.0]]})
            assert r.json()["outputs"]["y"] == [[2.0, 2.0]] and r.json()["model"]["version"] == "v-new"

    asyncio.run(go())


def test_checkpoint_directory_newest_step_wins_over_mtime(tmp_path: Path) -> None:
    import os

    import torchkeep as tk

    now = time.time()
    for i, step in enumerate((10, 200, 30)):
        path = tmp_path / f"ckpt-{step}.safetensors"
        tk.save_checkpoint(str(path), step=step, model=SeedMLP())
        os.utime(path, (now - i, now - i))  # step 200 is not the newest file
    path, version = find_version(str(tmp_path))
    assert path.endswith("ckpt-200.safetensors") and "@200" in version


def test_export_directory_backend_from_benchmark(tmp_path: Path) -> None:
    from torchkeep.io._manifest import read_manifest, write_manifest
    from torchkeep.runtime import fastest_backend

    arts = {
        "pt2": {"ok": True, "file": "model.pt2", "backend": "pt2"},
        "onnx": {"ok": True, "file": "model.onnx", "backend": "onnxruntime"},
        "tensorrt": {"ok": False, "file": None, "backend": "tensorrt"},
    }
    write_manifest(tmp_path, {"artifacts": arts, "benchmark": {"fastest": {"1": "pt2", "32": "onnxruntime"}}})
    assert fastest_backend(read_manifest(tmp_path), batch_size=32) == "onnxruntime"
    assert fastest_backend(read_manifest(tmp_path), batch_size=1) == "pt2"
    assert fastest_backend(read_manifest(tmp_path), batch_size=4) == "pt2"  # nearest measured batch size
    write_manifest(tmp_path, {"artifacts": arts, "benchmark": {"fastest": {"32": "tensorrt"}}})
    assert fastest_backend(read_manifest(tmp_path), batch_size=32) is None  # the failed artifact is never chosen
    write_manifest(tmp_path, {"artifacts": arts})
    assert fastest_backend(read_manifest(tmp_path), batch_size=32) is None  # no benchmark: the runtime's preference order
    path, version = find_version(str(tmp_path))
    assert path == str(tmp_path) and version.startswith(tmp_path.name + "@")


@pytest.mark.parametrize("dedup", [False, True], ids=["plain", "dedup"])
def test_checkpoint_manager_directory_hot_reload(tmp_path: Path, dedup: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A training run writes checkpoints with tk.CheckpointManager; the server follows the newest step."""
    import torchkeep as tk
    from torchkeep.checkpoint.layouts import dedup as dedup_layout

    from .conftest import user_model_file

    monkeypatch.setattr(dedup_layout, "INLINE_BYTES", 1)  # this small model's tensors go to blobs too
    _, model = user_model_file(tmp_path)
    run = tmp_path / "run"
    with tk.CheckpointManager(run, dedup=dedup, model=model) as manager:
        manager.save(step=100)
        assert (run / "blobs").is_dir() == dedup
        first = eager_out(model, X)

        async def go() -> None:
            async with running(str(run), watch=str(run), poll_s=3600, input_shapes=((1, 10),)) as c:
                server = c.app.state.server  # type: ignore[attr-defined]
                r = (await c.post("/v1/predict", json={"inputs": X})).json()
                assert "@100" in r["model"]["version"] and r["model"]["backend"] == "eager"
                np.testing.assert_allclose(r["outputs"]["output"], first, rtol=1e-5)
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(0.5)
                await asyncio.to_thread(manager.save, step=200)
                assert await asyncio.to_thread(server.watcher.check_once)
                r = (await c.post("/v1/predict", json={"inputs": X})).json()
                assert "@200" in r["model"]["version"]
                np.testing.assert_allclose(r["outputs"]["output"], eager_out(model, X), rtol=1e-5)
                assert not np.allclose(r["outputs"]["output"], first)

        asyncio.run(go())


@pytest.mark.slow
def test_export_directory_served_and_reexport_hot_swapped(tmp_path: Path) -> None:
    import torchkeep as tk

    if not hasattr(tk, "export"):
        pytest.skip("tk.export is not in this tree yet")
    v1, v2 = SeedMLP(), SeedMLP()
    out = tmp_path / "export"
    tk.export(v1, (torch.randn(1, 10),), out, formats=("onnx",))

    async def go() -> None:
        async with running(str(out), watch=str(out), poll_s=3600) as c:
            server = c.app.state.server  # type: ignore[attr-defined]
            r = (await c.post("/v1/predict", json={"inputs": X})).json()
            assert r["model"]["backend"] == "onnxruntime" and r["model"]["version"].startswith("export@")
            first_version = r["model"]["version"]
            np.testing.assert_allclose(r["outputs"][server.slot.predictor.outputs[0].name], eager_out(v1, X), rtol=1e-4)
            await asyncio.sleep(1.1)  # export.json's created_at has one-second resolution
            await asyncio.to_thread(tk.export, v2, (torch.randn(1, 10),), out, formats=("onnx",))
            assert await asyncio.to_thread(server.watcher.check_once)
            r = (await c.post("/v1/predict", json={"inputs": X})).json()
            assert r["model"]["version"] != first_version
            np.testing.assert_allclose(r["outputs"][server.slot.predictor.outputs[0].name], eager_out(v2, X), rtol=1e-4)

    asyncio.run(go())
