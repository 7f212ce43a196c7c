"""Turn what a caller passes to a predictor into checked tensors, and outputs back into that kind.

Every backend shares this, so every backend rejects the same bad input with the same message,
before the runtime sees it (a wrong shape that reaches ONNX Runtime or TensorRT produces a
message about internal node names, or worse, a crash).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..errors import PredictorInputError
from ..io._codec import DTYPES_BY_NAME
from ..io._dtypes import dtype_name
from ._base import TensorSpec

__all__ = [
    "Bound",
    "InputKind",
    "bind_inputs",
    "convert_outputs",
    "example_inputs",
    "format_spec",
    "structure_outputs",
    "torch_dtype",
]

InputKind = Literal["torch", "numpy", "list"]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a spec dtype name such as ``"float32"``."""
    try:
        return _DTYPES[name]
    except KeyError:
        # A table, never getattr(torch, name): spec names come from files (export.json), and
        # torch imports submodules for some names ("_inductor", "onnx").
        dtype = DTYPES_BY_NAME.get(name) if isinstance(name, str) else None
        if dtype is not None:
            return dtype
        raise PredictorInputError(
            f"unknown dtype {name!r} in a tensor spec; expected one of {sorted(_DTYPES)}"
        ) from None


def format_spec(spec: TensorSpec) -> str:
    """``x: float32[batch, 10]`` — how error messages and tables show a spec."""
    names = spec.dims or (None,) * len(spec.shape)
    dims = ", ".join(
        str(d) if d is not None else (n or ("batch" if i == 0 else "?"))
        for i, (d, n) in enumerate(zip(spec.shape, names, strict=False))
    )
    return f"{spec.name}: {spec.dtype}[{dims}]"


@dataclass
class Bound:
    """Inputs after binding and checking.

    Attributes:
        tensors: one tensor per input, in spec order (or call order when specs are unknown).
        names: input names when the caller passed them by name (or specs name them), else None.
        kind: what the caller passed, so outputs come back the same way.
        device: the device of the caller's first torch tensor (outputs go back there).
    """

    tensors: list[torch.Tensor]
    names: list[str] | None
    kind: InputKind
    device: torch.device


def _kind_of(value: Any) -> InputKind:
    if isinstance(value, torch.Tensor):
        return "torch"
    if isinstance(value, np.ndarray | np.generic):
        return "numpy"
    return "list"


def _to_tensor(value: Any, spec: TensorSpec | None, label: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray | np.generic):
        arr = np.asarray(value)
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise PredictorInputError(f"{label}: a numpy array of dtype {arr.dtype} is not a tensor; expected numbers")
        # torch.from_numpy shares memory but cannot take negative strides.
        return torch.from_numpy(np.ascontiguousarray(arr))
    try:
        tensor = torch.tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise PredictorInputError(
            f"{label}: could not make a tensor from a {type(value).__name__} ({exc}); expected a torch tensor, "
            "a numpy array or a rectangular nested list of numbers"
        ) from None
    if spec is None:
        return tensor
    want = torch_dtype(spec.dtype)
    # Lists carry no dtype of their own: take the spec's, unless that would silently truncate.
    if tensor.dtype.is_floating_point and not (want.is_floating_point or want.is_complex):
        raise PredictorInputError(
            f"{label}: got fractional numbers but the model expects {spec.dtype} ({format_spec(spec)}); "
            "pass whole numbers or a tensor of that dtype"
        )
    return tensor.to(want)


def _check(tensor: torch.Tensor, spec: TensorSpec) -> None:
    got = f"got {dtype_name(tensor.dtype)}{list(tensor.shape)}"
    expected = f"expected {format_spec(spec)}"
    if dtype_name(tensor.dtype) != spec.dtype:
        raise PredictorInputError(
            f"input '{spec.name}' has dtype {dtype_name(tensor.dtype)}, {expected}; {got}. "
            f"Convert it first, e.g. x.to(torch.{spec.dtype}) or x.astype(numpy.{spec.dtype})"
        )
    if tensor.dim() != len(spec.shape):
        raise PredictorInputError(
            f"input '{spec.name}' has {tensor.dim()} dimensions, {expected} ({len(spec.shape)} dimensions); {got}. "
            "A single example still needs its batch dimension: add one with x[None] / x.unsqueeze(0)"
            if tensor.dim() + 1 == len(spec.shape)
            else f"input '{spec.name}' has {tensor.dim()} dimensions, {expected} ({len(spec.shape)} dimensions); {got}"
        )
    for i, (have, want) in enumerate(zip(tensor.shape, spec.shape, strict=True)):
        if want is not None and have != want:
            raise PredictorInputError(f"input '{spec.name}' has size {have} in dimension {i}, {expected}; {got}")


def _check_shared_dims(specs: Sequence[TensorSpec], tensors: Sequence[torch.Tensor]) -> None:
    # A named dynamic dimension is one size across inputs (input_ids and attention_mask share
    # "seq"); the artifact would fail on a mismatch with a far less readable message.
    seen: dict[str, tuple[int, str]] = {}
    for spec, tensor in zip(specs, tensors, strict=True):
        for i, name in enumerate(spec.dims or ()):
            if name is None or i >= tensor.dim():
                continue
            size = int(tensor.shape[i])
            if name in seen and seen[name][0] != size:
                first, where = seen[name]
                raise PredictorInputError(
                    f"input '{spec.name}' has {name}={size} in dimension {i}, but {where} has {name}={first}; "
                    f"inputs that share the dynamic dimension '{name}' must agree on its size"
                )
            seen.setdefault(name, (size, f"input '{spec.name}'"))


