"""How live state meets the file: RNG capture, values the codec lacks, tensor alignment.

Private helpers of :mod:`torchkeep.checkpoint._checkpoint`, kept apart so that module stays about objects
and checkpoints.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["aligned", "rng_state", "set_rng_state"]

_ALIGNMENT = 64


# -- values torch keeps in state dicts that the codec does not store as such ------------------
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


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its data is 64-byte aligned, else an aligned copy.

    The file format puts every tensor whose size is a multiple of 64 bytes on a 64-byte boundary;
    the others (and tensors of files written by other tools) may sit at 4- or 8-byte boundaries. Vectorized
    CPU kernels (dot products, reductions) split their work by alignment, so the same values at a
    different alignment can round differently — enough to break bit-exact resume (LBFGS shows
    it). Fresh allocations are 64-byte aligned, as in the run that saved the checkpoint.
    """
    if t.device.type == "cpu" and t.numel() and t.data_ptr() % _ALIGNMENT:
        return t.clone()
    return t
