"""The examples every exporter gets: inputs, names, structure, specs and the shared torch.export capture.

One exporter module per format (``pt2``, ``onnx``, ``torchscript``, ``aoti``, ``tensorrt``)
implements :class:`Exporter`. :func:`torchkeep.export` builds one :class:`ExportExamples` from
the user's example inputs, runs each exporter into a staging directory, checks every artifact
against eager PyTorch (:mod:`torchkeep.export._parity`) and writes ``export.json``.

Naming rules, shared with the runtime through ``export.json``:

* inputs: positional inputs take the names of ``forward``'s parameters (``x``, ``input_ids``),
  or ``input_<i>`` where there is none; dict examples are keyword arguments named by their keys.
* outputs: ``output`` for a single tensor, ``output_<i>`` for a tuple or list, the keys for a
  dict. Nested outputs are refused (return a flat tuple or dict).
* the batch dimension is dim 0 of every input whose dim 0 equals the first input's.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from .._dtypes import dtype_name
from ..errors import ExportError
from ..runtime import TensorSpec
from ._messages import summarize_error

__all__ = ["ExportExamples", "InputStructure", "OutputStructure", "explain_export_failure"]

InputStructure = Literal["positional", "dict"]
OutputStructure = Literal["tensor", "tuple", "dict"]


def _is_tensor_seq(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in value)


def _param_names(model: torch.nn.Module) -> list[str]:
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in sig.parameters.values() if p.kind in kinds]


class ExportExamples:
    """The example inputs, normalized once and shared by every exporter and the parity check.

    ``args``/``kwargs`` are what exporters trace with: when the batch is dynamic and the user's
    example has batch 1, every batched input is repeated to batch 2, because exporters
    specialize a dimension of size 1 and the artifact would then refuse any other batch.

    Example:
        >>> import torch
        >>> ex = ExportExamples(torch.nn.Linear(4, 2).eval(), torch.randn(1, 4), dynamic_batch=True)
        >>> ex.args[0].shape[0], ex.input_specs()[0].shape
        (2, (None, 4))
    """

    def __init__(
        self,
        model: torch.nn.Module,
        example_inputs: Any,
        *,
        dynamic_batch: bool,
        input_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
    ) -> None:
        self.dynamic_batch = dynamic_batch
        self.input_structure: InputStructure
        if isinstance(example_inputs, torch.Tensor):
            user: list[torch.Tensor] = [example_inputs]
            names = self._positional_names(model, 1)
            self.input_structure = "positional"
        elif _is_tensor_seq(example_inputs) and example_inputs:
            user = list(example_inputs)
            names = self._positional_names(model, len(user))
            self.input_structure = "positional"
        elif (
            isinstance(example_inputs, Mapping)
            and example_inputs
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in example_inputs.items())
        ):
            user = list(example_inputs.values())
            names = list(example_inputs.keys())
            self.input_structure = "dict"
        else:
            raise ExportError(
                f"example_inputs must be a tensor, a tuple/list of tensors or a dict name → tensor "
                f"(keyword arguments of forward); got {type(example_inputs).__name__}. Nested inputs "
                "are not supported: pass the tensors flat.",
                step="inputs",
            )
        if input_names is not None:
            if len(input_names) != len(user):
                raise ExportError(
                    f"input_names has {len(input_names)} names for {len(user)} example inputs", step="inputs"
                )
            if self.input_structure == "dict" and list(input_names) != names:
                raise ExportError("input_names cannot rename dict inputs: their keys are the names", step="inputs")
            names = list(input_names)
        self.input_names = names
        self.user_inputs = [t.detach() for t in user]
        first = self.user_inputs[0]
        self.example_batch = int(first.shape[0]) if first.dim() > 0 else 1
        self.batched = [t.dim() > 0 and int(t.shape[0]) == self.example_batch for t in self.user_inputs]
        if not self.batched[0]:
            self.dynamic_batch = False  # a 0-dim first input has no batch dimension
        traced = self.user_inputs
        if self.dynamic_batch and self.example_batch == 1:
            traced = [torch.cat([t, t]) if b else t for t, b in zip(traced, self.batched, strict=True)]
        self.inputs = traced
        self._output_override = list(output_names) if output_names is not None else None
        self.output_names: list[str] = []
        self.output_structure: OutputStructure = "tensor"
        self._output_meta: list[tuple[torch.dtype, tuple[int, ...]]] = []
        self._exported: Any = None
        self._export_error: BaseException | None = None

    @staticmethod
    def _positional_names(model: torch.nn.Module, count: int) -> list[str]:
        params = _param_names(model)
        if len(params) >= count:
            return params[:count]
        return [f"input_{i}" for i in range(count)] if count > 1 else ["input"]

    @property
    def args(self) -> tuple[torch.Tensor, ...]:
        """Positional example inputs for tracing (empty for dict inputs)."""
        return tuple(self.inputs) if self.input_structure == "positional" else ()

    @property
    def kwargs(self) -> dict[str, torch.Tensor]:
        """Keyword example inputs for tracing (empty for positional inputs)."""
        return dict(zip(self.input_names, self.inputs, strict=True)) if self.input_structure == "dict" else {}

    def call(self, model: Any, inputs: Sequence[Any]) -> Any:
        """Call ``model`` with ``inputs`` (in input order) the way the model takes them."""
        if self.input_structure == "dict":
            return model(**dict(zip(self.input_names, inputs, strict=True)))
        return model(*inputs)

    def record_outputs(self, outputs: Any) -> None:
        """Learn output names, structure, dtypes and shapes from one eager run."""
        if isinstance(outputs, torch.Tensor):
            structure: OutputStructure = "tensor"
            names, tensors = ["output"], [outputs]
        elif _is_tensor_seq(outputs) and outputs:
            structure = "tuple"
            names, tensors = [f"output_{i}" for i in range(len(outputs))], list(outputs)
        elif (
            isinstance(outputs, Mapping)
            and outputs
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in outputs.items())
        ):
            structure = "dict"
            names, tensors = list(outputs.keys()), list(outputs.values())
        else:
            raise ExportError(
                f"the model returned {type(outputs).__name__}; exportable models return a tensor, a flat "
                "tuple/list of tensors or a flat dict name → tensor. Wrap the model so forward returns one "
                "of those (e.g. for an LSTM return `out` or `(out, h, c)`, not `(out, (h, c))`).",
                step="outputs",
            )
        if self._output_override is not None:
            if len(self._output_override) != len(names):
                raise ExportError(
                    f"output_names has {len(self._output_override)} names but the model returns {len(names)} outputs",
                    step="outputs",
                )
            if structure == "dict" and self._output_override != names:
                raise ExportError("output_names cannot rename dict outputs: their keys are the names", step="outputs")
            names = self._output_override
        self.output_structure = structure
        self.output_names = names
        self._output_meta = [(t.dtype, tuple(t.shape)) for t in tensors]

    def flatten_outputs(self, outputs: Any) -> list[torch.Tensor]:
        """Outputs of the model (or a predictor) as a list in output order."""
        if isinstance(outputs, Mapping):
            return [_as_tensor(outputs[name]) for name in self.output_names]
        if isinstance(outputs, (tuple, list)):
            return [_as_tensor(o) for o in outputs]
        return [_as_tensor(outputs)]

    def output_dtypes(self) -> list[torch.dtype]:
        """Eager output dtypes, in output order."""
        return [dtype for dtype, _ in self._output_meta]

    def input_specs(self) -> list[TensorSpec]:
        """Input specs with ``None`` for the dynamic batch dimension."""
        return [
            TensorSpec(name, self._spec_shape(tuple(t.shape), batched), dtype_name(t.dtype))
            for name, t, batched in zip(self.input_names, self.inputs, self.batched, strict=True)
        ]

    def output_specs(self) -> list[TensorSpec]:
        """Output specs; dim 0 is dynamic when it followed the batch in the example run."""
        batch = int(self.inputs[0].shape[0]) if self.inputs[0].dim() > 0 else None
        specs = []
        for name, (dtype, shape) in zip(self.output_names, self._output_meta, strict=True):
            batched = bool(shape) and shape[0] == batch
            specs.append(TensorSpec(name, self._spec_shape(shape, batched), dtype_name(dtype)))
        return specs

    def _spec_shape(self, shape: tuple[int, ...], batched: bool) -> tuple[int | None, ...]:
        if self.dynamic_batch and batched and shape:
            return (None, *shape[1:])
        return shape

    def dynamic_shapes(self) -> Any:
        """``dynamic_shapes`` for ``torch.export`` / ``torch.onnx.export`` (None when static)."""
        if not self.dynamic_batch:
            return None
        batch = torch.export.Dim("batch", min=1)
        specs = [{0: batch} if b else None for b in self.batched]
        if self.input_structure == "dict":
            return dict(zip(self.input_names, specs, strict=True))
        return tuple(specs)

    def exported_program(self, model: torch.nn.Module, *, strict: bool) -> Any:
        """``torch.export.export`` of the model, computed once and shared by pt2 and aoti.

        Raises:
            ExportError: torch.export could not capture the model (the message says why).
        """
        if self._exported is None and self._export_error is None:
            try:
                self._exported = torch.export.export(
                    model, self.args, kwargs=self.kwargs or None, dynamic_shapes=self.dynamic_shapes(), strict=strict
                )
            except Exception as exc:
                self._export_error = exc
        if self._export_error is not None:
            raise ExportError(explain_export_failure(self._export_error), step="torch.export") from self._export_error
        return self._exported


def explain_export_failure(exc: BaseException) -> str:
    """torch.export's message, plus what to do for the failures users hit most."""
    msg = summarize_error(exc)
    text = str(exc)
    if "data-dependent" in text or "GuardOnDataDependentSymNode" in type(exc).__name__:
        msg += (
            " — the model branches on tensor values (data-dependent control flow), which graph capture "
            "cannot follow: rewrite the branch with torch.where / torch.cond, or export to torchscript "
            "with torchscript_method='script'."
        )
    elif "Constraints violated" in text or "specialized" in text:
        msg += " — the batch dimension cannot be dynamic for this model: export with dynamic_batch=False."
    return msg


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.as_tensor(value)
