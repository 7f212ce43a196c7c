"""Values that cannot be stored without pickle fail at save time, naming their path."""

from __future__ import annotations

import pytest
import torch

import torchkeep as tk


@pytest.mark.parametrize(
    ("obj", "where", "what"),
    [
        (
            {"optimizer": {"param_groups": [{"lr_lambda": lambda e: e}]}},
            "['optimizer']['param_groups'][0]['lr_lambda']",
            "function",
        ),
        ({"m": torch.nn.Linear(1, 1)}, "['m']", "whole module"),
        ({"s": {1, 2}}, "['s']", "set"),
        ({"k": {object(): 1}}, "['k']", "dict key"),
        ({"sp": torch.eye(2).to_sparse()}, "['sp']", "to_dense"),
        ({"o": object()}, "['o']", "cannot store a value of type builtins.object"),
    ],
)
def test_unsupported_values_name_their_path(tmp_path, obj: object, where: str, what: str) -> None:
    path = tmp_path / "x.safetensors"
    with pytest.raises(tk.UnsupportedValueError) as info:
        tk.save(obj, path)
    assert where in str(info.value) and what in str(info.value)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_cycles_are_rejected(tmp_path) -> None:
    a: list[object] = []
    a.append(a)
    with pytest.raises(tk.UnsupportedValueError, match="contains itself"):
        tk.save({"a": a}, tmp_path / "x.safetensors")


def test_failed_save_keeps_previous_file(tmp_path) -> None:
    path = tmp_path / "x.safetensors"
    tk.save({"v": 1}, path)
    before = path.read_bytes()
    with pytest.raises(tk.UnsupportedValueError):
        tk.save({"v": lambda: 1}, path)
    assert path.read_bytes() == before
