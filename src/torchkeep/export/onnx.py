"""``onnx``: ``torch.onnx.export(dynamo=True)`` with ``dynamic_shapes`` (``model.onnx`` [+ ``.data``]).

The current exporter captures the model with ``torch.export`` and translates the graph with
onnxscript; the batch dimension is made dynamic with ``dynamic_shapes`` (the legacy TorchScript
exporter's ``dynamic_axes`` is not used). Input and output names follow
:mod:`torchkeep.export._examples`. Weights go to an external ``model.onnx.data`` file when they exceed
1 GiB (a protobuf cannot hold more than 2 GiB) or when ``onnx_external_data=True``. The result
is checked with ``onnx.checker.check_model`` before anything else sees it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..errors import ExportError, missing_dependency
from ._examples import ExportExamples, explain_export_failure, rnn_loops
from ._messages import summarize_error
from ._options import ExportOptions

__all__ = ["OnnxExporter", "write_onnx"]

logger = logging.getLogger(__name__)

_EXTERNAL_DATA_BYTES = 1 << 30


def _weight_bytes(model: torch.nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def write_onnx(
    model: torch.nn.Module,
    examples: ExportExamples,
    path: Path,
    options: ExportOptions,
    *,
    fmt: str = "onnx",
) -> list[Path]:
    """Export ``model`` to ONNX at ``path`` and check it; shared by the onnx and tensorrt exporters.

    Raises:
        MissingDependencyError: onnx or onnxscript is not installed.
        ExportError: capture, translation or the checker failed (``step`` says which).
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter needs it; fail with our message)
    except ImportError as exc:
        raise missing_dependency(getattr(exc, "name", None) or "onnx", "onnx", "ONNX export") from exc
    external = options.onnx_external_data
    if external is None:
        external = _weight_bytes(model) > _EXTERNAL_DATA_BYTES
    _onnx_export(model, examples, path, options, external=external, optimize=True, fmt=fmt)
    if _lost_dynamic_dims(onnx, path, examples):
        # The ONNX optimizer folds a dimension that torch.export specialized while tracing (an
        # unrolled nn.LSTM time loop) although the graph computes it; unoptimized, it stays dynamic.
        logger.info("%s: the optimized graph fixed a dynamic dimension; exporting without optimization", fmt)
        _onnx_export(model, examples, path, options, external=external, optimize=False, fmt=fmt)
    files = [path]
    data = path.with_name(path.name + ".data")
    if data.exists():
        files.append(data)
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except Exception as exc:
        raise ExportError(
            f"{fmt}: onnx.checker rejected the exported model: {summarize_error(exc)}", format=fmt, step="check"
        ) from exc
    logger.debug("%s: wrote %s", fmt, ", ".join(f.name for f in files))
    return files


def _onnx_export(
    model: torch.nn.Module,
    examples: ExportExamples,
    path: Path,
    options: ExportOptions,
    *,
    external: bool,
    optimize: bool,
    fmt: str,
) -> None:
    try:
        with rnn_loops():  # the same LSTM/GRU capture as torch.export's (see _examples.rnn_loops)
            torch.onnx.export(
                model,
                examples.args,
                str(path),
                kwargs=examples.kwargs or None,
                dynamo=True,
                dynamic_shapes=examples.dynamic_shapes(),
                input_names=examples.input_names,
                output_names=examples.output_names,
                opset_version=options.opset,
                external_data=external,
                optimize=optimize,
                verbose=False,
            )
    except Exception as exc:
        cause = exc.__cause__ or exc
        raise ExportError(
            f"{fmt}: torch.onnx.export failed: {explain_export_failure(cause)}", format=fmt, step="export"
        ) from exc


def _lost_dynamic_dims(onnx: Any, path: Path, examples: ExportExamples) -> bool:
    """True when an input dimension that should be dynamic has a fixed size in the ONNX graph."""
    if not any(len(per) > (1 if 0 in per else 0) for per in examples.dims.per_input):
        return False  # only the batch is dynamic: the optimizer keeps it
    proto = onnx.load(str(path), load_external_data=False)
    specs = {s.name: s.shape for s in examples.input_specs()}
    for value in proto.graph.input:
        shape = specs.get(value.name)
        dims = value.type.tensor_type.shape.dim
        if shape is None or len(dims) != len(shape):
            continue
        if any(want is None and d.HasField("dim_value") for want, d in zip(shape, dims, strict=True)):
            return True
    return False


class OnnxExporter:
    """``torch.onnx.export(dynamo=True)`` + ``onnx.checker``.

    Example:
        >>> OnnxExporter().backend
        'onnxruntime'
    """

    name = "onnx"
    suffix = ".onnx"
    backend = "onnxruntime"

    def export(
        self, model: torch.nn.Module, examples: ExportExamples, path: Path, options: ExportOptions
    ) -> list[Path]:
        """Write ``model.onnx`` (and ``model.onnx.data`` for large weights)."""
        return write_onnx(model, examples, path, options)

    def describe_options(self, options: ExportOptions, files: list[Path]) -> dict[str, Any]:
        """``{"opset": <the opset in the file>, "external_data": bool}``."""
        opset: int | None = options.opset
        try:
            import onnx

            proto = onnx.load(str(files[0]), load_external_data=False)
            opset = next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
        except Exception:  # the file was checked already; the opset is informational
            logger.debug("could not read the opset back from %s", files[0])
        return {"opset": opset, "external_data": len(files) > 1}
