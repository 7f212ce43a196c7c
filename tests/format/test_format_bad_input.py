"""Every kind of bad file gets a TorchkeepError that says what is wrong, and nothing else happens.

One test per case of issue 2's "Bad input" list, plus the hostile-input defects found in review.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _tkfile import edit_entry, edit_meta, join, split

import torchkeep as tk
from torchkeep.io import _codec, _format


@pytest.fixture
def good(tmp_path: Path) -> bytes:
    path = tmp_path / "good.safetensors"
    tk.save({"model": {"w": torch.randn(64, 32), "b": torch.zeros(32)}, "step": 3}, path)
    return path.read_bytes()


def _load_bytes(tmp_path: Path, raw: bytes, **kwargs: Any) -> Any:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(raw)
    return tk.load(path, **kwargs)


def _corrupt(tmp_path: Path, raw: bytes, match: str, **kwargs: Any) -> tk.CorruptCheckpointError:
    with pytest.raises(tk.CorruptCheckpointError, match=match) as info:
        _load_bytes(tmp_path, raw, **kwargs)
    assert str(tmp_path / "bad.safetensors") in str(info.value)  # every message names the file
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(tk.CheckpointNotFoundError, match="no such file") as info:
        tk.load(tmp_path / "nope.safetensors")
    assert isinstance(info.value, FileNotFoundError)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(tk.CheckpointNotFoundError, match="is a directory"):
        tk.load(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    _corrupt(tmp_path, b"", "file is empty")


@pytest.mark.parametrize("where", ["1", "7", "8", "9", "header/2", "header-1", "header", "header+1", "data/2", "end-1"])
def test_truncated_file(tmp_path: Path, good: bytes, where: str) -> None:
    (n,) = struct.unpack("<Q", good[:8])
    header_end = 8 + n
    cut = {
        "header/2": 8 + n // 2,
        "header-1": header_end - 1,
        "header": header_end,
        "header+1": header_end + 1,
        "data/2": (header_end + len(good)) // 2,
        "end-1": len(good) - 1,
    }.get(where) or int(where)
    err = _corrupt(tmp_path, good[:cut], "too short|header length|fall outside")
    assert "truncated" in str(err) or "outside" in str(err) or "too short" in str(err)


def test_truncated_anywhere(tmp_path: Path, good: bytes) -> None:
    step = max(1, len(good) // 97)
    for cut in range(1, len(good), step):
        with pytest.raises(tk.CorruptCheckpointError):
            _load_bytes(tmp_path, good[:cut])


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    raw = rng.randbytes(rng.choice([1, 8, 9, 100, 4096, 100_000]))
    with pytest.raises(tk.CorruptCheckpointError):
        _load_bytes(tmp_path, raw)


class _WritesMarker:
    """Unpickling this calls open(marker, "w"): proof that a loader ran the pickle."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy-pickle"])
def test_torch_save_file_is_refused_without_unpickling(tmp_path: Path, zipfile: bool) -> None:
    marker = tmp_path / "pickle-ran"
    src = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2), "payload": _WritesMarker(str(marker))}, src, _use_new_zipfile_serialization=zipfile)
    for kwargs in ({}, {"verify": False}, {"mmap": False}):
        with pytest.raises(tk.CorruptCheckpointError, match="torchkeep convert") as info:
            tk.load(src, **kwargs)
        assert "never unpickles" in str(info.value)
    assert not marker.exists()
    # Control: the payload is live, so the assertion above means something.
    with open(src, "rb") as f:
        torch.load(f, weights_only=False)["payload"].close()
    assert marker.exists()


def test_plain_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pickle-ran"
    raw = pickle.dumps(_WritesMarker(str(marker)), protocol=4)
    _corrupt(tmp_path, raw, "looks like a pickle")
    assert not marker.exists()


def test_header_length_larger_than_file(tmp_path: Path, good: bytes) -> None:
    for n in (len(good), 2**40, 2**64 - 1):
        _corrupt(tmp_path, struct.pack("<Q", n) + good[8:], f"header length field says {n} bytes")


