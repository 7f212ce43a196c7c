"""The export seam: the :class:`Exporter` Protocol, the examples every exporter gets, and the report.

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

import contextlib
import inspect
import logging
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from ..errors import ExportError, UsageError
from ..runtime._base import TensorSpec

__all__ = [
    "ExportExamples",
    "ExportOptions",
    "ExportReport",
    "Exporter",
    "FormatResult",
    "capture_warnings",
    "dtype_name",
    "summarize_error",
]

logger = logging.getLogger(__name__)

InputStructure = Literal["positional", "dict"]
OutputStructure = Literal["tensor", "tuple", "dict"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` → ``"float32"`` (the form used by :class:`TensorSpec`)."""
    return str(dtype).removeprefix("torch.")


def summarize_error(exc: BaseException, *, limit: int = 600) -> str:
    """The first meaningful lines of a backend's error message, without colour codes."""
    text = _ANSI.sub("", str(exc)).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    out = " ".join(lines[:3])
    return out if len(out) <= limit else out[: limit - 3] + "..."


_DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


# Backends that log chatter at WARNING during a normal export (e.g. torch.onnx's "torchvision is
# not installed" lines); quiet while we export unless torchkeep's own logging is at DEBUG.
_CHATTY_LOGGERS = ("torch", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def capture_warnings(fmt: str, collected: list[str]) -> Iterator[None]:
    """Route the warnings an exporter emits to logging instead of the user's terminal.

    Exporters warn a lot (deprecations of TorchScript, onnxscript internals, TracerWarnings).
    Deprecations go to DEBUG; anything else goes to INFO and, once per message, into
    ``collected`` (the report and ``export.json`` keep them). The backends' own loggers are
    raised to ERROR meanwhile, unless torchkeep logs at DEBUG (``torchkeep --debug``).
    """
    quiet = not logger.isEnabledFor(logging.DEBUG)
    levels = {name: logging.getLogger(name).level for name in _CHATTY_LOGGERS} if quiet else {}
    for name in levels:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    for w in caught:
        text = f"{w.category.__name__}: {w.message}"
        if issubclass(w.category, _DEPRECATIONS):
            logger.debug("%s: %s", fmt, text)
        elif text not in collected:
            collected.append(text)
            logger.info("%s: %s", fmt, text)


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """Format options for :func:`torchkeep.export`, passed to it as keyword arguments.

    Attributes:
        opset: ONNX opset version (None: the exporter's default).
        onnx_external_data: store ONNX weights in ``model.onnx.data`` (None: only when the
            weights exceed 1 GiB, since one ONNX protobuf cannot exceed 2 GiB).
        torchscript_method: ``"trace"`` (follows one path through the code; the tutorials' way)
            or ``"script"`` (compiles Python control flow).
        torchscript_warnings: show TorchScript's own deprecation warnings (hidden by default:
            TorchScript is legacy and its warnings say so on every call).
        strict: use ``torch.export`` strict mode (TorchDynamo tracing) for pt2/aoti.
        aoti_configs: extra ``inductor_configs`` for AOTInductor.
        tensorrt_precision: ``"fp32"`` or ``"fp16"`` (a strongly typed network from an fp16 ONNX).
        tensorrt_workspace_bytes: TensorRT workspace memory-pool limit.
        max_batch_size: the largest batch the TensorRT optimization profile accepts.
        opt_batch_size: the batch TensorRT tunes for (None: the example's batch).
        device: where verification runs the artifacts (None: the examples' device; TensorRT
            always runs on CUDA). AOTInductor compiles for the device of the model and examples.
        verify_batch_sizes: batch sizes checked against eager (None: 1, 3 and 17 when the batch
            is dynamic, else the example's batch).
        verify_seed: seed of the random verification inputs.
        input_names / output_names: override the derived names.
        source_file: the torchkeep file the model came from (recorded with its hash).
    """

    opset: int | None = None
    onnx_external_data: bool | None = None
    torchscript_method: Literal["trace", "script"] = "trace"
    torchscript_warnings: bool = False
    strict: bool = False
    aoti_configs: Mapping[str, Any] | None = None
    tensorrt_precision: Literal["fp32", "fp16"] = "fp32"
    tensorrt_workspace_bytes: int = 1 << 30
    max_batch_size: int = 64
    opt_batch_size: int | None = None
    device: str | None = None
    verify_batch_sizes: tuple[int, ...] | None = None
    verify_seed: int = 0
    input_names: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None
    source_file: str | None = None

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> UsageError:
            value = getattr(self, name)
            return UsageError(f"export option {name}={value!r} is invalid; expected {expected}", argument=name)

        if self.opset is not None and not (isinstance(self.opset, int) and 7 <= self.opset <= 30):
            raise bad("opset", "an ONNX opset number such as 18")
        if self.torchscript_method not in ("trace", "script"):
            raise bad("torchscript_method", "'trace' or 'script'")
        if self.tensorrt_precision not in ("fp32", "fp16"):
            raise bad("tensorrt_precision", "'fp32' or 'fp16'")
        if not isinstance(self.tensorrt_workspace_bytes, int) or self.tensorrt_workspace_bytes <= 0:
            raise bad("tensorrt_workspace_bytes", "a positive number of bytes")
        if not isinstance(self.max_batch_size, int) or self.max_batch_size < 1:
            raise bad("max_batch_size", "an int >= 1")
        if self.opt_batch_size is not None and not (1 <= self.opt_batch_size <= self.max_batch_size):
            raise bad("opt_batch_size", f"an int between 1 and max_batch_size={self.max_batch_size}")
        if self.verify_batch_sizes is not None:
            sizes = tuple(self.verify_batch_sizes)
            if not sizes or not all(isinstance(b, int) and b >= 1 for b in sizes):
                raise bad("verify_batch_sizes", "a non-empty sequence of ints >= 1")
            object.__setattr__(self, "verify_batch_sizes", sizes)
        for name in ("input_names", "output_names"):
            value = getattr(self, name)
            if value is not None:
                names = tuple(value)
                if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
                    raise bad(name, "distinct non-empty strings")
                object.__setattr__(self, name, names)

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any]) -> ExportOptions:
        """Build from ``**options``; an unknown name is an error that lists the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise UsageError(
                f"unknown export option(s) {', '.join(map(repr, unknown))}; known options: {', '.join(sorted(known))}",
                argument="options",
            )
        return cls(**options)

    def to_json(self) -> dict[str, Any]:
        """The options that differ from the defaults, JSON-able."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


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


