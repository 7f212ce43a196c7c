"""How live state meets the file: RNG capture, values the codec lacks, tensor alignment.

Private helpers of :mod:`torchkeep._checkpoint`, kept apart so that module stays about objects
and checkpoints.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["PAD_KEY", "aligned", "alignment_order", "pack", "rng_state", "set_rng_state", "unpack"]

_ALIGNMENT = 64

# -- values torch keeps in state dicts that the codec does not store as such ------------------
# MultiStepLR keeps its milestones in a collections.Counter, and its get_lr() relies on Counter
# semantics (missing keys count 0), so a plain dict would break it after a load. Counters are
# stored as {"__counter__": {...}} and turned back into Counters on restore.
_COUNTER = "__counter__"


def pack(value: Any) -> Any:
    """A copy of a state tree in which Counters are tagged dicts the codec can store."""
    if isinstance(value, Counter):
        return {_COUNTER: {k: pack(v) for k, v in value.items()}}
    if type(value) in (dict, OrderedDict):
        return type(value)((k, pack(v)) for k, v in value.items())
    if type(value) is list:
        return [pack(v) for v in value]
    if type(value) is tuple:
        return tuple(pack(v) for v in value)
    return value


def unpack(value: Any) -> Any:
    """Undo :func:`pack` on a decoded state tree."""
    if isinstance(value, dict):
        if len(value) == 1 and _COUNTER in value and isinstance(value[_COUNTER], dict):
            return Counter(value[_COUNTER])
        return type(value)((k, unpack(v)) for k, v in value.items())
    if type(value) is list:
        return [unpack(v) for v in value]
    if type(value) is tuple:
        return tuple(unpack(v) for v in value)
    return value


def rng_state() -> dict[str, Any]:
    """Python's, NumPy's (global), torch's CPU and every CUDA device's generator states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=True),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only for devices this machine has)."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(state["torch"].to("cpu", torch.uint8).contiguous())
    if "cuda" in state and torch.cuda.is_available():
        saved = [s.to("cpu", torch.uint8).contiguous() for s in state["cuda"]]
        for i, s in enumerate(saved[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


PAD_KEY = "__pad__"
_PAD_DTYPES = {16: torch.complex128, 8: torch.int64, 4: torch.int32, 2: torch.int16}


def alignment_order(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Order tensors (and add small padding tensors) so that large tensors load 64-byte aligned.

    The format lays tensors out packed, grouped by element size (largest first) in the order
    given. Within each group, tensors whose size is a multiple of 64 bytes come first, then the
    odd ones (step counters, scalars), then a zero tensor ``__pad__/<itemsize>`` that rounds the
    group up to 64 bytes. Every large tensor then starts 64-byte aligned in the mapped file and
    loads without a copy (see :func:`aligned`). The padding is referenced by nothing.
    """
    groups: dict[int, list[tuple[str, torch.Tensor]]] = {}
    for name, t in tensors.items():
        groups.setdefault(t.element_size(), []).append((name, t))
    out: dict[str, torch.Tensor] = {}
    for size, members in groups.items():
        members.sort(key=lambda item: (item[1].numel() * size) % _ALIGNMENT != 0)
        out.update(members)
        total = sum(t.numel() for _, t in members) * size
        pad_dtype = _PAD_DTYPES.get(size)
        if total % _ALIGNMENT and pad_dtype is not None:
            out[f"{PAD_KEY}/{size}"] = torch.zeros((_ALIGNMENT - total % _ALIGNMENT) // size, dtype=pad_dtype)
    return out


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its data is 64-byte aligned, else an aligned copy.

    Tensors mapped from the file are packed, so most sit at 4- or 8-byte boundaries. Vectorized
    CPU kernels (dot products, reductions) split their work by alignment, so the same values at a
    different alignment can round differently — enough to break bit-exact resume (LBFGS shows
    it). Fresh allocations are 64-byte aligned, as in the run that saved the checkpoint.
    """
    if t.device.type == "cpu" and t.numel() and t.data_ptr() % _ALIGNMENT:
        return t.clone()
    return t
