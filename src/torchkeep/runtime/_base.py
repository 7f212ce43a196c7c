"""The seam between artifacts and their users: :class:`Predictor` and :class:`TensorSpec`.

Every backend (eager, pt2, aoti, torchscript, onnxruntime, tensorrt) is one small module that
returns an object satisfying :class:`Predictor`. Benchmarks and the server use only this
Protocol, never a backend directly.

Calling convention (shared by all backends):

* ``predictor(*tensors)`` for positional inputs, or ``predictor(**{name: tensor})`` /
  ``predictor({name: tensor})`` for models with named (dict) inputs. Tensors may be torch
  tensors, numpy arrays or nested lists; outputs come back as the same kind.
* Outputs mirror the model: a single tensor, a tuple of tensors, or a dict name → tensor.
* The batch dimension is dim 0. ``TensorSpec.shape`` uses ``None`` for dynamic dims.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["Predictor", "TensorSpec"]


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None for a dynamic dim) and dtype (torch name, e.g. ``"float32"``) of a tensor.

    ``dims`` names the dynamic dimensions (``("batch", "seq", None)``; None for a static one)
    when the export knew them: inputs that share a name must agree on that size. It takes no
    part in equality, so specs from an artifact and from ``export.json`` compare alike.

    Example:
        >>> spec = TensorSpec("x", (None, 10), "float32")
        >>> TensorSpec.from_json(spec.to_json()) == spec
        True
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    dims: tuple[str | None, ...] | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (``export.json`` and ``/v1/metadata`` use this form)."""
        out: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.dims is not None:
            out["dims"] = list(self.dims)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorSpec:
        """Inverse of :meth:`to_json`."""
        shape = tuple(None if d is None else int(d) for d in data["shape"])
        raw = data.get("dims")
        dims = None
        if isinstance(raw, list) and len(raw) == len(shape):
            dims = tuple(str(d) if isinstance(d, str) and d else None for d in raw)
        return cls(str(data["name"]), shape, str(data["dtype"]), dims)


@runtime_checkable
class Predictor(Protocol):
    """One loaded artifact, ready to run inference.

    Attributes:
        backend: ``"eager"``, ``"pt2"``, ``"aoti"``, ``"torchscript"``, ``"onnxruntime"`` or
            ``"tensorrt"``.
        inputs: input specs, in positional order.
        outputs: output specs, in the order the model returns them.
        device: where inference runs (``"cpu"``, ``"cuda:0"``).
    """

    backend: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    device: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run inference (under ``torch.inference_mode()`` or the runtime's equivalent)."""
