"""Eager PyTorch: a torchkeep model file (rebuilt by ``tk.load_model``) or an in-memory module.

Specs: from export.json when loaded through an export directory, from ``example_inputs`` when
given, from the example inputs recorded by ``tk.save_model(..., example_inputs=...)``, else
unknown (inputs are then converted but not checked).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import PredictorError
from ..io._dtypes import dtype_name
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
    named: list[str] | None = None
    if isinstance(source, torch.nn.Module):
        module = source
    else:
        path = os.fspath(source)
        from ..models._modelfile import load_model

        module = load_model(path, map_location=device)
        if not isinstance(module, torch.nn.Module):  # pragma: no cover - load_model's contract
            raise PredictorError(f"{path}: tk.load_model returned {type(module).__name__}, expected an nn.Module")
        if example_inputs is None and not kwargs.get("inputs"):
            from ..models._examples import example_inputs_of

            recorded = example_inputs_of(path)
            if isinstance(recorded, dict):
                named, example_inputs = list(recorded), list(recorded.values())
            elif recorded is not None:
                example_inputs = list(recorded)
    if example_inputs is not None:
        examples = list(example_inputs)
        if not kwargs.get("inputs"):
            specs = specs_from_examples(examples)
            if named is not None:
                specs = [TensorSpec(n, s.shape, s.dtype) for n, s in zip(named, specs, strict=True)]
                kwargs["input_structure"] = "dict"
            kwargs["inputs"] = specs
        if not kwargs.get("outputs"):
            with torch.inference_mode():
                module.eval()
                out = module(**dict(zip(named, examples, strict=True))) if named else module(*examples)
            kwargs["outputs"], kwargs["output_structure"] = output_specs(out)
    return EagerPredictor(module, device=device, path=path, **kwargs)
