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
* dynamic dimensions other than the batch are named by ``dynamic_shapes=`` (see
  :mod:`torchkeep.export._dims`); an output dimension is dynamic when it changed in a second
  eager run at other sizes, and takes the name of the input dimension it followed.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch

from ..errors import ExportError, UsageError
from ..io._dtypes import dtype_name
from ..runtime import TensorSpec
from ._dims import DynamicDims, Point
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

    ``args``/``kwargs`` are what exporters trace with: where a dynamic dimension (the batch, a
    sequence) has size 1 in the user's example, the input is repeated to size 2 along it,
    because exporters specialize a dimension of size 1 and the artifact would then refuse any
    other size.

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
        dynamic_shapes: Any = None,
        input_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
    ) -> None:
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
            raise UsageError(
                f"example_inputs must be a tensor, a tuple/list of tensors or a dict name → tensor "
                f"(keyword arguments of forward); got {type(example_inputs).__name__}. Nested inputs "
                "are not supported: pass the tensors flat.",
                argument="example_inputs",
            )
        if input_names is not None:
            if len(input_names) != len(user):
                raise UsageError(
                    f"input_names has {len(input_names)} names for {len(user)} example inputs", argument="input_names"
                )
            if self.input_structure == "dict" and list(input_names) != names:
                raise UsageError(
                    "input_names cannot rename dict inputs: their keys are the names", argument="input_names"
                )
            names = list(input_names)
        self.input_names = names
        self.user_inputs = [t.detach() for t in user]
        first = self.user_inputs[0]
        self.example_batch = int(first.shape[0]) if first.dim() > 0 else 1
        self.batched = [t.dim() > 0 and int(t.shape[0]) == self.example_batch for t in self.user_inputs]
        if dynamic_shapes is not None:
            self.dims = DynamicDims.parse(dynamic_shapes, names, self.user_inputs, self.batched)
        elif dynamic_batch and self.batched[0]:  # a 0-dim first input has no batch dimension
            self.dims = DynamicDims.batch_only(self.batched, self.user_inputs)
        else:
            self.dims = DynamicDims([{} for _ in names])
        self.dynamic_batch = self.dims.batch_name is not None
        self.inputs = [self._widen(t, per) for t, per in zip(self.user_inputs, self.dims.per_input, strict=True)]
        self._output_override = list(output_names) if output_names is not None else None
        self.output_names: list[str] = []
        self.output_structure: OutputStructure = "tensor"
        self._output_meta: list[tuple[torch.dtype, tuple[int, ...]]] = []
        self._output_dims: list[dict[int, str | None]] = []
        self._exported: Any = None
        self._export_error: BaseException | None = None

    @staticmethod
    def _widen(tensor: torch.Tensor, dims: Mapping[int, str]) -> torch.Tensor:
        for dim in dims:
            if tensor.shape[dim] == 1:
                tensor = torch.cat([tensor, tensor], dim=dim)
        return tensor

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
                raise UsageError(
                    f"output_names has {len(self._output_override)} names but the model returns {len(names)} outputs",
                    argument="output_names",
                )
            if structure == "dict" and self._output_override != names:
                raise UsageError(
                    "output_names cannot rename dict outputs: their keys are the names", argument="output_names"
                )
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
        """Input specs: ``None`` (and the dimension's name in ``dims``) for each dynamic dimension."""
        return [
            self._spec(name, tuple(t.shape), dtype_name(t.dtype), per)
            for name, t, per in zip(self.input_names, self.user_inputs, self.dims.per_input, strict=True)
        ]

    def output_specs(self) -> list[TensorSpec]:
        """Output specs; a dimension is dynamic when it followed an input's dynamic dimension."""
        return [
            self._spec(name, shape, dtype_name(dtype), self._output_dims[i] if i < len(self._output_dims) else {})
            for i, (name, (dtype, shape)) in enumerate(zip(self.output_names, self._output_meta, strict=True))
        ]

    @staticmethod
    def _spec(name: str, shape: tuple[int, ...], dtype: str, dims: Mapping[int, str | None]) -> TensorSpec:
        if not dims:
            return TensorSpec(name, shape, dtype)
        if dict(dims) == {0: "batch"}:  # the batch alone needs no names: export.json stays as before
            return TensorSpec(name, (None, *shape[1:]), dtype)
        return TensorSpec(
            name,
            tuple(None if i in dims else d for i, d in enumerate(shape)),
            dtype,
            tuple(dims.get(i) for i in range(len(shape))),
        )

    def probe_point(self) -> Point:
        """Sizes unlike the traced ones (each dimension moved by a different step), for :meth:`record_probe`."""
        point: Point = {}
        for k, name in enumerate(self.dims.names):
            lo, hi = self.dims.ranges[name]
            size = self._traced_size(name)
            up, down = size + k + 1, size - k - 1
            point[name] = up if hi is None or up <= hi else max(down, lo)
        return point

    def _traced_size(self, name: str) -> int:
        for t, per in zip(self.inputs, self.dims.per_input, strict=True):
            for dim, n in per.items():
                if n == name:
                    return int(t.shape[dim])
        return 1

    def record_probe(self, outputs: Any, point: Point) -> None:
        """Learn which output dimensions are dynamic from a second eager run at ``point``."""
        probed = [tuple(t.shape) for t in self.flatten_outputs(outputs)]
        traced = {n: self._traced_size(n) for n in self.dims.names}
        self._output_dims = []
        for (_, shape), other in zip(self._output_meta, probed, strict=True):
            dims: dict[int, str | None] = {}
            for i, (a, b) in enumerate(zip(shape, other, strict=False)):
                if a != b:
                    dims[i] = next((n for n in self.dims.names if traced[n] == a and point.get(n) == b), None)
            self._output_dims.append(dims)

    def guess_output_dims(self) -> None:
        """Without a probe run: an output's dim 0 is the batch when it had the traced batch size."""
        batch = self.dims.batch_name
        size = self._traced_size(batch) if batch is not None else None
        self._output_dims = [
            {0: batch} if batch is not None and shape and shape[0] == size else {} for _, shape in self._output_meta
        ]

    def dynamic_shapes(self) -> Any:
        """``dynamic_shapes`` for ``torch.export`` / ``torch.onnx.export`` (None when static)."""
        return self.dims.torch_spec(self.input_names, self.input_structure)

    def forget_program(self) -> None:
        """Drop the cached ``torch.export`` result (a copy with other dims captures its own)."""
        self._exported = None
        self._export_error = None

    def exported_program(self, model: torch.nn.Module, *, strict: bool) -> Any:
        """``torch.export.export`` of the model, computed once and shared by pt2 and aoti.

        Raises:
            ExportError: torch.export could not capture the model (the message says why).
        """
        if self._exported is None and self._export_error is None:
            for _ in range(3):  # each retry adopts a range torch.export proved (see _dims.refine)
                try:
                    with rnn_loops():
                        self._exported = torch.export.export(
                            model,
                            self.args,
                            kwargs=self.kwargs or None,
                            dynamic_shapes=self.dynamic_shapes(),
                            strict=strict,
                        )
                    self._export_error = None
                    break
                except Exception as exc:
                    self._export_error = exc
                    if not self.dims.refine(exc):
                        break
        if self._export_error is not None:
            raise ExportError(explain_export_failure(self._export_error), step="torch.export") from self._export_error
        return self._exported


