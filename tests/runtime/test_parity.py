"""Every backend predicts the numbers eager PyTorch predicts, in every input kind."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import torchkeep as tk

from .conftest import Case

RTOL, ATOL = 1e-4, 1e-5

FILE_BACKENDS = {"pt2": "pt2", "onnx": "onnxruntime", "torchscript": "torchscript"}


def _eager(case: Case, inputs: tuple[torch.Tensor, ...]) -> Any:
    with torch.no_grad():
        return case.model.eval()(*inputs)


def _close(got: Any, want: Any, atol: float = ATOL) -> None:
    if isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            _close(got[key], want[key], atol)
        return
    got_t = torch.as_tensor(np.asarray(got)) if not isinstance(got, torch.Tensor) else got
    torch.testing.assert_close(got_t, want, rtol=RTOL, atol=atol)


@pytest.mark.parametrize("fmt", sorted(FILE_BACKENDS))
@pytest.mark.parametrize("name", ["mlp", "cnn", "encoder", "twoheads"])
def test_backend_matches_eager(cases: dict[str, Case], name: str, fmt: str) -> None:
    case = cases[name]
    predictor = tk.load_predictor(case.files[fmt])
    assert predictor.backend == FILE_BACKENDS[fmt]
    assert [s.name for s in predictor.inputs] == case.input_names
    # Encoders sum many products: allow for a different accumulation order.
    atol = 1e-4 if name == "encoder" else ATOL
    for batch in (1, 5):
        inputs = case.example(batch)
        _close(predictor(*inputs), _eager(case, inputs), atol)


@pytest.mark.parametrize("kind", ["numpy", "list"])
def test_outputs_follow_input_kind(cases: dict[str, Case], kind: str) -> None:
    case = cases["mlp"]
    x = case.example(3)[0]
    want = _eager(case, (x,))
    for fmt in FILE_BACKENDS:
        predictor = tk.load_predictor(case.files[fmt])
        if kind == "numpy":
            got = predictor(x.numpy())
            assert isinstance(got, np.ndarray)
            assert got.dtype == np.float32
        else:
            got = predictor(x.tolist())
            assert isinstance(got, list)
            assert isinstance(got[0], list)
        _close(torch.tensor(np.asarray(got), dtype=torch.float32), want)


def test_named_inputs_and_dict_outputs(cases: dict[str, Case]) -> None:
    case = cases["twoheads"]
    x, scale = case.example(2)
    want = _eager(case, (x, scale))
    for fmt in FILE_BACKENDS:
        predictor = tk.load_predictor(case.files[fmt])
        assert [s.name for s in predictor.outputs] == ["logits", "hidden"]
        _close(predictor(x=x, scale=scale), want)
        _close(predictor({"scale": scale.numpy(), "x": x.numpy()}), want)


def test_eager_in_memory_module(cases: dict[str, Case]) -> None:
    case = cases["cnn"]
    predictor = tk.load_predictor(case.model, example_inputs=case.example(2))
    assert predictor.backend == "eager"
    assert predictor.inputs[0].shape == (None, 3, 16, 16)
    assert predictor.outputs[0].shape == (None, 10)
    inputs = case.example(4)
    _close(predictor(*inputs), _eager(case, inputs))
    assert not torch.is_inference_mode_enabled()


def test_export_directory_picks_a_backend(cases: dict[str, Case]) -> None:
    case = cases["mlp"]
    predictor = tk.load_predictor(case.directory)
    # No benchmark recorded: the fixed CPU order puts ONNX Runtime first.
    assert predictor.backend == "onnxruntime"
    for backend in ("pt2", "torchscript", "onnxruntime"):
        chosen = tk.load_predictor(case.directory, backend=backend)
        assert chosen.backend == backend
        x = case.example(2)[0]
        _close(chosen(x), _eager(case, (x,)))


def test_specs_without_export_json(cases: dict[str, Case], tmp_path: Any) -> None:
    """Outside an export directory the artifact itself tells the specs (where it can)."""
    case = cases["cnn"]
    for fmt in ("pt2", "onnx"):
        # Copy the artifact with its companions (ONNX keeps weights in model.onnx.data).
        for part in case.directory.glob(case.files[fmt].name + "*"):
            (tmp_path / part.name).write_bytes(part.read_bytes())
        lone = tmp_path / case.files[fmt].name
        predictor = tk.load_predictor(lone)
        assert [(s.dtype, len(s.shape)) for s in predictor.inputs] == [("float32", 4)]
        assert predictor.inputs[0].shape[1:] == (3, 16, 16)
        assert predictor.inputs[0].shape[0] is None
        x = case.example(2)[0]
        _close(predictor(x), _eager(case, (x,)))


def test_threads_and_warmup(cases: dict[str, Case]) -> None:
    case = cases["mlp"]
    before = torch.get_num_threads()
    try:
        predictor = tk.load_predictor(case.files["torchscript"], threads=1, warmup=2, batch_size=4)
        predictor(case.example(1)[0])
        assert torch.get_num_threads() == 1
        ort = tk.load_predictor(case.files["onnx"], threads=1, warmup=1)
        assert ort.threads == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_aoti_matches_eager(aoti_case: Case) -> None:
    predictor = tk.load_predictor(aoti_case.files["aoti"])
    assert predictor.backend == "aoti"
    # The package records no specs; export.json beside it does.
    assert [s.name for s in predictor.inputs] == ["x"]
    for batch in (1, 7):
        x = aoti_case.example(batch)[0]
        _close(predictor(x), _eager(aoti_case, (x,)))
    with pytest.raises(tk.PredictorInputError, match="dimension 1"):
        predictor(torch.zeros(2, 11))
    assert tk.load_predictor(aoti_case.directory).backend == "aoti"


@tk.register(name="torchkeep-tests.runtime-mlp")
class RegisteredMLP(torch.nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(10, width), torch.nn.ReLU(), torch.nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_eager_model_file_and_export_source(cases: dict[str, Case], tmp_path: Any) -> None:
    import shutil

    from torchkeep.io._manifest import read_manifest, write_manifest

    model = RegisteredMLP(width=32).eval()
    model.load_state_dict(cases["mlp"].model.state_dict())
    path = tmp_path / "model.safetensors"
    tk.save_model(model, path)
    x = torch.randn(3, 10)
    want = _eager(cases["mlp"], (x,))
    direct = tk.load_predictor(path)
    assert direct.backend == "eager"
    _close(direct(x), want)
    # In an export directory, the source model file is the eager target, with export.json's specs.
    directory = tmp_path / "export"
    shutil.copytree(cases["mlp"].directory, directory)
    shutil.copy(path, directory / "model.safetensors")
    manifest = read_manifest(directory)
    manifest["source"] = {"file": "model.safetensors", "xxh3": None, "model": None}
    write_manifest(directory, manifest)
    eager = tk.load_predictor(directory, backend="eager")
    assert [s.name for s in eager.inputs] == ["x"]
    _close(eager(x), want)
    with pytest.raises(tk.PredictorInputError, match="dimension 1"):
        eager(torch.zeros(1, 3))
