"""Choosing and loading a backend: suffixes, export directories, refusals with clear messages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import torchkeep as tk
from torchkeep.io._manifest import read_manifest, write_manifest
from torchkeep.runtime import backend_for_file
from torchkeep.runtime._loader import backend_order
from torchkeep.runtime.tensorrt import check_sidecar

from .conftest import Case


@pytest.mark.parametrize(
    ("name", "backend"),
    [
        ("m.pt2", "pt2"),
        ("m.aoti.pt2", "aoti"),
        ("m.onnx", "onnxruntime"),
        ("m.torchscript.pt", "torchscript"),
        ("m.pt", "torchscript"),
        ("m.engine", "tensorrt"),
        ("m.plan", "tensorrt"),
        ("m.safetensors", "eager"),
    ],
)
def test_backend_for_file(name: str, backend: str) -> None:
    assert backend_for_file(name) == backend


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    weird = tmp_path / "model.bin"
    weird.write_bytes(b"\0" * 8)
    with pytest.raises(tk.PredictorError, match=r"cannot tell the backend.*pass backend="):
        tk.load_predictor(weird)
    with pytest.raises(tk.CheckpointNotFoundError):
        tk.load_predictor(tmp_path / "nothing.onnx")
    with pytest.raises(tk.PredictorError, match="unknown backend 'tflite'"):
        tk.load_predictor(weird, backend="tflite")


def test_pickle_pt_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(1)}, path)  # a pickle, as torch.save writes it
    with pytest.raises(tk.PredictorError, match=r"not a TorchScript archive.*--trust-pickle"):
        tk.load_predictor(path)


def test_cuda_requests_without_cuda(cases: dict[str, Case], tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(tk.PredictorError, match="CUDA is not available"):
        tk.load_predictor(cases["mlp"].files["onnx"], device="cuda")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(tk.PredictorError, match="CUDA only"):
        tk.load_predictor(engine, backend="tensorrt")


def test_directory_uses_recorded_benchmark(cases: dict[str, Case], tmp_path: Path) -> None:
    directory = tmp_path / "export"
    shutil.copytree(cases["mlp"].directory, directory)
    manifest = read_manifest(directory)
    manifest["benchmark"] = {
        "device": "cpu",
        "results": [
            {"backend": "torchscript", "batch_size": 1, "p50_ms": 0.01},
            {"backend": "onnxruntime", "batch_size": 1, "p50_ms": 0.02},
            {"backend": "pt2", "batch_size": 32, "p50_ms": 0.05},
            {"backend": "torchscript", "batch_size": 32, "p50_ms": 0.10},
        ],
        "fastest": {"1": "torchscript", "32": "pt2"},
    }
    write_manifest(directory, manifest)
    assert tk.load_predictor(directory, batch_size=32).backend == "pt2"
    assert tk.load_predictor(directory, batch_size=1).backend == "torchscript"
    assert tk.load_predictor(directory).backend == "torchscript"  # best over both batch sizes
    assert backend_order(manifest, "cuda:0", 1)[0] == "tensorrt"  # a CPU benchmark says nothing about CUDA


@pytest.mark.parametrize(
    "garbage",
    [
        {"device": "cpu", "results": 7},
        {"device": "cpu", "results": [1, "x", {"backend": ["pt2"], "batch_size": [1], "p50_ms": "fast"}]},
        {"device": "cpu", "results": [{"backend": "pt2", "batch_size": 1, "p50_ms": -1}], "fastest": [1]},
        "not an object",
    ],
)
def test_garbage_benchmark_section_falls_back(cases: dict[str, Case], tmp_path: Path, garbage: object) -> None:
    directory = tmp_path / "export"
    shutil.copytree(cases["mlp"].directory, directory)
    manifest = read_manifest(directory)
    manifest["benchmark"] = garbage
    write_manifest(directory, manifest)
    assert tk.load_predictor(directory).backend == "onnxruntime"
    assert tk.load_predictor(directory, batch_size=1).backend == "onnxruntime"


def test_every_backend_satisfies_the_protocol(cases: dict[str, Case]) -> None:
    case = cases["twoheads"]
    for path in case.files.values():
        predictor = tk.load_predictor(path)
        assert isinstance(predictor, tk.Predictor)
        assert predictor.device == "cpu"
        assert [s.name for s in predictor.inputs] == ["x", "scale"]
    assert isinstance(tk.load_predictor(case.model), tk.Predictor)


def test_directory_skips_a_broken_artifact(
    cases: dict[str, Case], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "export"
    shutil.copytree(cases["mlp"].directory, directory)
    (directory / "model.onnx").write_bytes(b"garbage")
    predictor = tk.load_predictor(directory)
    assert predictor.backend != "onnxruntime"
    assert "skipping the onnxruntime backend" in caplog.text
    with pytest.raises(tk.PredictorError, match="onnxruntime could not open"):
        tk.load_predictor(directory, backend="onnxruntime")
    with pytest.raises(tk.PredictorError, match=r"no working aoti artifact.*it has: "):
        tk.load_predictor(directory, backend="aoti")


def test_hostile_manifest_paths_are_ignored(cases: dict[str, Case], tmp_path: Path) -> None:
    directory = tmp_path / "export"
    directory.mkdir()
    outside = tmp_path / "outside.onnx"
    shutil.copy(cases["mlp"].files["onnx"], outside)
    write_manifest(directory, {"artifacts": {"onnx": {"ok": True, "file": "../outside.onnx"}}})
    with pytest.raises(tk.PredictorError, match="no artifact that runs"):
        tk.load_predictor(directory)


def test_tensorrt_sidecar_mismatch_is_refused() -> None:
    check_sidecar("m.engine", {"tensorrt": "10.3.0", "compute_capability": "8.9"}, "10.3.0", (8, 9))
    with pytest.raises(
        tk.PredictorError, match=r"built with TensorRT 10.0.1, this machine has TensorRT 10.3.0.*rebuild"
    ):
        check_sidecar("m.engine", {"tensorrt": "10.0.1", "compute_capability": [8, 9]}, "10.3.0", (8, 9))
    with pytest.raises(tk.PredictorError, match=r"compute capability 8.0 \(NVIDIA A100\), this GPU is 8.9"):
        check_sidecar(
            "m.engine",
            {"tensorrt": "10.3.0", "compute_capability": [8, 0], "device_name": "NVIDIA A100"},
            "10.3.0",
            (8, 9),
        )


@pytest.mark.gpu
def test_tensorrt_engine_matches_eager(cases: dict[str, Case], tmp_path: Path) -> None:
    trt = pytest.importorskip("tensorrt")
    case = cases["mlp"]
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(case.files["onnx"]))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 10), (8, 10), (64, 10))
    config.add_optimization_profile(profile)
    engine_path = tmp_path / "model.engine"
    engine_path.write_bytes(bytes(builder.build_serialized_network(network, config)))
    capability = torch.cuda.get_device_capability()
    (tmp_path / "model.engine.json").write_text(
        json.dumps({"tensorrt": trt.__version__, "compute_capability": list(capability)})
    )
    predictor = tk.load_predictor(engine_path, device="cuda")
    x = case.example(5)[0]
    with torch.no_grad():
        want = case.model(x)
    torch.testing.assert_close(predictor(x).cpu(), want, rtol=1e-3, atol=1e-4)
    with pytest.raises(tk.PredictorInputError, match="dimension 1"):
        predictor(torch.zeros(2, 3))
    (tmp_path / "model.engine.json").write_text(
        json.dumps({"tensorrt": "1.0.0", "compute_capability": list(capability)})
    )
    with pytest.raises(tk.PredictorError, match=r"built with TensorRT 1\.0\.0"):
        tk.load_predictor(engine_path, device="cuda")


@pytest.mark.gpu
def test_cuda_torch_backends(cases: dict[str, Case]) -> None:
    case = cases["cnn"]
    x = case.example(3)[0]
    with torch.no_grad():
        want = case.model(x)
    for fmt in ("pt2", "torchscript"):
        predictor = tk.load_predictor(case.files[fmt], device="cuda")
        assert predictor.device == "cuda:0"
        out = predictor(x)
        assert out.device.type == "cpu"  # outputs come back where the inputs were
        torch.testing.assert_close(out, want, rtol=1e-3, atol=1e-4)


def test_missing_onnxruntime_names_the_extra(cases: dict[str, Case], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(tk.MissingDependencyError, match=r"pip install 'torchkeep\[onnx\]'"):
        tk.load_predictor(cases["mlp"].files["onnx"])
    # An export directory moves on to the next backend instead.
    assert tk.load_predictor(cases["mlp"].directory).backend != "onnxruntime"
