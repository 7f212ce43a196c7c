"""tk.export behaviour: inputs and outputs, eval mode, errors, continue_on_error, export.json, safety."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from export_models import CNN, MLP, DataDependent, TokenModel
from export_native import load_native
from torch import nn

import torchkeep as tk
from torchkeep.export import EXPORTERS, Exporter, ExportExamples, ExportOptions, get_exporter
from torchkeep.export._parity import sample_inputs
from torchkeep.io._manifest import read_manifest


class BakesBatchIntoTrace(nn.Module):
    """`int(x.shape[0])` becomes a constant in a trace: right at the traced batch, wrong elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * int(x.shape[0])


class NestedOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        return self.lstm(x)


def test_tk_export_is_the_function_and_the_package_stays_importable() -> None:
    assert callable(tk.export) and tk.export.__name__ == "export"
    assert sys.modules["torchkeep.export"].export is tk.export
    assert list(EXPORTERS)[:5] == ["pt2", "onnx", "torchscript", "aoti", "tensorrt"]
    assert {"openvino", "onnx-int8", "onnx-fp16", "torchscript-int8", "executorch"} <= set(EXPORTERS)
    for name in EXPORTERS:
        exporter = get_exporter(name)
        assert isinstance(exporter, Exporter)
        assert exporter.name == name


@pytest.mark.slow
def test_dict_inputs_with_token_ids(tmp_path: Path) -> None:
    model = TokenModel().eval()
    ids = torch.tensor([[3, 17, 42, 8, 0, 5]])
    mask = torch.ones(1, 6)
    report = tk.export(
        model, {"input_ids": ids, "attention_mask": mask}, tmp_path, formats=["pt2", "onnx", "torchscript"]
    )
    assert report.ok, report.table()
    assert [(s.name, s.shape, s.dtype) for s in report.inputs] == [
        ("input_ids", (None, 6), "int64"),
        ("attention_mask", (None, 6), "float32"),
    ]
    manifest = read_manifest(tmp_path)
    assert manifest["input_structure"] == "dict"
    assert manifest["inputs"][0] == {"name": "input_ids", "shape": [None, 6], "dtype": "int64"}
    for fmt, backend in (("pt2", "pt2"), ("onnx", "onnxruntime"), ("torchscript", "torchscript")):
        run = load_native(report[fmt].file, backend)
        kwargs = {"input_ids": torch.randint(0, 50, (5, 6)), "attention_mask": torch.ones(5, 6)}
        torch.testing.assert_close(torch.as_tensor(run(**kwargs)), model(**kwargs), rtol=1e-4, atol=1e-5)


def test_verification_inputs_keep_integer_range_and_shapes() -> None:
    model = TokenModel().eval()
    ids = torch.tensor([[3, 17, 42, 8, 0, 5]])
    examples = ExportExamples(
        model, {"input_ids": ids, "attention_mask": torch.ones(1, 6, dtype=torch.bool)}, dynamic_batch=True
    )
    assert examples.kwargs["input_ids"].shape == (2, 6)  # batch 1 repeated so it is not specialized
    gen = torch.Generator().manual_seed(0)
    sampled_ids, sampled_mask = sample_inputs(examples, 17, gen)
    assert sampled_ids.shape == (17, 6) and sampled_ids.dtype == torch.int64
    assert int(sampled_ids.min()) >= 0 and int(sampled_ids.max()) <= 42
    assert len(sampled_ids.unique()) > 5
    assert sampled_mask.dtype == torch.bool and sampled_mask.shape == (17, 6)


