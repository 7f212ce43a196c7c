"""Small hostile files that would expand into huge tensors are refused before anything is allocated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from _tkfile import edit_meta, join, split

import torchkeep as tk


def _saved(tmp_path: Path, obj: Any) -> tuple[Path, bytes]:
    path = tmp_path / "f.safetensors"
    tk.save(obj, path)
    return path, path.read_bytes()


def test_stride_zero_view_larger_than_its_tensor_is_refused(tmp_path: Path) -> None:
    path, raw = _saved(tmp_path, {"a": torch.ones(1), "b": torch.ones(1)})

    def expand(tree: Any) -> Any:
        tree["items"]["b"] = {"t": "tensor", "ref": "a", "view": [0, [2**36], [0]]}
        return tree

    path.write_bytes(edit_meta(raw, "torchkeep.tree", expand))
    with pytest.raises(tk.CorruptCheckpointError, match="view"):
        tk.load(path)


def test_rng_state_as_a_stride_zero_view_is_refused_before_restoring(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    model = torch.nn.Linear(2, 2)
    tk.save_checkpoint(path, model=model)
    raw = path.read_bytes()

    def expand(tree: Any) -> Any:
        rng = tree["items"]["__rng__"]["items"]
        rng["torch"] = {"t": "tensor", "ref": rng["torch"]["ref"], "view": [0, [2**36], [0]]}
        return tree

    path.write_bytes(edit_meta(raw, "torchkeep.tree", expand))
    target = torch.nn.Linear(2, 2)
    before = torch.get_rng_state()
    with pytest.raises(tk.CorruptCheckpointError):
        tk.load_checkpoint(path, model=target)
    assert torch.equal(torch.get_rng_state(), before)


def test_expanded_views_still_round_trip(tmp_path: Path) -> None:
    """The writer stores a view that repeats its source's elements as data of its own."""
    x = torch.arange(3.0)
    obj = {"x": x, "rows": x.expand(4, 3), "col": x[:1].expand(5)}
    path, _ = _saved(tmp_path, obj)
    out = tk.load(path)
    assert torch.equal(out["rows"], obj["rows"]) and torch.equal(out["col"], obj["col"])


@pytest.mark.parametrize("shape", [[0, 2**62, 2**62], [2**62, 0, 4], [0] + [2**40] * 3])
def test_zero_element_shapes_whose_strides_overflow_are_corrupt(tmp_path: Path, shape: list[int]) -> None:
    path, raw = _saved(tmp_path, {"e": torch.empty(0, 3)})
    header, data = split(raw)
    header["e"]["shape"] = shape
    path.write_bytes(join(header, data))
    with pytest.raises(tk.CorruptCheckpointError, match="shape"):
        tk.load(path)


def test_zero_element_shape_in_the_logical_entry_is_checked_too(tmp_path: Path) -> None:
    path, raw = _saved(tmp_path, {"e": torch.empty(0, 3, dtype=torch.complex128)})
    header, data = split(raw)
    meta = header["__metadata__"]
    tensors = json.loads(meta["torchkeep.tensors"])
    tensors["e"]["shape"] = [0, 2**62, 2**62]
    meta["torchkeep.tensors"] = json.dumps(tensors)
    path.write_bytes(join(header, data))
    with pytest.raises(tk.CorruptCheckpointError):
        tk.load(path)
