"""Dynamic dimensions of an export: which input dims vary, their names and ranges, and the sizes verified.

Two ways to say which dimensions are dynamic, both through ``tk.export(dynamic_shapes=...)``:

* **torch.export's own spec**, passed through unchanged: a tuple (positional inputs) or a dict
  (by input name) whose entries are None, ``{dim: torch.export.Dim(...)}`` or a list with one
  ``Dim``/``Dim.AUTO``/None per dimension.
* **the simple form**, names instead of ``Dim`` objects: ``"batch,seq"`` (dim 0 is ``batch`` and
  dim 1 is ``seq`` in every batched input; ``_`` keeps a dim static, e.g. ``"batch,_,h,w"``), or
  per input ``{"input_ids": "batch,seq", "pixel_values": {0: "batch"}}``. Inputs that share a
  name share the dimension (``input_ids`` and ``attention_mask`` have the same length).

Without ``dynamic_shapes``, ``dynamic_batch=True`` makes dim 0 of every batched input the
dynamic ``batch``. The ranges start at ``[1, ∞)``; when torch.export proves a narrower one
(BERT's sequence cannot exceed ``max_position_embeddings``) it is adopted from torch.export's
suggested fix, recorded in ``export.json`` and used for verification.

Verification runs the artifact at several sizes of every dynamic dimension: batch 1, 3, 17 and
other dims 3, 17, 64 by default (``verify_batch_sizes=`` / ``verify_dims={"seq": [...]}``),
clipped to each range. Point ``i`` takes the ``i``-th value of every dimension (cycling), so
each value of each dimension is checked with a handful of runs rather than their product.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UsageError

__all__ = ["DEFAULT_VERIFY_BATCH", "DEFAULT_VERIFY_DIM", "DynamicDims", "Point"]

DEFAULT_VERIFY_BATCH = (1, 3, 17)
DEFAULT_VERIFY_DIM = (3, 17, 64)

#: One verification point: dim name → size.
Point = dict[str, int]

_FIX = re.compile(r"^\s*(\w+) = Dim\('(\w+)'(?:, min=(\d+))?(?:, max=(\d+))?\)", re.MULTILINE)
_SPECIALIZED = re.compile(r"^\s*(\w+) = (\d+)\s*$", re.MULTILINE)


def _is_dim_object(value: Any) -> bool:
    # torch.export.Dim(...) instances and the Dim.AUTO / Dim.DYNAMIC / Dim.STATIC hints
    return type(value).__module__.startswith("torch.export")


def _bad(message: str) -> UsageError:
    return UsageError(
        f"dynamic_shapes: {message}. Expected torch.export's spec, or names such as 'batch,seq' "
        "(for every batched input) or {'input_ids': 'batch,seq'} (per input); '_' keeps a dimension static"
    )


@dataclass
class DynamicDims:
    """Per input, its dynamic dimensions (dim → name); per name, the range and the user's ``Dim``.

    Example:
        >>> import torch
        >>> d = DynamicDims.parse("batch,seq", ["ids", "mask"], [torch.zeros(2, 5), torch.zeros(2, 5)], [True, True])
        >>> d.per_input, d.ranges["seq"]
        ([{0: 'batch', 1: 'seq'}, {0: 'batch', 1: 'seq'}], (1, None))
    """

    per_input: list[dict[int, str]]
    ranges: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    objects: dict[str, Any] = field(default_factory=dict)
    example: dict[str, int] = field(default_factory=dict)

    @classmethod
    def batch_only(cls, batched: Sequence[bool], tensors: Sequence[torch.Tensor]) -> DynamicDims:
        """Dim 0 of every batched input is the dynamic ``batch``."""
        dims = cls([{0: "batch"} if b else {} for b in batched])
        dims._finish(["x"] * len(tensors), tensors)
        return dims

    @classmethod
    def parse(
        cls, spec: Any, names: Sequence[str], tensors: Sequence[torch.Tensor], batched: Sequence[bool]
    ) -> DynamicDims:
        """Read ``dynamic_shapes`` (either form, see the module doc) for inputs ``names``.

        Raises:
            UsageError: an unknown input, a dim beyond an input's rank, a bad name, or sizes
                that disagree for one name.
        """
        dims = cls([{} for _ in names])
        if isinstance(spec, str) or (
            isinstance(spec, Sequence) and spec and all(isinstance(s, str) or s is None for s in spec)
        ):
            # one simple form for every batched input
            for i, b in enumerate(batched):
                if b:
                    dims._read_entry(i, names[i], tensors[i], spec, lenient=True)
            dims._finish(names, tensors)
            return dims
        if isinstance(spec, Mapping):
            unknown = [str(k) for k in spec if k not in names]
            if unknown:
                raise _bad(f"no input named {', '.join(map(repr, unknown))} (inputs: {', '.join(names)})")
            entries = [spec.get(n) for n in names]
        elif isinstance(spec, Sequence):
            if len(spec) != len(names):
                raise _bad(f"{len(spec)} entries for {len(names)} inputs ({', '.join(names)})")
            entries = list(spec)
        else:
            raise _bad(f"got a {type(spec).__name__}")
        for i, entry in enumerate(entries):
            dims._read_entry(i, names[i], tensors[i], entry, lenient=False)
        dims._finish(names, tensors)
        return dims

    def _read_entry(self, index: int, input_name: str, tensor: torch.Tensor, entry: Any, *, lenient: bool) -> None:
        if entry is None:
            return
        if isinstance(entry, str):
            entry = [p.strip() for p in entry.split(",")]
        if isinstance(entry, Mapping):
            items = list(entry.items())
        elif isinstance(entry, Sequence):
            if len(entry) > tensor.dim() and not lenient:
                raise _bad(f"{len(entry)} dimensions named for input '{input_name}' of shape {tuple(tensor.shape)}")
            items = list(enumerate(entry))[: tensor.dim()]
        else:
            raise _bad(f"input '{input_name}': got a {type(entry).__name__}")
        for dim, value in items:
            if not isinstance(dim, int) or isinstance(dim, bool) or not 0 <= dim < tensor.dim():
                raise _bad(f"input '{input_name}' of shape {tuple(tensor.shape)} has no dimension {dim!r}")
            self._read_dim(index, input_name, dim, value)

    def _read_dim(self, index: int, input_name: str, dim: int, value: Any) -> None:
        if value is None or value in ("", "_"):
            return
        if isinstance(value, str):
            if not value.isidentifier():
                raise _bad(f"dimension name {value!r} of input '{input_name}' is not an identifier")
            self.per_input[index][dim] = value
            return
        if _is_dim_object(value):
            name = getattr(value, "__name__", None)
            if not isinstance(name, str) or not name.isidentifier():  # Dim.AUTO and friends have no name
                name = f"{input_name}_{dim}"
            self.per_input[index][dim] = name
            self.objects[name] = value
            lo, hi = getattr(value, "min", 1), getattr(value, "max", None)
            self.ranges[name] = (
                int(lo) if isinstance(lo, int) else 1,
                int(hi) if isinstance(hi, int) and hi < 2**62 else None,
            )
            return
        raise _bad(f"input '{input_name}' dimension {dim}: got {value!r}")

    def _finish(self, names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
        for i, per in enumerate(self.per_input):
            for dim, name in per.items():
                size = int(tensors[i].shape[dim])
                if name in self.example and self.example[name] != size:
                    raise _bad(
                        f"'{name}' is {self.example[name]} in one input and {size} in input '{names[i]}' "
                        f"(dimension {dim}); inputs sharing a name must have the same size"
                    )
                self.example[name] = size
                self.ranges.setdefault(name, (1, None))

    @property
    def names(self) -> list[str]:
        """The dynamic dimension names, in order of first appearance."""
        return list(dict.fromkeys(n for per in self.per_input for n in per.values()))

    @property
    def batch_name(self) -> str | None:
        """The name of dim 0 of the first input when it is dynamic (the batch)."""
        return self.per_input[0].get(0) if self.per_input else None

    def torch_spec(self, input_names: Sequence[str], structure: str) -> Any:
        """``dynamic_shapes`` for ``torch.export``: the user's ``Dim`` objects, else new ones from the names."""
        if not self.names:
            return None
        made: dict[str, Any] = {}
        for name in self.names:
            if name in self.objects:
                made[name] = self.objects[name]
            else:
                lo, hi = self.ranges[name]
                made[name] = torch.export.Dim(name, min=lo) if hi is None else torch.export.Dim(name, min=lo, max=hi)
        specs = [{d: made[n] for d, n in per.items()} or None for per in self.per_input]
        if structure == "dict":
            return dict(zip(input_names, specs, strict=True))
        return tuple(specs)

    def refine(self, exc: BaseException) -> bool:
        """Adopt torch.export's suggested ranges for dims we named; True when one changed."""
        changed = False
        for match in _FIX.finditer(str(exc)):
            name = match.group(2)
            if name not in self.ranges or name in self.objects:
                continue  # the user's own Dim objects are theirs to change
            lo, hi = self.ranges[name]
            new = (int(match.group(3)) if match.group(3) else lo, int(match.group(4)) if match.group(4) else hi)
            if new != (lo, hi):
                self.ranges[name] = new
                changed = True
        return changed

    @staticmethod
    def specialized(exc: BaseException) -> list[str]:
        """Dims torch.export fixed to a constant (``seq = 5`` among its suggested fixes)."""
        text = str(exc)
        if "Suggested fixes" not in text:
            return []
        return [f"{m.group(1)}={m.group(2)}" for m in _SPECIALIZED.finditer(text.split("Suggested fixes", 1)[1])]

    def points(
        self, batch_sizes: Sequence[int] | None = None, verify_dims: Mapping[str, Sequence[int]] | None = None
    ) -> list[Point]:
        """The sizes to verify at (see the module doc); ``[{}]`` when nothing is dynamic."""
        values: dict[str, list[int]] = {}
        for name in self.names:
            lo, hi = self.ranges[name]
            if verify_dims and name in verify_dims:
                wanted: Sequence[int] = verify_dims[name]
            elif name == self.batch_name:
                wanted = batch_sizes or DEFAULT_VERIFY_BATCH
            else:
                wanted = DEFAULT_VERIFY_DIM
            inside = [v for v in wanted if v >= lo and (hi is None or v <= hi)]
            values[name] = inside or [lo, *([hi] if hi is not None and hi != lo else [])]
        if not values:
            return [{}]
        count = max(len(v) for v in values.values())
        cycles = {n: itertools.cycle(v) for n, v in values.items()}
        return [{n: next(c) for n, c in cycles.items()} for _ in range(count)]

    def to_json(self) -> dict[str, Any]:
        """``export.json``'s ``dynamic_dims``: name → ``{"min", "max", "example"}``."""
        return {
            n: {"min": self.ranges[n][0], "max": self.ranges[n][1], "example": self.example.get(n)} for n in self.names
        }
