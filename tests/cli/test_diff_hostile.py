"""`torchkeep diff` on dtypes without arithmetic and on files crafted to make it compare forever."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import torchkeep as tk
from torchkeep.cli import app
from torchkeep.cli._diff import diff_files


def _raw(values: list[int], dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8).view(dtype)


@pytest.mark.parametrize(
    "dtype",
    [torch.bits8, torch.float4_e2m1fn_x2, torch.bits16, torch.complex32, torch.float8_e8m0fnu, torch.bits4x2],
)
def test_diff_of_differing_tensors_without_arithmetic(tmp_path: Path, dtype: torch.dtype) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    tk.save({"t": _raw([1, 2, 3, 4], dtype), "same": _raw([9, 9, 9, 9], dtype)}, a)
    tk.save({"t": _raw([1, 2, 3, 5], dtype), "same": _raw([9, 9, 9, 9], dtype)}, b)
    report = diff_files(str(a), str(b))
    assert [e["name"] for e in report["tensors"]["changed"]] == ["t"]
    assert report["tensors"]["identical"] == 1 and not report["identical"]
    result = CliRunner().invoke(app, ["diff", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert "t" in result.output


def test_diff_of_rng_states_crafted_as_huge_stride_zero_views_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    tk.save_checkpoint(a, model=torch.nn.Linear(1, 1))
    torch.manual_seed(5)
    tk.save_checkpoint(b, model=torch.nn.Linear(1, 1))
    raw = b.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    tree = json.loads(header["__metadata__"]["torchkeep.tree"])
    rng = tree["items"]["__rng__"]["items"]
    rng["torch"] = {"t": "tensor", "ref": rng["torch"]["ref"], "view": [0, [2**40], [0]]}
    header["__metadata__"]["torchkeep.tree"] = json.dumps(tree)
    text = json.dumps(header).encode()
    text += b" " * ((-(8 + len(text))) % 8)
    b.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    with pytest.raises(tk.CorruptCheckpointError, match="view"):
        diff_files(str(a), str(b))
