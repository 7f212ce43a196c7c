"""Constructor arguments read from a file cannot make load_model build a model the file cannot fill."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from torch import nn

import torchkeep as tk


def _edit_arguments(path: Path, **arguments: Any) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    section = json.loads(header["__metadata__"]["torchkeep.model"])
    section["arguments"]["items"].update(arguments)
    header["__metadata__"]["torchkeep.model"] = json.dumps(section)
    text = json.dumps(header).encode()
    text += b" " * ((-(8 + len(text))) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


@pytest.fixture
def wide_file(tmp_path: Path) -> Path:
    @tk.register(name="amp-wide")
    def wide(n: int = 4, depth: int = 1) -> nn.Module:
        return nn.Sequential(*[nn.Linear(n, n) for _ in range(depth)])

    path = tmp_path / "wide.safetensors"
    tk.save_model(wide(4), path)
    return path


@pytest.mark.parametrize("arguments", [{"n": 1_000_000}, {"n": 20_000, "depth": 2}])
@pytest.mark.parametrize("strict", [True, False])
def test_giant_model_arguments_are_refused_before_allocating(
    wide_file: Path, arguments: dict[str, int], strict: bool
) -> None:
    _edit_arguments(wide_file, **arguments)
    # refused before allocating: built on the meta device and compared with what the file holds
    with pytest.raises(tk.StateMismatchError) as info:
        tk.load_model(wide_file, strict=strict)
    message = str(info.value)
    assert "amp-wide" in message or "file" in message


def test_a_model_slightly_larger_than_its_file_loads_with_strict_false(wide_file: Path) -> None:
    _edit_arguments(wide_file, depth=2)  # a second layer the file does not hold: initialized normally
    model = tk.load_model(wide_file, strict=False)
    assert isinstance(model, nn.Sequential) and len(model) == 2


def test_the_untouched_file_still_loads(wide_file: Path) -> None:
    model = tk.load_model(wide_file)
    assert model[0].in_features == 4
