"""What every backend shares: binding and checking inputs, inference mode, threads, warm-up."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import PredictorError, UsageError
from ._base import TensorSpec
from ._inputs import Bound, bind_inputs, convert_outputs, example_inputs, format_spec

__all__ = ["BasePredictor", "fill_missing", "normalize_device"]

logger = logging.getLogger(__name__)


def normalize_device(device: str | torch.device) -> str:
    """``"cuda"`` → ``"cuda:0"``; refuses a CUDA device on a machine without one."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PredictorError(f"device {str(device)!r} asked for, but CUDA is not available here; use device='cpu'")
        return f"cuda:{dev.index if dev.index is not None else torch.cuda.current_device()}"
    if dev.type != "cpu":
        raise UsageError(f"device {str(device)!r} is not supported; expected 'cpu' or 'cuda[:N]'", argument="device")
    return "cpu"


def fill_missing(kwargs: dict[str, Any], **values: Any) -> None:
    """Set ``kwargs[key] = value`` where the caller (export.json) gave nothing or an empty value."""
    for key, value in values.items():
        if not kwargs.get(key):
            kwargs[key] = value


class BasePredictor:
    """Shared :class:`~torchkeep.runtime.Predictor` behaviour; a backend implements :meth:`_run`.

    Attributes:
        backend: the backend name.
        inputs: input specs (empty when neither export.json nor the artifact tells them).
        outputs: output specs (empty when unknown).
        device: ``"cpu"`` or ``"cuda:N"``.
        path: the artifact file, or None for an in-memory model.
        threads: intra-op threads used for inference (None: the runtime's default).

    Example:
        >>> import torch, torchkeep as tk
        >>> p = tk.load_predictor(torch.nn.Linear(3, 1))
        >>> p(torch.zeros(2, 3)).shape
        torch.Size([2, 1])
    """

    backend: str = ""

    def __init__(
        self,
        *,
        inputs: Sequence[TensorSpec] = (),
        outputs: Sequence[TensorSpec] = (),
        device: str = "cpu",
        path: str | None = None,
        threads: int | None = None,
        input_structure: str = "positional",
        output_structure: str | None = None,
    ) -> None:
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise UsageError(
                f"threads={threads!r}: expected a positive int or None (the runtime's default)", argument="threads"
            )
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.device = device
        self.path = path
        self.threads = threads
        self.input_structure = input_structure
        self.output_structure = output_structure

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Check the inputs against :attr:`inputs`, run the model, return outputs of the inputs' kind."""
        bound = bind_inputs(self.inputs, args, kwargs)
        if (
            self.threads is not None
            and not self.backend.startswith("onnxruntime")
            and torch.get_num_threads() != self.threads
        ):
            # torch's thread pool is per process; ONNX Runtime sets its own per session.
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            raw = self._run(bound)
        return convert_outputs(raw, bound.kind, bound.device)

    def _run(self, bound: Bound) -> Any:
        raise NotImplementedError  # pragma: no cover

    def _call_module(self, module: Any, bound: Bound) -> Any:
        """Call a torch callable, with keywords when the model takes named (dict) inputs."""
        tensors = [t.to(self.device) if t.device != torch.device(self.device) else t for t in bound.tensors]
        if self.input_structure == "dict" and bound.names is not None:
            return module(**dict(zip(bound.names, tensors, strict=True)))
        return module(*tensors)

    def example_inputs(self, batch_size: int = 1) -> list[torch.Tensor]:
        """Random inputs that fit :attr:`inputs` with this batch size.

        Raises:
            PredictorError: the input specs are unknown for this artifact.
        """
        if not self.inputs:
            raise PredictorError(
                f"{self.backend} predictor for {self.path or 'an in-memory model'}: input specs are unknown, so no "
                "example inputs can be made; load it from an export directory (export.json) or pass example_inputs"
            )
        return example_inputs(self.inputs, batch_size)

    def warmup(self, batch_size: int = 1, iterations: int = 1) -> None:
        """Run ``iterations`` calls on random inputs (first calls pay for allocation and compilation)."""
        inputs = self.example_inputs(batch_size)
        for _ in range(iterations):
            if self.input_structure == "dict":
                self(**{s.name: t for s, t in zip(self.inputs, inputs, strict=True)})
            else:
                self(*inputs)

    def __repr__(self) -> str:
        ins = ", ".join(format_spec(s) for s in self.inputs) or "?"
        outs = ", ".join(format_spec(s) for s in self.outputs) or "?"
        where = f" {self.path!r}" if self.path else ""
        return f"<{type(self).__name__}{where} backend={self.backend} device={self.device} ({ins}) -> ({outs})>"
