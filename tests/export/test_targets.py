"""The deployment targets added as backend-table rows: OpenVINO, ONNX int8/fp16, TorchScript int8, ExecuTorch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import torchkeep as tk
from torchkeep.runtime import backend_row


def wide_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 8)).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tk.ExportReport:
    pytest.importorskip("openvino")
    out = tmp_path_factory.mktemp("targets")
    formats = ["onnx", "openvino", "onnx-int8", "onnx-fp16", "torchscript-int8"]
    return tk.export(wide_mlp(), torch.randn(2, 64), out, formats=formats)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["openvino", "onnx-int8", "onnx-fp16", "torchscript-int8"])
def test_target_exports_loads_and_benchmarks(exported: tk.ExportReport, fmt: str) -> None:
    row = backend_row(fmt)
    result = exported[fmt]
    assert result.ok and result.file is not None and result.file.name == f"model{row.suffix}"
    assert list(result.parity) == [1, 3, 17]
    tol = result.tolerance["output"]
    if row.precision != "fp32":  # reduced precision: held to its own, scaled tolerance, and not exact
        assert tol["atol_relative_to_max_abs"] == 1.0 and result.max_abs_error > 1e-6
    predictor = tk.load_predictor(exported.output_dir, backend=row.name)
    assert predictor.backend == row.name
    assert tk.load_predictor(result.file).backend == row.name  # the file name alone says it too
    x = torch.randn(5, 64)
    with torch.no_grad():
        want = wide_mlp()(x)
    assert (predictor(x) - want).abs().max() <= 0.05 * want.abs().max() + 1e-3
    report = tk.benchmark(exported.output_dir, batch_sizes=(4,), min_time=0.01, warmup=1, record=False)
    assert row.name in {r.backend for r in report.results if r.error is None}


@pytest.mark.slow
def test_openvino_from_onnx_and_int8_static(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    calibration = [torch.randn(8, 64) for _ in range(3)]
    report = tk.export(
        wide_mlp(),
        torch.randn(2, 64),
        tmp_path,
        formats=["openvino", "onnx-int8"],
        openvino_source="onnx",
        calibration_data=calibration,
        tolerances={"int8": (0.3, 0.3)},
    )
    assert report.ok
    assert report["openvino"].options["source"] == "onnx"
    assert report["onnx-int8"].options == {"mode": "static", "calibration_batches": 3}
    assert report["onnx-int8"].tolerance["output"]["rtol"] == 0.3


@pytest.mark.parametrize(
    ("fmt", "package", "extra"),
    [
        ("openvino", "openvino", "openvino"),
        ("onnx-int8", "onnxruntime", "onnx"),
        ("executorch", "executorch", "executorch"),
    ],
)
def test_missing_package_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, package: str, extra: str
) -> None:
    for name in list(sys.modules):
        if name == package or name.startswith(package + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ImportError
    with pytest.raises(tk.MissingDependencyError, match=rf"pip install 'torchkeep\[{extra}\]'") as info:
        tk.export(nn.Linear(4, 2).eval(), torch.randn(2, 4), tmp_path / fmt, formats=[fmt])
    assert info.value.package == package
    fake = tmp_path / f"model{backend_row(fmt).suffix}"
    fake.write_bytes(b"not a model")
    with pytest.raises(tk.MissingDependencyError, match=package):
        tk.load_predictor(fake)


def test_bad_target_options_are_refused(tmp_path: Path) -> None:
    for options, field in [
        ({"openvino_source": "tflite"}, "openvino_source"),
        ({"calibration_data": []}, "calibration_data"),
        ({"tolerances": {"int8": (0.1,)}}, "tolerances"),
        ({"verify_dims": {"seq": []}}, "verify_dims"),
    ]:
        with pytest.raises(tk.TorchkeepError, match=field):
            tk.export(nn.Linear(4, 2), torch.randn(2, 4), tmp_path, formats=["onnx-int8"], **options)


@pytest.mark.slow
def test_executorch_pte_runs_in_its_runtime(tmp_path: Path) -> None:
    pytest.importorskip("executorch.exir", reason="ExecuTorch is an optional extra (see docs/guide/export.md)")
    report = tk.export(wide_mlp(), torch.randn(2, 64), tmp_path, formats=["executorch"])
    assert report.ok and report["executorch"].file is not None
    predictor = tk.load_predictor(report["executorch"].file)
    assert predictor.backend == "executorch" and predictor(torch.randn(7, 64)).shape == (7, 8)


@pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions.*:UserWarning")
@pytest.mark.filterwarnings("ignore:.*torch.ao.quantization is deprecated.*")
def test_tk_save_stores_quantized_tensors(tmp_path: Path) -> None:
    import warnings
    from collections import OrderedDict

    x = torch.randn(4, 6)
    per_tensor = torch.quantize_per_tensor(x, 0.05, 3, torch.qint8)
    per_channel = torch.quantize_per_channel(
        x, torch.rand(4) / 10 + 0.01, torch.zeros(4, dtype=torch.long), 0, torch.qint8
    )

    def int8_mlp() -> nn.Module:
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)  # type: ignore[no-untyped-call]

    source = int8_mlp()
    tk.save({"t": per_tensor, "c": per_channel, "state": source.state_dict()}, tmp_path / "q.safetensors")
    back = tk.load(tmp_path / "q.safetensors")
    assert back["t"].qscheme() == torch.per_tensor_affine and back["t"].q_scale() == 0.05
    assert torch.equal(back["t"].int_repr(), per_tensor.int_repr())
    assert back["c"].qscheme() == torch.per_channel_affine and torch.equal(
        back["c"].dequantize(), per_channel.dequantize()
    )
    # quantize_dynamic's packed (qint8 weight, bias) round-trip; load_state_dict needs the module
    # versions of a state dict (its _metadata), which a fresh quantized model provides
    target = int8_mlp()
    state = OrderedDict(back["state"])
    state._metadata = target.state_dict()._metadata  # type: ignore[attr-defined]
    target.load_state_dict(state)
    inputs = torch.randn(3, 8)
    assert torch.equal(target(inputs), source(inputs))
