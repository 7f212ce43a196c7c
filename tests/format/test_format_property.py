"""Property: any tree of supported values round-trips exactly (types, ties, bits)."""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _tkfile import same
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchkeep as tk
from torchkeep.io._codec import MAX_DEPTH


@dataclasses.dataclass
class PropPoint:
    x: Any
    y: Any = None


@dataclasses.dataclass(frozen=True)
class PropFrozen:
    value: Any


class PropColor(enum.Enum):
    RED = 1
    BLUE = "blue"


class PropLevel(enum.IntEnum):
    LOW = 1
    HIGH = 2


DTYPES = [
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int32, torch.int64,
    torch.uint8, torch.uint16, torch.bool, torch.complex64, torch.complex128, torch.float8_e4m3fn,
]  # fmt: skip


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    n = math.prod(shape) * dtype.itemsize
    raw = torch.tensor(list(draw(st.binary(min_size=n, max_size=n))), dtype=torch.uint8)
    t = raw.view(dtype).reshape(shape) if n else torch.empty(shape, dtype=dtype)
    if draw(st.booleans()) and t.dim() == 2:
        t = t.T  # a non-contiguous view
    if draw(st.integers(0, 5)) == 0 and (t.is_floating_point() or t.is_complex()):
        t = torch.nn.Parameter(t.contiguous(), requires_grad=draw(st.booleans()))
    return t


np_arrays = st.builds(
    lambda dt, shape, seed: np.random.default_rng(seed).integers(0, 100, size=shape).astype(dt),
    st.sampled_from(["float32", "float64", "int16", "uint8", "bool", "complex64"]),
    st.lists(st.integers(0, 3), max_size=3).map(tuple),
    st.integers(0, 2**32 - 1),
)
np_scalars = st.builds(
    lambda dt, v: np.dtype(dt).type(v), st.sampled_from(["float32", "int64", "uint8", "float16"]), st.integers(0, 100)
)
keys = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.tuples(inner, inner),
    max_leaves=3,
)
leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats()  # nan, inf, -0.0 and subnormals included
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.sampled_from([torch.float32, torch.bfloat16, torch.int8, torch.complex64])
    | st.sampled_from([torch.device("cpu"), torch.device("cuda", 3), torch.device("meta")])
    | st.lists(st.integers(0, 9), max_size=3).map(torch.Size)
    | np_arrays
    | np_scalars
    | tensors()
    | st.sampled_from([PropColor.RED, PropColor.BLUE, PropLevel.HIGH])
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
        | st.dictionaries(keys, inner, max_size=4)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4).map(OrderedDict)
        | st.dictionaries(keys, inner, max_size=4).map(OrderedDict)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4).map(Counter)
        | st.dictionaries(keys, st.integers(-5, 5) | inner, max_size=4).map(Counter)
        | st.builds(PropPoint, inner, inner)
        | st.builds(PropFrozen, inner)
    )


trees = st.recursive(leaves, _containers, max_leaves=20)


@st.composite
def with_shared_tensors(draw: st.DrawFn) -> dict[str, Any]:
    """A tree plus a pool of tensors referenced from several places (tied weights)."""
    pool = draw(st.lists(tensors(), min_size=1, max_size=3))
    picks = draw(st.lists(st.integers(0, len(pool) - 1), min_size=2, max_size=5))
    return {"tree": draw(trees), "tied": [pool[i] for i in picks]}


@pytest.fixture(scope="module")
def prop_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prop")


@pytest.mark.slow
@settings(
    max_examples=int(os.environ.get("TK_PROPERTY_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(obj=with_shared_tensors())
def test_random_trees_roundtrip_exactly(prop_dir: Path, obj: dict[str, Any]) -> None:
    path = prop_dir / "tree.safetensors"
    tk.save(obj, path)
    out = tk.load(path)
    assert same(out, obj)
    # the same tensor object saved twice comes back as one object
    for i, a in enumerate(obj["tied"]):
        for j, b in enumerate(obj["tied"]):
            if a is b:
                assert out["tied"][i] is out["tied"][j]


def _nested(kind: str, depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = {
            "list": lambda v: [v],
            "tuple": lambda v: (v,),
            "dict": lambda v: {"k": v},
            "keyed": lambda v: {(1, "k"): v},
            "odict": lambda v: OrderedDict(k=v),
            "counter": lambda v: Counter({"k": v}),
            "dataclass": lambda v: PropPoint(v),
        }[kind](leaf)
    return leaf


# Values tk.save may refuse: refusing is fine, but whatever it accepts must load back equal.
maybe_storable = trees | st.builds(
    _nested,
    st.sampled_from(["list", "tuple", "dict", "keyed", "odict", "counter", "dataclass"]),
    st.integers(MAX_DEPTH - 3, MAX_DEPTH + 2) | st.integers(0, 5),
    leaves,
) | st.sampled_from([{1, 2}, bytearray(b"x"), object(), len, {"k": frozenset()}, [lambda: 0]])


@pytest.mark.slow
@settings(
    max_examples=int(os.environ.get("TK_PROPERTY_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(obj=maybe_storable)
def test_whatever_save_accepts_loads_back_equal(prop_dir: Path, obj: Any) -> None:
    path = prop_dir / "maybe.safetensors"
    try:
        tk.save({"v": obj}, path)
    except tk.UnsupportedValueError as exc:
        assert str(exc)
        return
    assert same(tk.load(path), {"v": obj})
