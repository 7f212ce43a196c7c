"""Regenerate the committed test files: the format-v1 golden file and the corpus of bad files.

Run from the repository root::

    PYTHONPATH=$PWD/src python tests/format/make_data.py

The golden file must only be regenerated when a NEW format version is introduced (then under a
new ``format-vN/`` folder); ``format-v1/`` is frozen: every later torchkeep must load it.
The bad corpus may grow: add a case to ``BAD_CASES`` with the error it must raise.
"""

from __future__ import annotations

import json
import random
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tkfile import BAD, GOLDEN_METADATA, GOLDEN_V1, edit_entry, edit_meta, golden_object, join, split

import torchkeep as tk

TREE, TENSORS, FORMAT = "torchkeep.tree", "torchkeep.tensors", "torchkeep.format"


def _base() -> bytes:
    import io

    from torchkeep.io import _codec, _format

    enc = _codec.encode({"w": torch.arange(16, dtype=torch.float32).reshape(4, 4), "b": torch.ones(4), "step": 7})
    buf = io.BytesIO()
    _format.write(buf, enc.tensors, tree=enc.tree)
    return buf.getvalue()


def _flip(raw: bytes, name: str = "w") -> bytes:
    header, data = split(raw)
    b = bytearray(data)
    b[header[name]["data_offsets"][0] + 5] ^= 0x01
    return join(header, bytes(b))


def _set_tree(node: object) -> Callable[[bytes], bytes]:
    def put(raw: bytes) -> bytes:
        def edit(tree: dict[str, object]) -> object:
            tree["items"]["step"] = node  # type: ignore[index]
            return tree

        return edit_meta(raw, TREE, edit)

    return put


def _with_meta(key: str, value: str) -> Callable[[bytes], bytes]:
    def put(raw: bytes) -> bytes:
        header, data = split(raw)
        header["__metadata__"][key] = value
        return join(header, data)

    return put


# name -> (make(base bytes) -> bad bytes, error class name, message fragment)
BAD_CASES: dict[str, tuple[Callable[[bytes], bytes], str, str]] = {
    "empty": (lambda raw: b"", "CorruptCheckpointError", "file is empty"),
    "short": (lambda raw: raw[:5], "CorruptCheckpointError", "too short"),
    "truncated-header": (lambda raw: raw[:40], "CorruptCheckpointError", "header length field"),
    "truncated-data": (lambda raw: raw[:-3], "CorruptCheckpointError", "fall outside"),
    "random": (lambda raw: random.Random(0).randbytes(512), "CorruptCheckpointError", "header length field"),
    "zip": (lambda raw: b"PK\x03\x04" + raw[4:200], "CorruptCheckpointError", "torchkeep convert"),
    "pickle": (lambda raw: b"\x80\x04\x95" + raw[3:64], "CorruptCheckpointError", "torchkeep convert"),
    "length-too-big": (lambda raw: struct.pack("<Q", 2**63) + raw[8:], "CorruptCheckpointError", "header length"),
    "not-json": (lambda raw: join("{not json", split(raw)[1]), "CorruptCheckpointError", "not valid JSON"),
    "not-utf8": (lambda raw: join(b'{"\xff": 1}', split(raw)[1]), "CorruptCheckpointError", "not UTF-8"),
    "deep-header": (lambda raw: join("[" * 100_000 + "]" * 100_000, b""), "CorruptCheckpointError", "nested too"),
    "deep-tree": (
        _with_meta(TREE, "[" * 100_000 + "]" * 100_000),
        "CorruptCheckpointError",
        "nested too deeply",
    ),
    "unknown-tag": (_set_tree({"t": "pickle", "v": "gAR9lC4="}), "CorruptCheckpointError", "unknown type tag"),
    "missing-tensor": (
        _set_tree({"t": "tensor", "ref": "ghost"}),
        "CorruptCheckpointError",
        "refers to tensor 'ghost'",
    ),
    "overlap": (lambda raw: edit_entry(raw, "b", data_offsets=[0, 16]), "CorruptCheckpointError", "overlaps"),
    "out-of-range": (
        lambda raw: edit_entry(raw, "b", data_offsets=[64, 10**9]),
        "CorruptCheckpointError",
        "fall outside",
    ),
    "shape-mismatch": (lambda raw: edit_entry(raw, "w", shape=[4, 5]), "CorruptCheckpointError", "needs 80 bytes"),
    "dtype-mismatch": (lambda raw: edit_entry(raw, "w", dtype="F64"), "CorruptCheckpointError", "needs 128 bytes"),
    "flipped-bit": (_flip, "CorruptCheckpointError", "tensor 'w': checksum mismatch"),
    "newer-version": (_with_meta(FORMAT, "2"), "FormatVersionError", "format 2"),
    "bad-device": (_set_tree({"t": "device", "v": "nowhere:0"}), "CorruptCheckpointError", "malformed 'device'"),
    "class-not-loaded": (
        _set_tree({"t": "dataclass", "cls": "evil_module_xyz:Payload", "fields": {}}),
        "CorruptCheckpointError",
        "never imports",
    ),
}


def main() -> None:
    GOLDEN_V1.parent.mkdir(parents=True, exist_ok=True)
    if not GOLDEN_V1.exists() or "--force-golden" in sys.argv:
        tk.save(golden_object(), GOLDEN_V1, metadata=GOLDEN_METADATA)
        print(f"wrote {GOLDEN_V1}")
    BAD.mkdir(parents=True, exist_ok=True)
    base = _base()
    expected = {}
    for name, (make, error, fragment) in BAD_CASES.items():
        (BAD / f"{name}.safetensors").write_bytes(make(base))
        expected[f"{name}.safetensors"] = {"error": error, "match": fragment}
    (BAD / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(expected)} bad files to {BAD}")


if __name__ == "__main__":
    main()