@contextlib.contextmanager
def rnn_loops() -> Iterator[None]:
    """Capture nn.LSTM/GRU as a while loop over time (torch.export unrolls it otherwise).

    torch.onnx does the same for dynamic shapes; doing it here too keeps pt2/aoti dynamic in the
    sequence length, and keeps every export on one decomposition: torch caches the one used
    first in a process, so a static export captured the other way would freeze the length of
    every later one. (An LSTM the user's own code exported before, unpatched, still has that.)
    """
    try:
        from torch.export._patches import (
            register_gru_while_loop_decomposition,
            register_lstm_while_loop_decomposition,
        )
    except ImportError:  # a torch without them: the time loop is unrolled (static length)
        yield
        return
    with register_lstm_while_loop_decomposition(), register_gru_while_loop_decomposition():
        yield


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
        fixed = DynamicDims.specialized(exc)
        if fixed and not any(f.startswith("batch=") for f in fixed):
            msg += (
                f" — the model's code fixes {', '.join(fixed)} for torch.export (nn.LSTM/GRU unroll their time "
                "loop there): keep that dimension static for pt2/aoti, or export it with onnx or torchscript, "
                "which keep it dynamic."
            )
        else:
            msg += " — the batch dimension cannot be dynamic for this model: export with dynamic_batch=False."
    return msg


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.as_tensor(value)
