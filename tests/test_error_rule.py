"""One rule for error classes: a bad argument is a UsageError in every area; subsystem classes
(ExportError, PredictorError, ServeError, RegistryError) mean a failure at run time. Public
classes name ``torchkeep`` as their module."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import torchkeep as tk
from torchkeep.serve import ServeOptions


def _bad_export(tmp_path: Path) -> None:
    tk.export(torch.nn.Linear(2, 2), torch.randn(1, 2), tmp_path / "out", formats=("zip",))


def _bad_backend(tmp_path: Path) -> None:
    tk.load_predictor(tmp_path / "model.pt2", backend="tflite")


def _bad_benchmark(tmp_path: Path) -> None:
    tk.benchmark([])


def _bad_serve_option(tmp_path: Path) -> None:
    ServeOptions(max_batch_size=0)


def _bad_register(tmp_path: Path) -> None:
    tk.register(name="bad-version", version=0)


def _bad_policy(tmp_path: Path) -> None:
    tk.KeepLastN(0)


@pytest.mark.parametrize(
    ("call", "subsystem"),
    [
        (_bad_export, tk.ExportError),
        (_bad_backend, tk.PredictorError),
        (_bad_benchmark, tk.PredictorError),
        (_bad_serve_option, tk.ServeError),
        (_bad_register, tk.RegistryError),
        (_bad_policy, None),
    ],
)
def test_a_bad_argument_is_a_usage_error_in_every_area(
    tmp_path: Path, call: Callable[[Path], None], subsystem: type[Exception] | None
) -> None:
    with pytest.raises(tk.UsageError) as info:
        call(tmp_path)
    if subsystem is not None:
        assert not isinstance(info.value, subsystem), f"{type(info.value).__name__} is also a {subsystem.__name__}"
    assert info.value.argument, "a UsageError names the argument at fault"
    assert not (tmp_path / "out").exists()


def test_bench_report_from_bad_json_is_a_usage_error() -> None:
    with pytest.raises(tk.UsageError, match="not a benchmark report") as info:
        tk.BenchReport.from_json({"results": "nope"})
    assert not isinstance(info.value, tk.PredictorError)
    assert info.value.argument == "data"


def test_predictor_input_error_is_a_usage_error_found_while_running() -> None:
    err = tk.PredictorInputError("input 'x' has rank 1, expected 2")
    assert isinstance(err, tk.UsageError)
    assert isinstance(err, tk.PredictorError)
    assert isinstance(err, ValueError)


def test_public_classes_report_torchkeep_as_their_module() -> None:
    assert tk.CheckpointManager.__module__ == "torchkeep"
    for name in tk.__all__:
        obj = getattr(tk, name)
        if isinstance(obj, type):
            assert obj.__module__ in ("torchkeep", "torchkeep.errors"), (name, obj.__module__)


def test_public_classes_still_pickle_by_reference() -> None:
    info = tk.CheckpointInfo(path="c.safetensors", epoch=3)
    assert pickle.loads(pickle.dumps(info)) == info
    err = pickle.loads(pickle.dumps(tk.UsageError("bad step", argument="step")))
    assert isinstance(err, tk.UsageError) and str(err) == "bad step"