def test_training_mode_model_is_exported_in_eval_mode_and_user_is_told(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = CNN()  # training mode: BatchNorm would use batch statistics, Dropout would drop
    with caplog.at_level(logging.WARNING, logger="torchkeep"):
        report = tk.export(model, torch.randn(2, 3, 8, 8), tmp_path, formats=["pt2"])
    assert model.training and model.features[1].training  # flags restored
    assert any("BatchNorm2d" in n and "eval mode" in n for n in report.notes)
    assert "BatchNorm2d" in caplog.text
    assert read_manifest(tmp_path)["notes"] == report.notes
    model.eval()
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(torch.export.load(str(report["pt2"].file)).module()(x), model(x))


def test_data_dependent_control_flow_failing_formats_say_why_others_are_written(tmp_path: Path) -> None:
    model = DataDependent()
    report = tk.export(
        model,
        torch.randn(1, 4),
        tmp_path,
        formats=["pt2", "onnx", "torchscript"],
        torchscript_method="script",
        continue_on_error=True,
    )
    assert not report.ok
    assert set(report.failed) == {"pt2", "onnx"}
    for fmt in ("pt2", "onnx"):
        assert "data-dependent" in report[fmt].error
        assert report[fmt].file is None
    assert report["torchscript"].ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json", "model.torchscript.pt"]
    manifest = read_manifest(tmp_path)
    assert manifest["artifacts"]["pt2"]["ok"] is False
    assert "data-dependent" in manifest["artifacts"]["pt2"]["error"]
    assert manifest["artifacts"]["torchscript"]["ok"] is True
    scripted = torch.jit.load(str(tmp_path / "model.torchscript.pt"))
    model.eval()
    for sign in (1.0, -1.0):  # a scripted module keeps both branches
        x = sign * model.lin.weight.sum(0, keepdim=True).sign().expand(3, 4) * 10
        torch.testing.assert_close(scripted(x), model(x))


def test_failed_export_raises_with_format_and_leaves_output_dir_untouched(tmp_path: Path) -> None:
    out = tmp_path / "exported"
    out.mkdir()
    (out / "export.json").write_text('{"artifacts": {}, "marker": 1}')
    (out / "model.pt2").write_bytes(b"previous artifact")
    with pytest.raises(tk.ExportError) as info:
        tk.export(DataDependent(), torch.randn(2, 4), out, formats=["torchscript", "pt2"])
    assert info.value.format == "pt2"
    assert info.value.step == "torch.export"
    assert "data-dependent" in str(info.value)
    assert json.loads((out / "export.json").read_text())["marker"] == 1
    assert (out / "model.pt2").read_bytes() == b"previous artifact"
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.pt2"]  # no staging left


def test_re_export_into_an_old_export_names_the_files_it_left(tmp_path: Path) -> None:
    tk.export(MLP().eval(), torch.randn(2, 10), tmp_path, formats=["pt2", "torchscript"], verify=False)
    report = tk.export(MLP().eval(), torch.randn(2, 10), tmp_path, formats=["pt2"], verify=False)
    assert (tmp_path / "model.torchscript.pt").is_file()  # nothing it did not write is deleted
    manifest = json.loads((tmp_path / "export.json").read_text())
    assert list(manifest["artifacts"]) == ["pt2"]
    assert any("model.torchscript.pt" in n and "earlier export" in n for n in report.notes)
    assert manifest["notes"] == report.notes
    again = tk.export(MLP().eval(), torch.randn(2, 10), tmp_path, formats=["pt2"], verify=False)
    assert not any("earlier export" in n for n in again.notes)  # the last export.json no longer lists it


def test_parity_failure_names_format_output_and_error(tmp_path: Path) -> None:
    with pytest.raises(tk.ExportParityError) as info:
        tk.export(BakesBatchIntoTrace(), torch.randn(1, 3), tmp_path, formats=["torchscript"])
    err = info.value
    assert err.format == "torchscript" and err.output == "output" and err.step == "verify"
    assert err.max_abs_error > 0.1
    assert "torchscript" in str(err) and "'output'" in str(err) and "batch 1" in str(err)
    assert list(tmp_path.iterdir()) == []


def test_parity_failure_with_continue_on_error_is_recorded(tmp_path: Path) -> None:
    report = tk.export(
        BakesBatchIntoTrace(), torch.randn(1, 3), tmp_path, formats=["pt2", "torchscript"], continue_on_error=True
    )
    # torch.export refuses to make a batch dynamic that the code turns into a constant, and says so
    assert not report["pt2"].ok and "dynamic_batch=False" in report["pt2"].error
    assert not report["torchscript"].ok and report["torchscript"].step == "verify"
    assert read_manifest(tmp_path)["artifacts"]["torchscript"]["step"] == "verify"


def test_static_batch_verifies_only_the_example_batch(tmp_path: Path) -> None:
    report = tk.export(MLP().eval(), torch.randn(4, 10), tmp_path, formats=["onnx"], dynamic_batch=False)
    assert report.inputs[0].shape == (4, 10)
    assert sorted(report["onnx"].parity) == [4]
    import onnxruntime as ort

    session = ort.InferenceSession(str(report["onnx"].file), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [4, 10]


def test_manifest_records_specs_parity_versions_and_source(tmp_path: Path) -> None:
    source = tmp_path / "weights.safetensors"
    tk.save({"w": torch.ones(2)}, source)
    out = tmp_path / "out"
    report = tk.export(MLP().eval(), torch.randn(1, 10), out, formats=["onnx"], source_file=str(source), opset=18)
    manifest = read_manifest(out)
    assert manifest["manifest_version"] == 1
    assert manifest["outputs"] == [{"name": "output", "shape": [None, 1], "dtype": "float32"}]
    assert manifest["inputs"] == [{"name": "x", "shape": [None, 10], "dtype": "float32"}]
    assert manifest["output_structure"] == "tensor" and manifest["dynamic_batch"] is True
    art = manifest["artifacts"]["onnx"]
    assert art["file"] == "model.onnx" and art["backend"] == "onnxruntime"
    assert art["options"]["opset"] == 18
    assert set(art["parity"]) == {"1", "3", "17"}
    assert art["parity"]["17"]["output"]["max_abs"] < 1e-5
    assert art["tolerance"]["output"] == {"rtol": 1e-4, "atol": 1e-5}
    assert manifest["versions"]["torch"] == torch.__version__ and manifest["versions"]["onnx"]
    assert manifest["source"]["file"] == "weights.safetensors" and len(manifest["source"]["xxh3"]) == 16
    assert report.manifest == manifest


def test_onnx_external_data(tmp_path: Path) -> None:
    report = tk.export(MLP().eval(), torch.randn(2, 10), tmp_path, formats=["onnx"], onnx_external_data=True)
    assert [p.name for p in report["onnx"].files] == ["model.onnx", "model.onnx.data"]
    assert read_manifest(tmp_path)["artifacts"]["onnx"]["files"] == ["model.onnx", "model.onnx.data"]


def test_tolerances_are_overridable(tmp_path: Path) -> None:
    report = tk.export(MLP().eval(), torch.randn(2, 10), tmp_path, formats=["pt2"], rtol=0.5, atol=0.25)
    assert report["pt2"].tolerance["output"] == {"rtol": 0.5, "atol": 0.25}


def test_no_verify_writes_without_parity(tmp_path: Path) -> None:
    report = tk.export(MLP().eval(), torch.randn(2, 10), tmp_path, formats=["pt2"], verify=False)
    assert report.ok and report["pt2"].parity == {}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"formats": ["pt2", "tflite"]}, "unknown export format 'tflite'"),
        ({"formats": []}, "formats is empty"),
        ({"opset": 3}, "opset=3 is invalid"),
        ({"torchscript_method": "compile"}, "'trace' or 'script'"),
        ({"frobnicate": True}, "unknown export option"),
        ({"verify_batch_sizes": [0]}, "verify_batch_sizes"),
        ({"rtol": -1.0}, r"rtol=-1.0 is invalid"),
        ({"atol": float("nan")}, r"atol=nan is invalid"),
        ({"atol": "1e-3"}, r"atol='1e-3' is invalid"),
        ({"source_file": "/nonexistent/model.safetensors"}, "cannot be read"),
    ],
)
def test_bad_arguments_are_clear_errors(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(tk.UsageError, match=match):
        tk.export(MLP(), torch.randn(1, 10), tmp_path / "out", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_bad_inputs_and_outputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(tk.UsageError, match="example_inputs must be"):
        tk.export(MLP(), [[1.0, 2.0]], tmp_path)
    with pytest.raises(tk.ExportError, match="flat tuple"):
        tk.export(NestedOutput(), torch.randn(1, 3, 4), tmp_path)
    with pytest.raises(tk.ExportError, match="failed on the example inputs") as info:
        tk.export(MLP(), torch.randn(1, 7), tmp_path)
    assert info.value.step == "eager"
    with pytest.raises(tk.UsageError, match=r"torch\.nn\.Module"):
        tk.export(lambda x: x, torch.randn(1, 7), tmp_path)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_export_options_dataclass() -> None:
    opts = ExportOptions.from_kwargs({"opset": 18, "verify_batch_sizes": [2, 5]})
    assert opts.verify_batch_sizes == (2, 5)
    assert opts.to_json() == {"opset": 18, "verify_batch_sizes": [2, 5]}
    with pytest.raises(tk.UsageError, match="max_batch_size"):
        ExportOptions(opt_batch_size=100, max_batch_size=8)


def test_report_table_lists_every_format(tmp_path: Path) -> None:
    report = tk.export(MLP().eval(), torch.randn(2, 10), tmp_path, formats=["pt2", "tensorrt"], continue_on_error=True)
    table = report.table()
    assert "pt2" in table and "ok" in table
    assert "tensorrt" in table and "FAILED" in table


class ShapeCheck(nn.Module):
    """Correct for every batch, but tracing it emits a TracerWarning."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 0:
            return x + 1
        return x


def test_exporter_warnings_are_recorded_not_shown(tmp_path: Path) -> None:
    stages: list[tuple[str, str]] = []
    report = tk.export(
        ShapeCheck(), torch.randn(1, 3), tmp_path, formats=["torchscript"], progress=lambda f, s: stages.append((f, s))
    )
    assert any("TracerWarning" in w for w in report["torchscript"].warnings)
    assert read_manifest(tmp_path)["artifacts"]["torchscript"]["warnings"] == report["torchscript"].warnings
    assert stages == [("torchscript", "export"), ("torchscript", "verify"), ("torchscript", "ok")]


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_torchscript_warnings_can_be_shown(tmp_path: Path) -> None:
    with pytest.warns(torch.jit.TracerWarning):
        report = tk.export(
            ShapeCheck(), torch.randn(1, 3), tmp_path, formats=["torchscript"], torchscript_warnings=True
        )
    assert report["torchscript"].warnings == []
