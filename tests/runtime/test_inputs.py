"""Bad inputs are refused with PredictorInputError, saying what was expected, before any backend runs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import torchkeep as tk
from torchkeep.runtime import TensorSpec

from .conftest import Case

BACKENDS = ("pt2", "onnx", "torchscript")


@pytest.fixture(params=BACKENDS)
def mlp(request: pytest.FixtureRequest, cases: dict[str, Case]) -> Any:
    return tk.load_predictor(cases["mlp"].files[request.param])


@pytest.fixture(params=BACKENDS)
def twoheads(request: pytest.FixtureRequest, cases: dict[str, Case]) -> Any:
    return tk.load_predictor(cases["twoheads"].files[request.param])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(2, 11), r"input 'x' has size 11 in dimension 1, expected x: float32\[batch, 10\]"),
        (torch.zeros(2, 10, dtype=torch.float64), r"input 'x' has dtype float64, expected x: float32\[batch, 10\]"),
        (np.zeros((2, 10), dtype=np.int64), r"dtype int64, expected x: float32"),
        (torch.zeros(10), r"1 dimensions, expected x: float32\[batch, 10\] \(2 dimensions\).*batch dimension"),
        (torch.zeros(1, 2, 10), r"3 dimensions, expected x: float32\[batch, 10\]"),
        ([[1.0, 2.0], [3.0]], r"input 'x': could not make a tensor"),
        (np.array(["a", "b"]), r"not a tensor"),
    ],
)
def test_wrong_tensor(mlp: Any, bad: Any, message: str) -> None:
    with pytest.raises(tk.PredictorInputError, match=message):
        mlp(bad)


def test_wrong_names_and_counts(twoheads: Any) -> None:
    x, scale = torch.zeros(2, 4), torch.ones(2, 1)
    expected = r"expected inputs \(x: float32\[batch, 4\], scale: float32\[batch, 1\]\)"
    with pytest.raises(tk.PredictorInputError, match=r"missing input\(s\) \['scale'\]; " + expected):
        twoheads(x=x)
    with pytest.raises(tk.PredictorInputError, match=r"unexpected input\(s\) \['mask'\]; " + expected):
        twoheads(x=x, scale=scale, mask=scale)
    with pytest.raises(tk.PredictorInputError, match=r"missing input\(s\) \['x'\] and unexpected input\(s\) \['X'\]"):
        twoheads({"X": x, "scale": scale})
    with pytest.raises(tk.PredictorInputError, match=r"got 1 positional input\(s\), expected 2"):
        twoheads(x)
    with pytest.raises(tk.PredictorInputError, match="either by position or by name"):
        twoheads(x, scale=scale)
    with pytest.raises(tk.PredictorInputError, match=r"got 0 positional input\(s\), expected 2"):
        twoheads()
    # Dims that differ between inputs are the model's business; a wrong static dim is ours.
    with pytest.raises(tk.PredictorInputError, match=r"input 'scale' has size 2 in dimension 1"):
        twoheads(x, torch.ones(2, 2))


def test_input_errors_are_value_errors(mlp: Any) -> None:
    with pytest.raises(ValueError, match="dimension 1"):
        mlp(torch.zeros(1, 3))


def test_lists_take_the_spec_dtype() -> None:
    spy_calls: list[torch.Tensor] = []

    class Spy(torch.nn.Module):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            spy_calls.append(ids)
            return ids * 2

    p = tk.load_predictor(Spy(), example_inputs=[torch.zeros(1, 3, dtype=torch.int64)])
    assert p([[1, 2, 3]]) == [[2, 4, 6]]
    assert spy_calls[-1].dtype == torch.int64
    with pytest.raises(tk.PredictorInputError, match=r"fractional numbers but the model expects int64"):
        p([[1.5, 2, 3]])
    with pytest.raises(tk.PredictorInputError, match="size 4 in dimension 1"):
        p([[1, 2, 3, 4]])
    assert len(spy_calls) == 2  # the example run and the good call: bad inputs never reached forward


def test_unknown_specs_still_run() -> None:
    p = tk.load_predictor(torch.nn.Linear(2, 1))
    assert p.inputs == []
    out = p(np.zeros((3, 2), dtype=np.float32))
    assert isinstance(out, np.ndarray)
    assert out.shape == (3, 1)
    with pytest.raises(tk.PredictorError, match="input specs are unknown"):
        p.example_inputs(2)  # type: ignore[attr-defined]


def test_tensor_spec_json_roundtrip() -> None:
    spec = TensorSpec("x", (None, 3, 224, 224), "float32")
    assert TensorSpec.from_json(spec.to_json()) == spec