def bind_inputs(specs: Sequence[TensorSpec], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Bound:
    """Match call arguments to ``specs``, convert them to tensors and check them.

    Accepts ``(*tensors)``, ``(**{name: tensor})`` or ``({name: tensor},)``. With empty ``specs``
    (unknown for this artifact), inputs are converted but not checked.

    Raises:
        PredictorInputError: a missing, extra or unnamed input, a dtype, rank or static dimension
            that differs from the spec; the message shows the spec.

    Example:
        >>> b = bind_inputs([TensorSpec("x", (None, 2), "float32")], ([[1.0, 2.0]],), {})
        >>> b.kind, tuple(b.tensors[0].shape)
        ('list', (1, 2))
    """
    expected = ", ".join(format_spec(s) for s in specs) or "unknown"
    if kwargs and args:
        raise PredictorInputError(f"pass inputs either by position or by name, not both; expected ({expected})")
    mapping: Mapping[str, Any] | None = None
    names: list[str] | None
    if kwargs:
        mapping = kwargs
    elif len(args) == 1 and isinstance(args[0], Mapping):
        mapping = args[0]
    if mapping is not None:
        if specs:
            names = [s.name for s in specs]
            missing = [n for n in names if n not in mapping]
            extra = [str(n) for n in mapping if n not in names]
            if missing or extra:
                parts = []
                if missing:
                    parts.append(f"missing input(s) {missing}")
                if extra:
                    parts.append(f"unexpected input(s) {extra}")
                raise PredictorInputError(f"{' and '.join(parts)}; expected inputs ({expected})")
            values = [mapping[n] for n in names]
        else:
            names = [str(n) for n in mapping]
            values = list(mapping.values())
    else:
        values = list(args)
        names = [s.name for s in specs] if specs else None
        if specs and len(values) != len(specs):
            raise PredictorInputError(
                f"got {len(values)} positional input(s), expected {len(specs)}: ({expected}); "
                "pass them in that order or by name"
            )
    if not values:
        raise PredictorInputError(f"no inputs given; expected ({expected})")
    kind = _kind_of(values[0])
    tensors: list[torch.Tensor] = []
    for i, value in enumerate(values):
        spec = specs[i] if specs else None
        label = f"input '{spec.name}'" if spec else f"input {i}"
        tensor = _to_tensor(value, spec, label)
        if spec is not None:
            _check(tensor, spec)
        tensors.append(tensor)
    if specs:
        _check_shared_dims(specs, tensors)
    device = next((v.device for v in values if isinstance(v, torch.Tensor)), torch.device("cpu"))
    return Bound(tensors=tensors, names=names, kind=kind, device=device)


def structure_outputs(flat: Sequence[torch.Tensor], specs: Sequence[TensorSpec], structure: str | None) -> Any:
    """Rebuild the model's output structure from a flat list (ONNX Runtime, TensorRT return lists)."""
    if structure == "dict" and len(specs) == len(flat):
        return {s.name: t for s, t in zip(specs, flat, strict=True)}
    if structure == "tuple" or (structure is None and len(flat) != 1):
        return tuple(flat)
    return flat[0]


def convert_outputs(value: Any, kind: InputKind, device: torch.device) -> Any:
    """Map a pytree of torch tensors to ``kind`` (torch on ``device``, numpy, or nested lists)."""
    if isinstance(value, torch.Tensor):
        if kind == "torch":
            return value if value.device == device else value.to(device)
        cpu = value.detach().cpu()
        return cpu.numpy() if kind == "numpy" else cpu.tolist()
    if isinstance(value, dict):
        return {k: convert_outputs(v, kind, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [convert_outputs(v, kind, device) for v in value]
        return type(value)(items) if type(value) in (list, tuple) else items
    return value


#: the size a dynamic dimension other than the batch gets in made-up inputs (a short sequence).
DEFAULT_DYNAMIC_SIZE = 16


def example_inputs(
    specs: Sequence[TensorSpec],
    batch_size: int = 1,
    *,
    seed: int = 0,
    sizes: Mapping[str, int] | None = None,
) -> list[torch.Tensor]:
    """Random tensors that fit ``specs``, for warm-up and benchmarks.

    A dynamic dim 0 takes ``batch_size``; another dynamic dim takes ``sizes[its name]``, else
    :data:`DEFAULT_DYNAMIC_SIZE`. Integer inputs get small non-negative values (valid token
    ids); bool inputs are all True (a valid attention mask).

    Example:
        >>> spec = TensorSpec("ids", (None, None), "int64", ("batch", "seq"))
        >>> [tuple(t.shape) for t in example_inputs([spec], 4, sizes={"seq": 7})]
        [(4, 7)]
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for spec in specs:
        names = spec.dims or (None,) * len(spec.shape)
        shape = [
            d if d is not None else batch_size if i == 0 else (sizes or {}).get(names[i] or "", DEFAULT_DYNAMIC_SIZE)
            for i, d in enumerate(spec.shape)
        ]
        dtype = torch_dtype(spec.dtype)
        if dtype == torch.bool:
            out.append(torch.ones(shape, dtype=dtype))
        elif dtype.is_floating_point:
            out.append(torch.randn(shape, generator=gen).to(dtype))
        else:
            out.append(torch.randint(0, 2, shape, generator=gen).to(dtype))
    return out
