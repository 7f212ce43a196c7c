"""Eager PyTorch: a torchkeep model file (rebuilt by ``tk.load_model``) or an in-memory module.

Specs: from export.json when loaded through an export directory, from ``example_inputs`` when
given, else unknown (inputs are then converted but not checked).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from .._dtypes import dtype_name
from ..errors import PredictorError
from ._base import TensorSpec
from ._common import BasePredictor
from ._inputs import Bound

__all__ = ["EagerPredictor", "load", "output_specs", "specs_from_examples"]


def specs_from_examples(examples: Sequence[torch.Tensor], prefix: str = "input") -> list[TensorSpec]:
    """Specs for example tensors with a dynamic batch dimension (names ``input``, ``input_1``, ...)."""
    return [
        TensorSpec(prefix if i == 0 else f"{prefix}_{i}", (None, *t.shape[1:]) if t.dim() else (), dtype_name(t.dtype))
        for i, t in enumerate(examples)
    ]


def output_specs(out: Any) -> tuple[list[TensorSpec], str | None]:
    """Specs and structure (``tensor``/``tuple``/``dict``) of one model output, batch dim dynamic."""
    if isinstance(out, torch.Tensor):
        return specs_from_examples([out], "output"), "tensor"
    if isinstance(out, dict) and all(isinstance(v, torch.Tensor) for v in out.values()):
        return [TensorSpec(str(k), (None, *v.shape[1:]), dtype_name(v.dtype)) for k, v in out.items()], "dict"
    if isinstance(out, list | tuple) and all(isinstance(v, torch.Tensor) for v in out):
        return specs_from_examples(list(out), "output"), "tuple"
    return [], None


class EagerPredictor(BasePredictor):
    """Runs an ``nn.Module`` in eval mode under ``torch.inference_mode()``.

    Example:
        >>> import torch
        >>> p = EagerPredictor(torch.nn.Linear(3, 1).eval())
        >>> p([[0.0, 0.0, 0.0]])[0].__len__()
        1
    """

    backend = "eager"

    def __init__(self, module: torch.nn.Module, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.module = module.to(self.device).eval()

    def _run(self, bound: Bound) -> Any:
        return self._call_module(self.module, bound)


def load(
    source: str | os.PathLike[str] | torch.nn.Module,
    *,
    device: str = "cpu",
    example_inputs: Sequence[torch.Tensor] | None = None,
    **kwargs: Any,
) -> EagerPredictor:
    """An eager predictor for a torchkeep model file (``tk.save_model``) or a module."""
    path: str | None = None
    if isinstance(source, torch.nn.Module):
        module = source
    else:
        path = os.fspath(source)
        from .._modelfile import load_model

        module = load_model(path, map_location=device)
        if not isinstance(module, torch.nn.Module):  # pragma: no cover - load_model's contract
            raise PredictorError(f"{path}: tk.load_model returned {type(module).__name__}, expected an nn.Module")
    if example_inputs is not None:
        examples = list(example_inputs)
        if not kwargs.get("inputs"):
            kwargs["inputs"] = specs_from_examples(examples)
        if not kwargs.get("outputs"):
            with torch.inference_mode():
                out = module.eval()(*examples)
            kwargs["outputs"], kwargs["output_structure"] = output_specs(out)
    return EagerPredictor(module, device=device, path=path, **kwargs)