def test_header_not_json(tmp_path: Path, good: bytes) -> None:
    _, data = split(good)
    _corrupt(tmp_path, join('{"w": {"dtype": "F32", ', data), "header is not valid JSON")
    _corrupt(tmp_path, join(b"\xff\xfe{}", data), "not UTF-8")
    _corrupt(tmp_path, join("[1, 2]", data), "not a JSON object")


def test_header_nested_100000_deep(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    _corrupt(tmp_path, join('{"x": ' + deep + "}", b""), "nested too deeply")
    _corrupt(tmp_path, join("{" + '"a":{' * 100_000 + "}" * 100_001, b""), "nested too deeply")


def test_tree_nested_100000_deep(tmp_path: Path, good: bytes) -> None:
    header, data = split(good)
    header["__metadata__"][_format.META_TREE] = "[" * 100_000 + "]" * 100_000
    _corrupt(tmp_path, join(header, data), "nested too deeply")


def test_tree_deeper_than_the_codec_allows(tmp_path: Path, good: bytes) -> None:
    # Parses as JSON (under the interpreter's recursion limit) but exceeds the codec's MAX_DEPTH.
    depth = _codec.MAX_DEPTH + 50
    raw = edit_meta(good, _format.META_TREE, lambda tree: json.loads("[" * depth + "]" * depth))
    _corrupt(tmp_path, raw, f"deeper than {_codec.MAX_DEPTH}")


def test_unknown_type_tag(tmp_path: Path, good: bytes) -> None:
    def swap(tree: Any) -> Any:
        tree["items"]["step"] = {"t": "pickle", "v": "gASVAAAA"}
        return tree

    _corrupt(tmp_path, edit_meta(good, _format.META_TREE, swap), "unknown type tag 'pickle'.*newer torchkeep")


def test_tensor_reference_to_missing_name(tmp_path: Path, good: bytes) -> None:
    def dangle(tree: Any) -> Any:
        tree["items"]["model"]["items"]["w"]["ref"] = "model/nowhere"
        return tree

    _corrupt(tmp_path, edit_meta(good, _format.META_TREE, dangle), "refers to tensor 'model/nowhere'")


def test_overlapping_offsets(tmp_path: Path, good: bytes) -> None:
    header, _ = split(good)
    b_begin = header["model/b"]["data_offsets"][0]
    raw = edit_entry(good, "model/b", data_offsets=[b_begin - 4, b_begin - 4 + 128])
    _corrupt(tmp_path, raw, "tensor data overlaps")


@pytest.mark.parametrize("offsets", [[0, 10**12], [-4, 124], [200, 100], [0], "0-128", [0.0, 128.0]])
def test_out_of_range_or_malformed_offsets(tmp_path: Path, good: bytes, offsets: Any) -> None:
    err = _corrupt(tmp_path, edit_entry(good, "model/b", data_offsets=offsets), "data_offsets")
    assert err.tensor == "model/b"


@pytest.mark.parametrize(
    "change",
    [{"shape": [33]}, {"shape": [4, 4]}, {"dtype": "F64"}, {"dtype": "I8"}, {"shape": [2**70]}, {"shape": [-32]}],
    ids=str,
)
def test_dtype_or_shape_not_matching_byte_count(tmp_path: Path, good: bytes, change: dict[str, Any]) -> None:
    err = _corrupt(tmp_path, edit_entry(good, "model/b", **change), "model/b")
    assert err.tensor == "model/b"
    assert "bytes" in str(err) or "shape" in str(err)


def test_unknown_dtype(tmp_path: Path, good: bytes) -> None:
    _corrupt(tmp_path, edit_entry(good, "model/b", dtype="Q8"), "unknown dtype 'Q8'")


@pytest.mark.parametrize("logical", ["qint8", "uint4", "_dynamo", "Tensor", "__class__", 7])
def test_logical_dtype_outside_the_allowlist(tmp_path: Path, good: bytes, logical: Any) -> None:
    def retype(tensors: Any) -> Any:
        tensors["model/b"].update(dtype=logical, shape=[128])
        return tensors

    header, data = split(good)
    header["model/b"].update(dtype="U8", shape=[128])
    raw = edit_meta(join(header, data), _format.META_TENSORS, retype)
    _corrupt(tmp_path, raw, "bad logical dtype")


def test_one_flipped_bit_names_the_tensor(tmp_path: Path, good: bytes) -> None:
    header, data = split(good)
    begin = header["model/w"]["data_offsets"][0]
    flipped = bytearray(data)
    flipped[begin + 1000] ^= 0x10
    raw = join(header, bytes(flipped))
    err = _corrupt(tmp_path, raw, "tensor 'model/w': checksum mismatch")
    assert err.tensor == "model/w"
    assert _load_bytes(tmp_path, raw, verify=False)["model"]["w"].shape == (64, 32)  # opt-out still loads


def test_newer_format_version(tmp_path: Path, good: bytes) -> None:
    header, data = split(good)
    header["__metadata__"][_format.META_FORMAT] = "2"
    with pytest.raises(tk.FormatVersionError, match=r"format 2.*pip install -U torchkeep") as info:
        _load_bytes(tmp_path, join(header, data))
    assert info.value.found == "2" and info.value.supported == "1"


@pytest.mark.parametrize("version", ["0", "1.0", "one", "²", ""])
def test_garbled_format_version(tmp_path: Path, good: bytes, version: str) -> None:
    header, data = split(good)
    header["__metadata__"][_format.META_FORMAT] = version
    _corrupt(tmp_path, join(header, data), "unknown torchkeep.format")


def test_missing_checksum_entry(tmp_path: Path, good: bytes) -> None:
    raw = edit_meta(good, _format.META_TENSORS, lambda t: {k: v for k, v in t.items() if k != "model/b"})
    _corrupt(tmp_path, raw, "no checksum recorded")


def test_metadata_not_strings(tmp_path: Path, good: bytes) -> None:
    header, data = split(good)
    header["__metadata__"]["n"] = 1
    _corrupt(tmp_path, join(header, data), "__metadata__ must map strings to strings")
    header["__metadata__"] = []
    _corrupt(tmp_path, join(header, data), "__metadata__ must map strings to strings")


@pytest.mark.parametrize(
    ("node", "match"),
    [
        ({"t": "device", "v": "warp-drive:9"}, "malformed 'device'"),
        ({"t": "size", "v": [2**70]}, "malformed 'size'"),
        ({"t": "int", "v": "9" * 5000}, "malformed 'int'"),
        ({"t": "dtype", "v": "_dynamo"}, "unknown dtype"),
        ({"t": "npscalar", "dtype": [["a", "O"]], "v": ""}, "numeric type string"),
        ({"t": "npscalar", "dtype": "<f4", "v": "AAA="}, "malformed 'npscalar'"),
        ({"t": "bytes", "v": "not base64!"}, "malformed 'bytes'"),
        ({"t": "tensor", "ref": "model/b", "view": [0, [0, 2**70], [1, 1]]}, "malformed 'tensor'"),
        ({"t": "tensor", "ref": "model/b", "view": [30, [4], [1]]}, "reaches past"),
        ({"t": "dataclass", "cls": "os:system", "fields": {}}, "names a builtin_function_or_method, not a class"),
        ({"t": "dataclass", "cls": "os:PathLike", "fields": {}}, "is not a dataclass"),
        ({"t": "dataclass", "cls": "os:NoSuchThing", "fields": {}}, "has no class NoSuchThing"),
        ({"t": "dataclass", "cls": "no_such_module_xyz:Cfg", "fields": {}}, "import no_such_module_xyz"),
        ({"t": "enum", "cls": "enum:Enum", "v": 1}, "malformed 'enum'"),
        ({"t": "dict", "keys": [[1]], "values": [1]}, "malformed 'dict'"),
        ({"t": 7}, "unknown type tag 7"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_malformed_tree_nodes(tmp_path: Path, good: bytes, node: Any, match: str) -> None:
    def put(tree: Any) -> Any:
        tree["items"]["step"] = node
        return tree

    _corrupt(tmp_path, edit_meta(good, _format.META_TREE, put), match)


def test_decoding_never_calls_module_getattr(tmp_path: Path, good: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.__getattr__ imports submodules on demand; a file must not be able to trigger that.
    calls: list[str] = []
    monkeypatch.setattr(torch, "__getattr__", calls.append, raising=False)

    def put(tree: Any) -> Any:
        tree["items"]["a"] = {"t": "dtype", "v": "_dynamo"}
        tree["items"]["b"] = {"t": "dataclass", "cls": "torch:_inductor.Config", "fields": {}}
        return tree

    raw = edit_meta(good, _format.META_TREE, put)
    for key in ("a", "b"):

        def only(tree: Any, key: str = key) -> Any:
            tree["items"] = {key: tree["items"][key]}
            return tree

        with pytest.raises(tk.CorruptCheckpointError):
            _load_bytes(tmp_path, edit_meta(raw, _format.META_TREE, only))
    assert calls == []


def test_dataclass_decoding_runs_no_init_code(tmp_path: Path) -> None:
    import dataclasses

    ran: list[str] = []

    @dataclasses.dataclass
    class Job:
        cmd: str
        steps: int = dataclasses.field(init=False, default=0)

        def __post_init__(self) -> None:
            ran.append(self.cmd)

    Job.__qualname__ = "Job"  # resolvable as module:Job
    monkey = sys.modules[__name__]
    monkey.Job = Job  # type: ignore[attr-defined]
    try:
        job = Job("echo hi")
        job.steps = 5
        tk.save({"job": job}, tmp_path / "job.safetensors")
        ran.clear()
        out = tk.load(tmp_path / "job.safetensors")["job"]
    finally:
        del monkey.Job  # type: ignore[attr-defined]
    assert ran == [] and type(out) is Job and out.cmd == "echo hi" and out.steps == 5


def test_file_saved_on_cuda_loads_on_cpu_without_arguments(tmp_path: Path, good: bytes) -> None:
    raw = edit_meta(good, _format.META_TENSORS, lambda t: {k: {**v, "device": "cuda:0"} for k, v in t.items()})
    out = _load_bytes(tmp_path, raw)
    assert out["model"]["w"].device.type == "cpu" and out["step"] == 3
    seen: list[str] = []
    _load_bytes(tmp_path, raw, map_location=lambda t, loc: seen.append(loc) or t)
    assert seen == ["cuda:0", "cuda:0"]
    assert _load_bytes(tmp_path, raw, map_location={"cuda:0": "cpu"})["model"]["b"].device.type == "cpu"
    assert tk.load(tmp_path / "bad.safetensors", map_location="cpu")["model"]["b"].device.type == "cpu"


def test_misaligned_foreign_file_is_copied_not_crashed(tmp_path: Path) -> None:
    header = {
        "a": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
        "f": {"dtype": "F64", "shape": [2], "data_offsets": [3, 19]},
    }
    data = bytes([1, 2, 3]) + struct.pack("<2d", 1.5, -2.0)
    out = _load_bytes(tmp_path, join(header, data))
    assert out["f"].tolist() == [1.5, -2.0] and out["a"].tolist() == [1, 2, 3]


def test_failed_load_leaves_the_file_untouched(tmp_path: Path, good: bytes) -> None:
    header, data = split(good)
    flipped = bytearray(data)
    flipped[5] ^= 1
    raw = join(header, bytes(flipped))
    with pytest.raises(tk.CorruptCheckpointError):
        _load_bytes(tmp_path, raw)
    assert (tmp_path / "bad.safetensors").read_bytes() == raw
    assert sorted(os.listdir(tmp_path)) == ["bad.safetensors", "good.safetensors"]
