"""Example inputs recorded in a model file: ``save_model(example_inputs=...)`` and their replay.

Only shapes, dtypes and value ranges are stored (never the values), so ``torchkeep export``,
``serve`` and ``bench`` can make inputs of the right form for a file without ``--input-shape``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import CorruptCheckpointError, UsageError
from ..io import _format

__all__ = ["EXAMPLES_SECTION", "describe_examples", "example_inputs_of"]

#: header section that describes the example inputs given to ``save_model(example_inputs=...)``.
EXAMPLES_SECTION = "examples"


def describe_examples(examples: Any) -> dict[str, Any]:
    """The header section for ``example_inputs``: structure, and per input name, shape, dtype, range.

    Raises:
        UsageError: ``examples`` is not a tensor, a tuple/list of tensors or a dict name → tensor.

    Example:
        >>> describe_examples(torch.zeros(2, 4))["inputs"][0]["shape"]
        [2, 4]
    """
    if isinstance(examples, torch.Tensor):
        structure, items = "positional", [("input", examples)]
    elif isinstance(examples, Mapping):
        structure, items = "dict", list(examples.items())
    elif isinstance(examples, (tuple, list)):
        structure, items = "positional", [(f"input_{i}", t) for i, t in enumerate(examples)]
    else:
        items = []
    if not items or not all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in items):
        raise UsageError(
            f"example_inputs is a {type(examples).__name__}; expected a tensor, a tuple/list of tensors or a "
            "dict name → tensor (the form tk.export takes)"
        )
    inputs = []
    for name, t in items:
        t = t.detach()
        info: dict[str, Any] = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        if t.numel() and t.dtype != torch.bool and not t.dtype.is_complex:
            wide = t.double()
            info["min"], info["max"] = float(wide.min()), float(wide.max())
            if t.dtype.is_floating_point:
                info["mean"], info["std"] = float(wide.mean()), float(wide.std()) if t.numel() > 1 else 1.0
        inputs.append(info)
    return {"structure": structure, "inputs": inputs}


def example_inputs_of(path: str | os.PathLike[str], *, seed: int = 0) -> Any:
    """Example inputs like the ones recorded by ``save_model(example_inputs=...)``, or None.

    Same shapes and dtypes, fresh values within the recorded ranges (integer inputs stay valid
    token ids; bool inputs are all True): a tuple of tensors, or a dict for named inputs.

    Example:
        >>> import torch, torchkeep as tk, tempfile, os
        >>> @tk.register(name="doc-examples")
        ... class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = torch.nn.Linear(4, 1)
        >>> path = os.path.join(tempfile.mkdtemp(), "net.safetensors")
        >>> tk.save_model(Net(), path, example_inputs=torch.zeros(2, 4))
        >>> [tuple(t.shape) for t in example_inputs_of(path)]
        [(2, 4)]
    """
    src = os.fspath(path)
    raw = _format.open_file(src).section(EXAMPLES_SECTION)
    if raw is None:
        return None
    try:
        gen = torch.Generator().manual_seed(seed)
        made: list[tuple[str, torch.Tensor]] = []
        for info in raw["inputs"]:
            dtype = getattr(torch, str(info["dtype"]))
            shape = tuple(int(d) for d in info["shape"])
            if not isinstance(dtype, torch.dtype) or any(d < 0 for d in shape):
                raise ValueError(f"bad dtype or shape {info!r}")
            if dtype == torch.bool:
                t = torch.ones(shape, dtype=dtype)
            elif dtype.is_floating_point:
                std, mean = float(info.get("std", 1.0)), float(info.get("mean", 0.0))
                t = (torch.randn(shape, generator=gen, dtype=torch.float64) * std + mean).to(dtype)
            else:
                lo, hi = int(info.get("min", 0)), int(info.get("max", 1))
                t = torch.randint(lo, max(hi, lo) + 1, shape, generator=gen, dtype=torch.int64).to(dtype)
            made.append((str(info["name"]), t))
        structure = raw["structure"]
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise CorruptCheckpointError(f"{src}: the {EXAMPLES_SECTION} section is malformed ({exc})", path=src) from None
    return dict(made) if structure == "dict" else tuple(t for _, t in made)
