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

from ..errors import CorruptCheckpointError

__all__ = ["aligned", "check_rng_state", "rng_state", "set_rng_state"]

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


#: A generator state is a few KiB (MT19937: 5056 bytes; CUDA Philox: 16); more is not one.
_MAX_GENERATOR_BYTES = 1 << 20


def _bad_rng(msg: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(msg, reason="bad RNG state")


def check_rng_state(state: Any) -> dict[str, Any]:
    """Validate a saved RNG state completely, without touching any generator; return it ready to apply.

    Each state is tried on a scratch generator of its kind, so a malformed one is found before
    anything (the model, the optimizer, the global generators) has been changed.

    Raises:
        CorruptCheckpointError: naming the generator whose state is malformed.

    Example:
        >>> sorted(check_rng_state(rng_state()))[:3]
        ['numpy', 'python', 'torch']
    """
    if not isinstance(state, Mapping):
        raise _bad_rng(f"the RNG state is a {type(state).__name__}, not a dict of generator states")
    out: dict[str, Any] = {}
    if "python" in state:
        try:
            version, internal, gauss = state["python"]
            if not isinstance(internal, (list, tuple)) or len(internal) > 1000:
                raise TypeError("the internal state must be a short sequence of ints")
            python = (version, tuple(internal), gauss)
            random.Random().setstate(python)
        except (TypeError, ValueError, OverflowError) as exc:
            raise _bad_rng(f"the Python RNG state is malformed ({exc})") from None
        out["python"] = python
    if "numpy" in state:
        try:
            np.random.RandomState().set_state(state["numpy"])
        except (TypeError, ValueError, KeyError, IndexError, OverflowError) as exc:
            raise _bad_rng(f"the NumPy RNG state is malformed ({exc})") from None
        out["numpy"] = state["numpy"]
    if "torch" in state:
        out["torch"] = _generator_state(state["torch"], "torch")
        try:
            torch.Generator().set_state(out["torch"])
        except RuntimeError as exc:
            raise _bad_rng(f"the torch CPU RNG state is malformed ({exc})") from None
    if "cuda" in state:
        cuda = state["cuda"]
        if not isinstance(cuda, (list, tuple)) or len(cuda) > 1024:
            raise _bad_rng(f"the CUDA RNG states are a {type(cuda).__name__}, not a list of tensors")
        out["cuda"] = [_generator_state(s, f"cuda:{i}") for i, s in enumerate(cuda)]
    return out


def _generator_state(t: Any, which: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 1:
        found = f"{t.dtype} tensor of shape {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise _bad_rng(f"the {which} RNG state must be a 1-d uint8 tensor, got a {found}")
    if t.numel() > _MAX_GENERATOR_BYTES:
        raise _bad_rng(f"the {which} RNG state has {t.numel()} bytes, more than any generator's state")
    return t.to("cpu").contiguous()


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`check_rng_state` returned (CUDA states only for devices this machine has).

    Example:
        >>> set_rng_state(check_rng_state(rng_state()))
    """
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
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