@runtime_checkable
class Exporter(Protocol):
    """One export format.

    Attributes:
        name: the format name used in ``formats=`` and ``export.json`` (``"onnx"``).
        suffix: the artifact's file-name suffix; the file is ``model<suffix>``.
        backend: the :func:`torchkeep.load_predictor` backend that runs the artifact.

    Example:
        >>> from torchkeep.export import get_exporter
        >>> get_exporter("onnx").suffix
        '.onnx'
    """

    name: str
    suffix: str
    backend: str

    def export(
        self, model: torch.nn.Module, examples: ExportExamples, path: Path, options: ExportOptions
    ) -> list[Path]:
        """Write the artifact to ``path`` (and sidecar files next to it); return every file written.

        Raises:
            ExportError: with ``format`` and ``step`` set and the backend's message.
        """
        ...

    def describe_options(self, options: ExportOptions, files: list[Path]) -> dict[str, Any]:
        """The options that shaped this artifact, for ``export.json``."""
        ...


@dataclass
class FormatResult:
    """What happened to one format.

    Attributes:
        format: the format name.
        ok: written and verified.
        file: the artifact (None when the format failed).
        files: every file written for it.
        error: the failure message when ``ok`` is False.
        step: where it failed (``"export"``, ``"torch.export"``, ``"verify"``, ...).
        parity: batch size → output name → ``{"max_abs": .., "max_rel": ..}``.
        tolerance: output name → ``{"rtol": .., "atol": ..}``.
        options: format options recorded in ``export.json``.
        export_seconds / verify_seconds: time spent.
        warnings: messages the backend emitted while exporting.
    """

    format: str
    ok: bool = False
    file: Path | None = None
    files: list[Path] = field(default_factory=list)
    backend: str = ""
    error: str | None = None
    step: str | None = None
    parity: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    tolerance: dict[str, dict[str, float]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    export_seconds: float = 0.0
    verify_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def max_abs_error(self) -> float:
        """The worst absolute error over every batch size and output (nan when unverified)."""
        values = [v["max_abs"] for per in self.parity.values() for v in per.values()]
        return max(values) if values else float("nan")

    @property
    def max_rel_error(self) -> float:
        """The worst relative error over every batch size and output (nan when unverified)."""
        values = [v["max_rel"] for per in self.parity.values() for v in per.values()]
        return max(values) if values else float("nan")


@dataclass
class ExportReport:
    """The result of :func:`torchkeep.export`: one :class:`FormatResult` per format, and the manifest.

    Example:
        >>> import torch, torchkeep as tk, tempfile
        >>> report = tk.export(torch.nn.Linear(4, 2), torch.randn(1, 4), tempfile.mkdtemp(), formats=["pt2"])
        >>> report.ok, report["pt2"].file.name
        (True, 'model.pt2')
    """

    output_dir: Path
    results: dict[str, FormatResult]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    manifest: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def manifest_path(self) -> Path:
        """``output_dir/export.json``."""
        return self.output_dir / "export.json"

    @property
    def ok(self) -> bool:
        """True when every requested format was written and verified."""
        return all(r.ok for r in self.results.values())

    @property
    def failed(self) -> dict[str, FormatResult]:
        """The formats that failed (only with ``continue_on_error=True``)."""
        return {name: r for name, r in self.results.items() if not r.ok}

    @property
    def files(self) -> dict[str, Path]:
        """Format → artifact path, for the formats that succeeded."""
        return {name: r.file for name, r in self.results.items() if r.ok and r.file is not None}

    def __getitem__(self, fmt: str) -> FormatResult:
        return self.results[fmt]

    def __iter__(self) -> Any:
        return iter(self.results.values())

    def table(self) -> str:
        """A plain-text summary: format, status, file, worst abs/rel error, seconds."""
        rows = [("format", "status", "file", "max abs err", "max rel err", "seconds")]
        for r in self.results.values():
            rows.append(
                (
                    r.format,
                    "ok" if r.ok else f"FAILED ({r.step})",
                    r.file.name if r.file else "-",
                    f"{r.max_abs_error:.2e}",
                    f"{r.max_rel_error:.2e}",
                    f"{r.export_seconds + r.verify_seconds:.1f}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)

    def to_json(self) -> dict[str, Any]:
        """The ``export.json`` content."""
        return self.manifest
