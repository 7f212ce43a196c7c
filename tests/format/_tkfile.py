"""Helpers for tests that take torchkeep files apart and put (damaged) ones back together.

Also defines the golden object written to ``tests/data/format-v1/`` (see ``make_data.py``): it
must never change, since its bytes pin format v1.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1] / "data"
GOLDEN_V1 = DATA / "format-v1" / "golden.safetensors"
#: the same object written before the writer put 64-byte-multiple tensors first (still format v1)
GOLDEN_V1_PACKED = DATA / "format-v1" / "golden-packed-layout.safetensors"
BAD = DATA / "bad"


def split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """(parsed header, data section) of a valid file."""
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def join(header: dict[str, Any] | str | bytes, data: bytes) -> bytes:
    """A file from a header (dict, or raw JSON text/bytes used as is) and a data section."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    text = header.encode("utf-8") if isinstance(header, str) else header
    text += b" " * ((-(8 + len(text))) % 8)
    return struct.pack("<Q", len(text)) + text + data


def edit_meta(raw: bytes, key: str, fn: Any) -> bytes:
    """Rewrite the JSON string ``__metadata__[key]`` with ``fn(parsed) -> new value``."""
    header, data = split(raw)
    meta = header["__metadata__"]
    meta[key] = json.dumps(fn(json.loads(meta[key])), separators=(",", ":"))
    return join(header, data)


def edit_entry(raw: bytes, name: str, **fields: Any) -> bytes:
    """Replace fields of one tensor's safetensors header entry."""
    header, data = split(raw)
    header[name].update(fields)
    return join(header, data)


# -- the golden object (format v1); frozen: changing it changes the golden bytes --------------


@dataclasses.dataclass
class GoldenConfig:
    width: int
    act: str = "gelu"
    dims: tuple[int, ...] = (1, 2)


class GoldenColor(enum.Enum):
    RED = 1
    BLUE = 2


def golden_object() -> dict[str, Any]:
    """A small tree exercising every node type and tensor feature of format v1 (deterministic)."""
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 8
    param = torch.nn.Parameter(torch.linspace(-1, 1, 5))
    return {
        "model": OrderedDict([("fc.weight", w), ("fc.bias", torch.zeros(3)), ("head.weight", w)]),  # tied
        "views": {"wT": w.T, "row": w[1]},
        "param": param,
        "grad": torch.ones(2, requires_grad=True),
        "dtypes": {
            "bf16": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
            "f16": torch.tensor([0.25], dtype=torch.float16),
            "f64": torch.tensor([math.pi], dtype=torch.float64),
            "i64": torch.tensor([-(2**40), 7]),
            "u8": torch.arange(4, dtype=torch.uint8),
            "bool": torch.tensor([True, False, True]),
            "c128": torch.tensor([1 + 2j], dtype=torch.complex128),
            "f8": torch.tensor([0.5, 2.0]).to(torch.float8_e4m3fn),
        },
        "scalar": torch.tensor(3.0),
        "empty": torch.empty(0, 4),
        "numpy": {"array": np.arange(6, dtype=np.int16).reshape(2, 3), "f32": np.float32(1.25)},
        "values": [None, True, 3, -(2**70), 0.1, math.inf, -math.inf, "héllo", b"\x00\xffbytes"],
        "nan": math.nan,
        "tuple": (1, (2.5, "x"), []),
        "keys": {1: "int", 2.5: "float", None: "none", False: "bool", (1, "a"): "tuple"},
        "torch": [torch.bfloat16, torch.device("cuda", 1), torch.Size([2, 3])],
        "config": GoldenConfig(width=64),
        "color": GoldenColor.BLUE,
    }


GOLDEN_METADATA = {"author": "torchkeep tests"}


def same(a: Any, b: Any) -> bool:
    """Exact equality: same types all the way down, tensors bit-identical, nan == nan."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and a.requires_grad == b.requires_grad
            and torch.equal(_bits(a), _bits(b))
        )
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict):
        return (
            len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True)) and all(same(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return bool(a == b)


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().contiguous().reshape(-1)
    return t.view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
