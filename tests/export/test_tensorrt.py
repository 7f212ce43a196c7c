"""TensorRT export: name-based TensorRT 10/11 API, dynamic-batch profile, fp16 via strong typing.

The engine tests need a CUDA GPU and the tensorrt package; they skip cleanly elsewhere. Without
tensorrt, asking for the format is a MissingDependencyError that names the pip command.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from export_models import CNN, MLP
from export_native import load_native

import torchkeep as tk
from torchkeep.export import tensorrt as trt_export

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed")
def test_missing_tensorrt_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(tk.MissingDependencyError, match=r"pip install 'torchkeep\[tensorrt\]'"):
        tk.export(MLP().eval(), torch.randn(1, 10), tmp_path, formats=["tensorrt"])
    report = tk.export(MLP().eval(), torch.randn(1, 10), tmp_path, formats=["onnx", "tensorrt"], continue_on_error=True)
    assert report["onnx"].ok
    assert report["tensorrt"].step == "import" and "tensorrt" in (report["tensorrt"].error or "")


def test_no_removed_tensorrt_apis_are_used() -> None:
    source = Path(trt_export.__file__).read_text()
    code = source.split('"""', 2)[2]  # the module docstring names the removed APIs on purpose
    for removed in (
        "max_workspace_size",
        "fp16_mode",
        "build_cuda_engine",
        "get_binding",
        "execute_v2",
        "EXPLICIT_BATCH",
    ):
        assert removed not in code, removed
    for current in (
        "build_serialized_network",
        "set_memory_pool_limit",
        "create_optimization_profile",
        "STRONGLY_TYPED",
    ):
        assert current in code, current


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TENSORRT, reason="needs the tensorrt package")
def test_tensorrt_engine_fp32_dynamic_batch(tmp_path: Path) -> None:
    model = CNN().eval().cuda()
    report = tk.export(model, torch.randn(1, 3, 16, 16, device="cuda"), tmp_path, formats=["tensorrt"])
    assert report.ok, report.table()
    meta = json.loads((tmp_path / "model.engine.json").read_text())
    assert meta["compute_capability"] == list(torch.cuda.get_device_capability())
    assert meta["tensorrt"] and meta["profile"]["min"] == 1
    run = load_native(tmp_path / "model.engine", "tensorrt")
    for batch in (1, 3, 17):
        x = torch.randn(batch, 3, 16, 16, device="cuda")
        torch.testing.assert_close(run(x), model(x), rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TENSORRT, reason="needs the tensorrt package")
def test_tensorrt_engine_fp16_strongly_typed(tmp_path: Path) -> None:
    model = MLP().eval().cuda()
    report = tk.export(
        model, torch.randn(2, 10, device="cuda"), tmp_path, formats=["tensorrt"], tensorrt_precision="fp16"
    )
    assert report.ok, report.table()
    assert report["tensorrt"].tolerance["output"]["rtol"] == 1e-2  # fp16 tolerances
    meta = json.loads((tmp_path / "model.engine.json").read_text())
    assert meta["precision"] == "fp16" and meta["strongly_typed"] is True
