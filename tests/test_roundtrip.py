"""tk.save / tk.load round-trips every supported value with its exact type."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import torchkeep as tk


def _same(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(
                a.view(torch.uint8) if a.numel() and a.dtype.itemsize == 1 else a,
                b.view(torch.uint8) if b.numel() and b.dtype.itemsize == 1 else b,
            )
        )
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        return a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple))
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


VALUES = {
    "none": None,
    "bools": [True, False],
    "ints": [0, -1, 2**62, -(2**63), 2**64 + 1, -(10**30)],
    "floats": [0.0, -0.0, 1e-300, 3.5, math.inf, -math.inf],
    "nan": math.nan,
    "str": "héllo / wörld",
    "bytes": b"\x00\xff",
    "tuple": (1, (2, 3), []),
    "int_keys": {1: "a", 2: "b"},
    "mixed_keys": {None: 1, True: 2, 1.5: 3, (1, "x"): 4, "s": 5},
    "odict": OrderedDict([("z", 1), ("a", 2)]),
    "dtype": torch.bfloat16,
    "device": torch.device("cuda", 1),
    "size": torch.Size([2, 3]),
    "np_array": np.arange(6, dtype=np.int16).reshape(2, 3),
    "np_scalars": [np.float32(1.25), np.int64(-3), np.bool_(True), np.float16(0.5)],
}


@pytest.mark.parametrize("key", sorted(VALUES))
def test_plain_values_roundtrip(tmp_path, key: str) -> None:
    path = tmp_path / "v.safetensors"
    tk.save({"v": VALUES[key]}, path)
    assert _same(tk.load(path)["v"], VALUES[key])


DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.bool,
    torch.complex64,
    torch.complex128,
    torch.complex32,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.float8_e4m3fnuz,
    torch.float8_e5m2fnuz,
    torch.float8_e8m0fnu,
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 0, 4), (4, 5)])
def test_every_dtype_and_shape(tmp_path, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    raw = torch.randint(0, 256, (int(np.prod(shape)) * dtype.itemsize,), dtype=torch.uint8)
    t = raw.view(dtype).reshape(shape) if raw.numel() else torch.empty(shape, dtype=dtype)
    path = tmp_path / "t.safetensors"
    tk.save({"t": t}, path)
    out = tk.load(path)["t"]
    assert out.dtype == dtype and out.shape == t.shape
    assert torch.equal(out.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8))


def test_views_parameters_and_tied_weights(tmp_path) -> None:
    w = torch.randn(4, 5)
    p = torch.nn.Parameter(torch.randn(3))
    obj = {
        "a": w,
        "b": w,
        "t": w.T,
        "row": w[1],
        "p": p,
        "g": torch.ones(2, requires_grad=True),
        "nc": torch.randn(6, 4)[:, ::2],
    }
    path = tmp_path / "v.safetensors"
    tk.save(obj, path)
    out = tk.load(path)
    assert out["a"] is out["b"]
    assert out["t"].untyped_storage().data_ptr() == out["a"].untyped_storage().data_ptr()
    assert torch.equal(out["t"], w.T) and torch.equal(out["row"], w[1])
    assert torch.equal(out["nc"], obj["nc"])
    assert isinstance(out["p"], torch.nn.Parameter) and out["p"].requires_grad
    assert out["g"].requires_grad and not isinstance(out["g"], torch.nn.Parameter)
    # tied weights stored once
    assert len(load_file(str(path))) == 4


def test_state_dict_is_plain_safetensors(tmp_path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    path = tmp_path / "sd.safetensors"
    tk.save(model.state_dict(), path)
    plain = load_file(str(path))
    assert set(plain) == set(model.state_dict())
    restored = tk.load(path)
    assert isinstance(restored, OrderedDict)
    assert list(restored) == list(model.state_dict())


def test_foreign_safetensors_loads_as_flat_dict(tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.arange(4)}, str(path))
    assert tk.load(path)["x"].tolist() == [0, 1, 2, 3]


def test_map_location_forms(tmp_path) -> None:
    path = tmp_path / "m.safetensors"
    tk.save({"w": torch.ones(2)}, path)
    assert tk.load(path, map_location="cpu")["w"].device.type == "cpu"
    assert tk.load(path, map_location=torch.device("cpu"))["w"].device.type == "cpu"
    assert tk.load(path, map_location={"cpu": "cpu"})["w"].device.type == "cpu"
    seen = []
    out = tk.load(path, map_location=lambda t, loc: seen.append(loc) or t)
    assert seen == ["cpu"] and out["w"].tolist() == [1.0, 1.0]
    with pytest.raises(TypeError, match="map_location"):
        tk.load(path, map_location=3)  # type: ignore[arg-type]


def test_loaded_tensors_are_writable_and_file_unchanged(tmp_path) -> None:
    path = tmp_path / "w.safetensors"
    tk.save({"w": torch.zeros(4)}, path)
    before = path.read_bytes()
    out = tk.load(path)
    out["w"] += 1
    assert path.read_bytes() == before
    assert tk.load(path)["w"].tolist() == [0.0] * 4


def test_mmap_false_reads_into_memory(tmp_path) -> None:
    path = tmp_path / "w.safetensors"
    tk.save({"w": torch.arange(5.0)}, path)
    assert tk.load(path, mmap=False)["w"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_user_metadata_is_stored_as_safetensors_metadata(tmp_path) -> None:
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    tk.save({"w": torch.ones(1)}, path, metadata={"format": "pt", "author": "me"})
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["author"] == "me" and meta["format"] == "pt"
    with pytest.raises(TypeError, match="str to str"):
        tk.save({"w": torch.ones(1)}, path, metadata={"n": 1})  # type: ignore[dict-item]
