"""The loader against hostile bytes: a committed corpus of bad files, and a mutation fuzzer.

The only exception allowed out of ``tk.load`` is a TorchkeepError: no crash, no RecursionError,
no MemoryError, no bare ValueError from deep inside torch or json.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from _tkfile import BAD, join, split
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchkeep as tk
from torchkeep.cli._files import describe

EXPECTED: dict[str, dict[str, str]] = json.loads((BAD / "expected.json").read_text())


def test_corpus_is_complete() -> None:
    on_disk = {p.name for p in BAD.glob("*.safetensors")}
    assert on_disk == set(EXPECTED), "regenerate with tests/format/make_data.py"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_corpus(name: str) -> None:
    want = EXPECTED[name]
    with pytest.raises(tk.TorchkeepError) as info:
        tk.load(BAD / name)
    assert type(info.value).__name__ == want["error"]
    assert want["match"] in str(info.value)
    assert str(BAD / name) in str(info.value)


# -- mutation fuzzing -----------------------------------------------------------------------------


def _seed_file() -> bytes:
    import io
    from collections import OrderedDict

    from torchkeep.io import _codec, _format

    w = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {
        "model": OrderedDict(w=w, tied=w, wT=w.T, b=torch.ones(3, dtype=torch.bfloat16)),
        "opt": {"step": 3, "betas": (0.9, 0.99), 1: [None, 1.5, float("nan"), b"xy", 2**70]},
        "c": torch.tensor([1 + 1j], dtype=torch.complex128),
        "meta": [torch.float16, torch.device("cpu"), torch.Size([2])],
    }
    enc = _codec.encode(obj)
    buf = io.BytesIO()
    _format.write(buf, enc.tensors, tree=enc.tree)
    return buf.getvalue()


SEED = _seed_file()
HEADER, DATA = split(SEED)
HEADER_END = 8 + struct.unpack("<Q", SEED[:8])[0]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "splice", "delete", "header-field", "tree-node", "meta-field"]))
    raw = bytearray(SEED)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            raw[draw(st.integers(0, len(raw) - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(raw)
    if kind == "truncate":
        return bytes(raw[: draw(st.integers(0, len(raw) - 1))])
    if kind == "splice":
        at = draw(st.integers(0, len(raw)))
        return bytes(raw[:at] + draw(st.binary(min_size=1, max_size=64)) + raw[at:])
    if kind == "delete":
        at = draw(st.integers(0, len(raw) - 1))
        return bytes(raw[:at] + raw[at + draw(st.integers(1, 64)) :])
    header = json.loads(json.dumps(HEADER))
    if kind == "header-field":
        name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
        header[name][field] = draw(json_values)
        return join(header, DATA)
    meta = header["__metadata__"]
    if kind == "meta-field":
        key = draw(st.sampled_from(sorted(meta)))
        meta[key] = draw(st.text(max_size=20) | json_values.map(json.dumps))
        return join(header, DATA)
    # tree-node: replace one node of the object tree (or of the tensors table) with junk
    section = draw(st.sampled_from(["torchkeep.tree", "torchkeep.tensors"]))
    tree = json.loads(meta[section])
    node = tree
    for _ in range(draw(st.integers(0, 4))):
        children = (
            list(node.items()) if isinstance(node, dict) else list(enumerate(node)) if isinstance(node, list) else []
        )
        children = [(k, v) for k, v in children if isinstance(v, (dict, list))]
        if not children:
            break
        _, node = draw(st.sampled_from(children))
    if isinstance(node, dict) and node:
        node[draw(st.sampled_from(sorted(node)))] = draw(json_values)
    elif isinstance(node, list) and node:
        node[draw(st.integers(0, len(node) - 1))] = draw(json_values)
    meta[section] = json.dumps(tree)
    return join(header, DATA)


def _touch(obj: Any) -> None:
    """Read every tensor's bytes: a bad offset that slipped through would fault here."""
    if isinstance(obj, torch.Tensor):
        if obj.numel():
            obj.detach().reshape(-1).view(torch.uint8).sum()
    elif isinstance(obj, dict):
        for v in obj.values():
            _touch(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _touch(v)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(
    max_examples=int(os.environ.get("TK_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(raw=mutated())
def test_only_torchkeep_errors_escape_load(fuzz_dir: Path, raw: bytes) -> None:
    path = fuzz_dir / "mutant.safetensors"
    path.write_bytes(raw)
    for kwargs in ({}, {"verify": False}):
        try:
            out = tk.load(path, **kwargs)
        except tk.TorchkeepError as exc:
            assert str(exc)  # every error says something
        else:
            _touch(out)
    # `torchkeep inspect` reads the same hostile header, and previews the tree without decoding it
    with contextlib.suppress(tk.TorchkeepError):
        json.dumps(describe(str(path)))
