"""What tk.save accepts loads back equal: Counter, and nesting up to the one shared depth limit."""

from __future__ import annotations

from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import pytest
from _tkfile import same

import torchkeep as tk
from torchkeep.io._codec import MAX_DEPTH


def _nest(kind: str, depth: int) -> Any:
    x: Any = 1
    for _ in range(depth):
        if kind == "dict":
            x = {"k": x}
        elif kind == "keyed":
            x = {1: x}
        elif kind == "tuple":
            x = (x,)
        elif kind == "odict":
            x = OrderedDict(k=x)
        elif kind == "counter":
            x = [Counter({"a": 1}), x]
        else:
            x = [x]
    return x


def test_counter_keeps_its_counts(tmp_path: Path) -> None:
    obj = {"c": Counter({"a": 3, "b": 1}), "k": Counter({1: 2, (1, "x"): 5}), "empty": Counter()}
    tk.save(obj, tmp_path / "c.safetensors")
    out = tk.load(tmp_path / "c.safetensors")
    assert same(out, obj)
    assert out["c"]["a"] == 3 and type(out["c"]) is Counter


@pytest.mark.parametrize("kind", ["dict", "keyed", "tuple", "odict", "list", "counter"])
def test_every_depth_save_accepts_loads_back(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "deep.safetensors"
    accepted = []
    for depth in [MAX_DEPTH // 2, MAX_DEPTH // 2 + 1, *range(MAX_DEPTH - 4, MAX_DEPTH + 3)]:
        obj = {"x": _nest(kind, depth)}
        try:
            tk.save(obj, path)
        except tk.UnsupportedValueError as exc:
            assert "nesting deeper than" in str(exc)
            accepted.append(False)
            continue
        accepted.append(True)
        assert same(tk.load(path), obj), depth  # never "saved, then refused on load"
    # one limit, checked at save: everything up to some depth is accepted, nothing past it
    assert accepted[:3] == [True, True, True] and not accepted[-1]
    assert accepted == sorted(accepted, reverse=True)
