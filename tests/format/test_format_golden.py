"""Golden bytes: the committed format-v1 file still loads, and saving today writes the same bytes.

If ``test_saving_today_writes_the_golden_bytes`` fails, the writer changed what it puts on disk.
A change of the format itself needs a new format version (a new ``tests/data/format-vN/``); a
change of layout only (the order of tensors, which readers never depend on) keeps version 1, and
the file written by the old layout stays here as a case that must keep loading. Every v1 file
must keep loading forever (see docs/format.md, "Compatibility").
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _tkfile import GOLDEN_METADATA, GOLDEN_V1, GOLDEN_V1_PACKED, golden_object, same, split

import torchkeep as tk
from torchkeep.io import _format


@pytest.mark.parametrize("path", [GOLDEN_V1, GOLDEN_V1_PACKED], ids=["current-layout", "packed-layout"])
def test_golden_v1_file_loads_to_the_expected_tree(path: Path) -> None:
    out = tk.load(path)
    expected = golden_object()
    assert same(out, expected)
    # the ties and views survive, not just the values
    assert out["model"]["fc.weight"] is out["model"]["head.weight"]
    assert out["views"]["wT"].untyped_storage().data_ptr() == out["model"]["fc.weight"].untyped_storage().data_ptr()
    assert type(out["param"]).__name__ == "Parameter" and out["grad"].requires_grad


def test_golden_v1_header_facts() -> None:
    reader = _format.open_file(GOLDEN_V1)
    assert reader.metadata[_format.META_FORMAT] == "1"
    assert reader.metadata["author"] == GOLDEN_METADATA["author"]
    assert reader.data_start % _format.DATA_ALIGNMENT == 0
    assert reader.info("model/fc.weight").checksum is not None
    reader.verify()
    # every tensor whose size is a multiple of 64 bytes starts on a 64-byte boundary
    for name in reader.names:
        info = reader.info(name)
        if info.nbytes % 64 == 0:
            assert info.begin % 64 == 0, name


def test_saving_today_writes_the_golden_bytes(tmp_path: Path) -> None:
    path = tmp_path / "today.safetensors"
    tk.save(golden_object(), path, metadata=GOLDEN_METADATA)
    today, golden = path.read_bytes(), GOLDEN_V1.read_bytes()
    if today != golden:  # show where, not just that
        assert split(today)[0] == split(golden)[0], "the header changed"
        assert today == golden, "the tensor data changed"


def test_plain_safetensors_tools_read_the_golden_file() -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(GOLDEN_V1))
    assert "model/fc.weight" in tensors and "model/head.weight" not in tensors  # tied: stored once
    assert tensors["dtypes/c128"].dtype.itemsize == 1  # dtypes safetensors lacks are raw bytes
