"""Regression tests for defects found reviewing the codec, the writer and the reader."""

from __future__ import annotations

import dataclasses
import enum
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _tkfile import split

import torchkeep as tk
from torchkeep.io import _codec, _format


class Mode(str, enum.Enum):
    TRAIN = "train"


class Perm(enum.Flag):
    R = 1
    W = 2


@dataclasses.dataclass(frozen=True)
class Frozen:
    a: int
    b: list[int] = dataclasses.field(default_factory=list)
    c: int = dataclasses.field(init=False, default=0)


def test_str_enum_keeps_its_type(tmp_path: Path) -> None:
    tk.save({"m": Mode.TRAIN, "p": Perm.R | Perm.W}, tmp_path / "e.safetensors")
    out = tk.load(tmp_path / "e.safetensors")
    assert out["m"] is Mode.TRAIN and out["p"] == Perm.R | Perm.W and type(out["p"]) is Perm


def test_frozen_dataclass_with_non_init_field(tmp_path: Path) -> None:
    obj = Frozen(1, [2])
    object.__setattr__(obj, "c", 9)
    tk.save({"f": obj}, tmp_path / "d.safetensors")
    out = tk.load(tmp_path / "d.safetensors")["f"]
    assert type(out) is Frozen and (out.a, out.b, out.c) == (1, [2], 9)


def test_zero_dim_numpy_array_keeps_its_shape(tmp_path: Path) -> None:
    tk.save({"a": np.array(2.5), "b": np.zeros((0, 3), np.int8)}, tmp_path / "n.safetensors")
    out = tk.load(tmp_path / "n.safetensors")
    assert out["a"].shape == () and out["a"] == 2.5 and out["b"].shape == (0, 3) and out["b"].dtype == np.int8


def test_conjugate_view_is_not_tied_to_its_source(tmp_path: Path) -> None:
    x = torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex64)
    tk.save({"x": x, "xc": x.conj(), "xn": torch._neg_view(x.real)}, tmp_path / "c.safetensors")
    out = tk.load(tmp_path / "c.safetensors")
    assert torch.equal(out["x"], x) and torch.equal(out["xc"], x.conj().resolve_conj())
    assert torch.equal(out["xn"], -x.real)


def test_tied_parameters_come_back_as_one_object(tmp_path: Path) -> None:
    p = torch.nn.Parameter(torch.randn(3))
    g = torch.ones(2, requires_grad=True)
    tk.save({"a": p, "b": p, "g1": g, "g2": g}, tmp_path / "p.safetensors")
    out = tk.load(tmp_path / "p.safetensors")
    assert out["a"] is out["b"] and isinstance(out["a"], torch.nn.Parameter)
    assert out["g1"] is out["g2"] and out["g1"].requires_grad


def test_reserved_and_odd_tensor_names(tmp_path: Path) -> None:
    obj = {"__metadata__": torch.ones(1), "\ud800": torch.zeros(1), "a/b": torch.ones(2), "a_b": torch.zeros(2)}
    tk.save(obj, tmp_path / "names.safetensors")
    out = tk.load(tmp_path / "names.safetensors")
    assert list(out) == list(obj) and all(torch.equal(out[k], obj[k]) for k in obj)
    header, _ = split((tmp_path / "names.safetensors").read_bytes())
    assert "__metadata__~1" in header


def test_metadata_errors_are_unsupported_value_errors(tmp_path: Path) -> None:
    with pytest.raises(tk.UnsupportedValueError, match="reserved"):
        tk.save({}, tmp_path / "m.safetensors", metadata={"torchkeep.format": "9"})
    with pytest.raises(tk.UnsupportedValueError, match="not valid Unicode"):
        tk.save({}, tmp_path / "m.safetensors", metadata={"k": "\udcff"})
    assert list(tmp_path.iterdir()) == []


def test_sub_byte_dtype_is_refused_at_save(tmp_path: Path) -> None:
    t = torch.zeros(4, dtype=torch.uint8).view(torch.uint4)
    with pytest.raises(tk.UnsupportedValueError, match="uint4 cannot be stored"):
        tk.save({"q": t}, tmp_path / "q.safetensors")


class _Trickle(io.RawIOBase):
    """A non-seekable raw stream that accepts at most 1000 bytes per write (like a pipe)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        chunk = memoryview(b).cast("B")[:1000]  # type: ignore[arg-type]
        self.data += chunk
        return len(chunk)


def test_short_writes_and_unseekable_destinations() -> None:
    enc = _codec.encode({"w": torch.arange(5000.0), "i": torch.arange(7)})
    expected = io.BytesIO()
    _format.write(expected, enc.tensors, tree=enc.tree)
    sink = _Trickle()
    size = _format.write(sink, enc.tensors, tree=enc.tree)  # type: ignore[arg-type]
    assert bytes(sink.data) == expected.getvalue() and size == len(sink.data)


def test_save_is_deterministic(tmp_path: Path) -> None:
    obj = {"model": torch.nn.Linear(4, 3).state_dict(), "step": 1, "betas": (0.9, 0.99), 3: {None: b"x"}}
    tk.save(obj, tmp_path / "a.safetensors")
    tk.save(obj, tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_data_section_and_every_tensor_are_aligned(tmp_path: Path) -> None:
    obj = {
        "u8": torch.ones(3, dtype=torch.uint8),
        "f64": torch.ones(3, dtype=torch.float64),
        "f16": torch.ones(1).half(),
    }
    tk.save(obj, tmp_path / "al.safetensors")
    raw = (tmp_path / "al.safetensors").read_bytes()
    header, _ = split(raw)
    start = len(raw) - sum(
        e["data_offsets"][1] - e["data_offsets"][0] for k, e in header.items() if k != "__metadata__"
    )
    assert start % _format.DATA_ALIGNMENT == 0
    sizes = {"F64": 8, "F16": 2, "U8": 1}
    for name, entry in header.items():
        if name != "__metadata__":
            assert entry["data_offsets"][0] % sizes[entry["dtype"]] == 0, name


def test_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    if sys.platform == "win32":  # pragma: no cover
        pytest.skip("no FIFOs")
    import os

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(tk.CorruptCheckpointError, match="not a regular file"):
        tk.load(fifo)


@pytest.mark.gpu
def test_cuda_tensors_record_their_device_and_load_anywhere(tmp_path: Path) -> None:
    w = torch.randn(4, 3, device="cuda")
    tk.save({"w": w, "wT": w.T, "cpu": torch.ones(2)}, tmp_path / "gpu.safetensors")
    reader = _format.open_file(tmp_path / "gpu.safetensors")
    assert reader.info("w").device == "cuda:0" and reader.info("cpu").device == "cpu"
    out = tk.load(tmp_path / "gpu.safetensors")  # no argument: everything on the CPU
    assert out["w"].device.type == "cpu" and torch.equal(out["w"], w.cpu()) and torch.equal(out["wT"], w.T.cpu())
    back = tk.load(tmp_path / "gpu.safetensors", map_location={"cuda:0": "cuda:0"})
    assert back["w"].device.type == "cuda" and back["cpu"].device.type == "cpu"
    assert (
        torch.equal(back["wT"], w.T)
        and back["wT"].untyped_storage().data_ptr() == back["w"].untyped_storage().data_ptr()
    )
