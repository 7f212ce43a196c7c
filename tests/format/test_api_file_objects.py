"""tk.save / tk.load as drop-ins for torch.save / torch.load: file objects, bytes, weights_only."""

from __future__ import annotations

import io

import pytest
import torch

import torchkeep as tk
from torchkeep.errors import CorruptCheckpointError, UsageError


def test_weights_only_is_accepted_and_moot(tmp_path) -> None:
    path = tmp_path / "w.safetensors"
    tk.save({"w": torch.arange(3)}, path)
    for flag in (True, False, None):
        assert tk.load(path, weights_only=flag)["w"].tolist() == [0, 1, 2]


def test_save_and_load_file_objects(tmp_path) -> None:
    buf = io.BytesIO()
    tk.save({"w": torch.ones(2), "betas": (0.9, 0.999)}, buf)
    buf.seek(0)
    back = tk.load(buf)
    assert back["betas"] == (0.9, 0.999) and torch.equal(back["w"], torch.ones(2))
    with open(tmp_path / "f.safetensors", "wb") as f:
        tk.save({"x": 1}, f)
    with open(tmp_path / "f.safetensors", "rb") as f:
        assert tk.load(f) == {"x": 1}
    assert tk.load(tmp_path / "f.safetensors") == {"x": 1}  # a complete file on disk


def test_save_bytes_load_bytes_roundtrip() -> None:
    w = torch.randn(3, 3)
    data = tk.save_bytes({"a": w, "b": w, 3: "int key"}, metadata={"k": "v"})
    assert isinstance(data, bytes)
    back = tk.load_bytes(data)
    assert back["a"] is back["b"] and torch.equal(back["a"], w) and back[3] == "int key"
    back["a"].add_(1)  # loaded tensors are writable


def test_bad_file_arguments_are_usage_errors(tmp_path) -> None:
    with pytest.raises(UsageError, match="load_bytes"):
        tk.load(b"\x00" * 16)
    with pytest.raises(UsageError, match="takes bytes"):
        tk.load_bytes("x.safetensors")  # type: ignore[arg-type]
    with open(tmp_path / "r.bin", "wb") as f:
        f.write(b"x")
    with open(tmp_path / "r.bin", "rb") as f, pytest.raises(UsageError, match="cannot write"):
        tk.save({"x": 1}, f)  # opened for reading
    with open(tmp_path / "r.bin", "w") as f, pytest.raises(UsageError, match="cannot read"):
        tk.load(f)  # opened for writing
    with pytest.raises(UsageError, match="expected a path"):
        tk.save({"x": 1}, 42)  # type: ignore[arg-type]
    with pytest.raises(CorruptCheckpointError):
        tk.load_bytes(b"not a safetensors file")
    with pytest.raises(CorruptCheckpointError):
        tk.load(io.BytesIO(b"garbage"))
