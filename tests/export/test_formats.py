"""Must-show: five model families to every CPU format, each loaded back with the format's own runtime.

Each artifact is run with torch.export.load / onnxruntime.InferenceSession / torch.jit.load /
aoti_load_package (not torchkeep) at batch 1, 3 and 17 and compared with eager PyTorch: the
batch dimension is really dynamic although every example has batch 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from export_models import cases
from export_native import load_native

import torchkeep as tk
from torchkeep.io._manifest import read_manifest

# AOTInductor runs a C++ compiler (15-30 s per model on 2 cores): three of the five families
# compile it, the other two are covered by pt2 (the same torch.export program AOTI compiles).
AOTI_CASES = {"mlp", "cnn_bn", "two_inputs_dict_out"}
BACKENDS = {"pt2": "pt2", "onnx": "onnxruntime", "torchscript": "torchscript", "aoti": "aoti"}


def _inputs_like(example: Any, batch: int) -> tuple[torch.Tensor, ...]:
    tensors = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    return tuple(torch.randn(batch, *t.shape[1:]) for t in tensors)


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, dict):
        return [torch.as_tensor(v) for v in out.values()]
    if isinstance(out, (tuple, list)):
        return [torch.as_tensor(v) for v in out]
    return [torch.as_tensor(out)]


def _params() -> list[Any]:
    out = []
    for name in cases():
        formats = ["pt2", "onnx", "torchscript", *(["aoti"] if name in AOTI_CASES else [])]
        out.append(pytest.param(name, formats, id=name, marks=pytest.mark.slow))
    return out


@pytest.mark.parametrize(("name", "formats"), _params())
def test_model_exports_to_every_format_and_runs_natively(name: str, formats: list[str], tmp_path: Path) -> None:
    model, example = cases()[name]
    report = tk.export(model, example, tmp_path, formats=formats)

    assert report.ok, report.table()
    assert model.training  # tk.export exported in eval mode and restored the flag
    model.eval()
    assert set(report.files) == set(formats)
    assert report.inputs[0].shape[0] is None  # the batch is dynamic in the specs
    manifest = read_manifest(tmp_path)
    assert {k for k, v in manifest["artifacts"].items() if v["ok"]} == set(formats)
    for fmt in formats:
        result = report[fmt]
        assert sorted(result.parity) == [1, 3, 17]
        assert result.max_abs_error < 1e-4
        run = load_native(result.file, BACKENDS[fmt])
        for batch in (1, 3, 17):
            inputs = _inputs_like(example, batch)
            with torch.no_grad():
                expected = _flat(model(*inputs))
                got = _flat(run(*inputs))
            assert len(got) == len(expected)
            for g, e in zip(got, expected, strict=True):
                assert g.shape == e.shape, (fmt, batch)
                torch.testing.assert_close(g.float(), e, rtol=1e-4, atol=1e-5, msg=f"{name} {fmt} batch {batch}")
