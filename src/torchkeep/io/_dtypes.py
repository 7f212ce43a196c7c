"""How tensors map onto safetensors entries (dtype tables) and onto devices (map_location).

Kept apart from :mod:`torchkeep.io._format`, which stays about bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Union

import torch

__all__ = [
    "FROM_ST",
    "LOGICAL_DTYPES",
    "ST_DTYPES",
    "U8_DTYPES",
    "MapLocation",
    "dtype_name",
    "logical_dtype",
    "place",
    "resolve_device",
]

MapLocation = Union[None, str, torch.device, Mapping[str, Union[str, torch.device]], Callable[[torch.Tensor, str], Any]]

# dtypes safetensors names; anything else is stored as raw U8 bytes with its logical dtype recorded.
ST_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e4m3fnuz: "F8_E4M3FNUZ",
    torch.float8_e5m2: "F8_E5M2",
    torch.float8_e5m2fnuz: "F8_E5M2FNUZ",
    torch.complex64: "C64",
    torch.uint64: "U64",
    torch.uint32: "U32",
    torch.uint16: "U16",
}
FROM_ST = {v: k for k, v in ST_DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """The dtype's name without the ``torch.`` prefix.

    Example:
        >>> dtype_name(torch.bfloat16)
        'bfloat16'
    """
    return str(dtype).removeprefix("torch.")


# dtypes stored as U8 bytes plus a logical dtype. An allowlist: a file may only name dtypes whose
# tensors can be built over raw bytes and used (quantized and sub-byte dtypes cannot).
U8_DTYPES: dict[str, torch.dtype] = {
    name: dt
    for name, dt in (
        ("complex128", torch.complex128),
        ("complex32", torch.complex32),
        ("float8_e8m0fnu", getattr(torch, "float8_e8m0fnu", None)),
        ("float4_e2m1fn_x2", getattr(torch, "float4_e2m1fn_x2", None)),
        ("bits8", torch.bits8),
        ("bits16", torch.bits16),
        ("bits1x8", torch.bits1x8),
        ("bits2x4", torch.bits2x4),
        ("bits4x2", torch.bits4x2),
    )
    if isinstance(dt, torch.dtype)
}
LOGICAL_DTYPES = {**{dtype_name(dt): dt for dt in ST_DTYPES}, **U8_DTYPES}


def logical_dtype(name: str) -> torch.dtype:
    """The dtype a file's ``torchkeep.tensors`` entry names; only allowlisted names resolve.

    Example:
        >>> logical_dtype("complex128")
        torch.complex128
    """
    dt = LOGICAL_DTYPES.get(name)
    if dt is None:
        raise ValueError(f"unknown dtype {name!r}")
    return dt


def resolve_device(map_location: MapLocation, original: str) -> torch.device | None:
    """Target device for a tensor saved on ``original``; None means "ask the callable".

    Tensors go to the CPU unless ``map_location`` says otherwise, so a file saved on a GPU loads
    on a machine without one. A dict maps original device strings (``{"cuda:1": "cuda:0"}``);
    devices it does not name go to the CPU.

    Example:
        >>> resolve_device({"cuda:1": "cuda:0"}, "cuda:1")
        device(type='cuda', index=0)
    """
    if map_location is None:
        return torch.device("cpu")
    if isinstance(map_location, (str, torch.device)):
        return torch.device(map_location)
    if isinstance(map_location, Mapping):
        target = map_location.get(original)
        return torch.device(target) if target is not None else torch.device("cpu")
    if callable(map_location):
        return None
    raise TypeError(
        f"map_location must be None, a device string, a torch.device, a dict or a callable; "
        f"got {type(map_location).__name__}"
    )


def place(t: torch.Tensor, original: str, map_location: MapLocation) -> torch.Tensor:
    """Move a loaded tensor where ``map_location`` says (see :func:`resolve_device`)."""
    device = resolve_device(map_location, original)
    if device is None:
        assert callable(map_location)
        out = map_location(t, original)
        if isinstance(out, torch.UntypedStorage):  # torch.load-style callables return storages
            out = torch.empty(0, dtype=t.dtype, device=out.device).set_(out).view(t.shape)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"map_location callable returned {type(out).__name__}, expected a tensor")
        return out
    return t if device.type == "cpu" and t.device.type == "cpu" else t.to(device)
