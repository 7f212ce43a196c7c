"""The backend table and the one "fastest" rule that export, runtime, bench and serve share."""

from __future__ import annotations

import importlib

import pytest

import torchkeep as tk
from torchkeep.bench._plot import COLORS
from torchkeep.export import EXPORTERS, ExportReport
from torchkeep.runtime import (
    BACKEND_TABLE,
    BACKENDS,
    backend_for_file,
    backend_order,
    backend_row,
    fastest_backend,
    fixed_order,
    format_backend,
    rank_backends,
)


def test_every_row_is_wired_everywhere() -> None:
    assert list(BACKENDS) == [b.name for b in BACKEND_TABLE]
    for row in BACKEND_TABLE:
        assert COLORS[row.name] == row.color
        assert backend_for_file(f"dir/model{row.suffix}") == row.name
        if row.format is not None:
            assert EXPORTERS[row.format]().backend == row.name
            assert EXPORTERS[row.format]().suffix == row.suffix
            assert format_backend(row.format) == row.name
        importlib.import_module(f"torchkeep.runtime.{row.predictor}")
    assert len({b.color for b in BACKEND_TABLE}) == len(BACKEND_TABLE)  # one colour each


def test_preference_orders_follow_the_table() -> None:
    assert fixed_order("cpu") == ["onnxruntime", "openvino", "aoti", "pt2", "torchscript", "executorch", "eager"]
    assert not {"onnxruntime-int8", "onnxruntime-fp16", "torchscript-int8"} & set(fixed_order("cpu"))
    assert fixed_order("cuda:0")[0] == "tensorrt"
    assert "tensorrt" not in fixed_order("cpu")
    with pytest.raises(tk.UsageError, match="unknown backend 'tflite'"):
        backend_row("tflite")


ROWS = [
    {"backend": "pt2", "batch_size": 1, "p50_ms": 1.0},
    {"backend": "onnxruntime", "batch_size": 1, "p50_ms": 2.0},
    {"backend": "onnxruntime", "batch_size": 32, "p50_ms": 5.0},
    {"backend": "pt2", "batch_size": 32, "p50_ms": 20.0},
]


@pytest.mark.parametrize(
    ("batch_size", "expected"),
    [
        (1, ["pt2", "onnxruntime"]),
        (32, ["onnxruntime", "pt2"]),
        (2, ["pt2", "onnxruntime"]),
        (100, ["onnxruntime", "pt2"]),
    ],
)
def test_rank_at_a_batch_size_uses_the_nearest_measured(batch_size: int, expected: list[str]) -> None:
    assert rank_backends({"device": "cpu", "results": ROWS}, batch_size=batch_size) == expected


def test_rank_over_all_batch_sizes_and_devices() -> None:
    # pt2: 1x and 4x the best; onnxruntime: 2x and 1x -> onnxruntime has the better geometric mean
    assert rank_backends({"device": "cpu", "results": ROWS}) == ["onnxruntime", "pt2"]
    assert rank_backends({"device": "cuda:0", "results": ROWS}) == []  # measured elsewhere
    assert rank_backends({"device": "cpu", "results": ROWS}, device="cuda") == []
    assert rank_backends({"fastest": {"1": "pt2", "32": "onnxruntime"}}, batch_size=20) == ["onnxruntime"]
    bad = [{"backend": "pt2", "batch_size": 1, "p50_ms": float("nan")}, {"backend": 3, "batch_size": 1, "p50_ms": 1}]
    assert rank_backends({"results": bad}) == []
    assert rank_backends("garbage") == []


def test_fastest_backend_skips_failed_artifacts_and_orders_fall_back() -> None:
    manifest = {
        "artifacts": {"pt2": {"ok": False, "backend": "pt2"}, "onnx": {"ok": True, "backend": "onnxruntime"}},
        "benchmark": {"device": "cpu", "results": ROWS},
    }
    assert fastest_backend(manifest, batch_size=1) == "onnxruntime"  # pt2 was faster but failed to export
    assert fastest_backend(manifest, batch_size=1, available={"pt2"}) is None
    assert backend_order(manifest, "cpu", 1)[:2] == ["pt2", "onnxruntime"]
    assert backend_order({}, "cpu") == fixed_order("cpu")


def test_tk_export_function_and_package_both_reachable() -> None:
    # tk.export is the function (the SPEC's `tk.export(...)`); the package's members stay importable.
    package = importlib.import_module("torchkeep.export")
    assert tk.export is package.export and callable(tk.export)
    assert package.ExportReport is ExportReport
