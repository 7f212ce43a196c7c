"""Reduced-precision formats: ONNX int8, ONNX fp16 and TorchScript int8 (dynamic quantization).

* ``onnx-int8`` (``model.int8.onnx``): the ONNX export quantized by ``onnxruntime.quantization``:
  dynamically (int8 weights, activations quantized per call) by default; statically (int8
  activations too, scales calibrated on data) when ``calibration_data=`` gives example batches.
* ``onnx-fp16`` (``model.fp16.onnx``): the ONNX export with weights and compute in float16, inputs
  and outputs kept float32 (``keep_io_types``), so callers pass the same tensors.
* ``torchscript-int8`` (``model.int8.torchscript.pt``): ``torch.ao.quantization.quantize_dynamic``
  on every ``nn.Linear``/``nn.LSTM``/``nn.GRU``, traced to TorchScript; runs with torch alone.

Each is verified against the fp32 eager model with the tolerance of its precision
(:data:`~torchkeep.export.PRECISION_TOLERANCES`); the report records the error it has.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ExportError, missing_dependency
from ._examples import ExportExamples
from ._messages import summarize_error
from ._options import ExportOptions
from .onnx import write_onnx
from .torchscript import TorchScriptExporter

__all__ = ["OnnxFp16Exporter", "OnnxInt8Exporter", "TorchScriptInt8Exporter"]

logger = logging.getLogger(__name__)


def _fp32_onnx(model: torch.nn.Module, examples: ExportExamples, dest: Path, options: ExportOptions, fmt: str) -> Path:
    onnx_path = dest / "model.onnx"
    write_onnx(model, examples, onnx_path, options, fmt=fmt)
    return onnx_path


class _Calibration:
    """``onnxruntime.quantization.CalibrationDataReader`` over the user's example batches."""

    def __init__(self, batches: Sequence[Any], examples: ExportExamples) -> None:
        self._feeds = [self._feed(b, examples) for b in batches]
        self._it: Iterator[dict[str, Any]] = iter(self._feeds)

    @staticmethod
    def _feed(batch: Any, examples: ExportExamples) -> dict[str, Any]:
        if isinstance(batch, torch.Tensor):
            tensors = [batch]
        elif isinstance(batch, dict):
            tensors = [batch[n] for n in examples.input_names]
        else:
            tensors = list(batch)
        if len(tensors) != len(examples.input_names) or not all(isinstance(t, torch.Tensor) for t in tensors):
            raise ExportError(
                f"calibration_data: each batch must hold {len(examples.input_names)} tensor(s) "
                f"({', '.join(examples.input_names)}), like example_inputs",
                format="onnx-int8",
                step="options",
            )
        return {n: t.detach().cpu().numpy() for n, t in zip(examples.input_names, tensors, strict=True)}

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


class OnnxInt8Exporter:
    """ONNX, then ``onnxruntime.quantization.quantize_dynamic`` (or ``quantize_static``).

    Example:
        >>> OnnxInt8Exporter().suffix
        '.int8.onnx'
    """

    name = "onnx-int8"
    suffix = ".int8.onnx"
    backend = "onnxruntime-int8"

    def export(
        self, model: torch.nn.Module, examples: ExportExamples, path: Path, options: ExportOptions
    ) -> list[Path]:
        """Write ``model.int8.onnx`` (int8 weights; int8 activations too with calibration data)."""
        try:
            from onnxruntime import quantization as q
        except ImportError as exc:
            raise missing_dependency("onnxruntime", "onnx", "ONNX int8 quantization") from exc
        tmp = Path(tempfile.mkdtemp(prefix=".tk-int8-", dir=path.parent))
        try:
            src = _fp32_onnx(model, examples, tmp, options, self.name)
            prepared = tmp / "model.prep.onnx"
            try:
                q.quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
            except Exception as exc:  # pre-processing only helps; quantize the plain export without it
                logger.debug("onnx-int8: quant_pre_process skipped (%s)", exc)
                prepared = src
            try:
                if options.calibration_data is None:
                    q.quantize_dynamic(str(prepared), str(path), weight_type=q.QuantType.QInt8)
                else:
                    q.quantize_static(
                        str(prepared),
                        str(path),
                        _Calibration(options.calibration_data, examples),
                        quant_format=q.QuantFormat.QDQ,
                        activation_type=q.QuantType.QInt8,
                        weight_type=q.QuantType.QInt8,
                        per_channel=True,
                    )
            except ExportError:
                raise
            except Exception as exc:
                raise ExportError(
                    f"onnx-int8: onnxruntime quantization failed: {summarize_error(exc)}",
                    format=self.name,
                    step="quantize",
                ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return [path]

    def describe_options(self, options: ExportOptions, files: list[Path]) -> dict[str, Any]:
        """``{"mode": "dynamic" | "static", "calibration_batches": n}``."""
        static = options.calibration_data is not None
        return {
            "mode": "static" if static else "dynamic",
            "calibration_batches": len(options.calibration_data) if static else 0,
        }


class OnnxFp16Exporter:
    """ONNX, then float16 weights and compute with float32 inputs and outputs.

    Example:
        >>> OnnxFp16Exporter().backend
        'onnxruntime-fp16'
    """

    name = "onnx-fp16"
    suffix = ".fp16.onnx"
    backend = "onnxruntime-fp16"

    def export(
        self, model: torch.nn.Module, examples: ExportExamples, path: Path, options: ExportOptions
    ) -> list[Path]:
        """Write ``model.fp16.onnx``."""
        try:
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16
        except ImportError as exc:
            raise missing_dependency(getattr(exc, "name", None) or "onnxruntime", "onnx", "ONNX fp16") from exc
        tmp = Path(tempfile.mkdtemp(prefix=".tk-fp16-", dir=path.parent))
        try:
            src = _fp32_onnx(model, examples, tmp, options, self.name)
            try:
                half = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
                onnx.save(half, str(path))
            except Exception as exc:
                raise ExportError(
                    f"onnx-fp16: float16 conversion failed: {summarize_error(exc)}", format=self.name, step="convert"
                ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return [path]

    def describe_options(self, options: ExportOptions, files: list[Path]) -> dict[str, Any]:
        """``{"keep_io_types": True}``: inputs and outputs stay float32."""
        return {"keep_io_types": True}


#: the module types ``quantize_dynamic`` replaces with int8 versions.
_QUANTIZABLE = (torch.nn.Linear, torch.nn.LSTM, torch.nn.GRU)


class TorchScriptInt8Exporter:
    """``torch.ao.quantization.quantize_dynamic`` (int8 weights), traced to TorchScript.

    Example:
        >>> TorchScriptInt8Exporter().suffix
        '.int8.torchscript.pt'
    """

    name = "torchscript-int8"
    suffix = ".int8.torchscript.pt"
    backend = "torchscript-int8"

    def export(
        self, model: torch.nn.Module, examples: ExportExamples, path: Path, options: ExportOptions
    ) -> list[Path]:
        """Quantize a copy of the model (the user's stays fp32) and trace it."""
        if not any(isinstance(m, _QUANTIZABLE) for m in model.modules()):
            raise ExportError(
                "torchscript-int8: the model has no nn.Linear/LSTM/GRU, which dynamic quantization replaces; "
                "there is nothing to quantize",
                format=self.name,
                step="quantize",
            )
        try:
            with warnings.catch_warnings():
                # torch.ao.quantization announces its move to torchao; the API works in this torch.
                warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
                quantized = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                    copy.deepcopy(model).eval(), set(_QUANTIZABLE), dtype=torch.qint8
                )
        except Exception as exc:
            raise ExportError(
                f"torchscript-int8: quantize_dynamic failed: {summarize_error(exc)}", format=self.name, step="quantize"
            ) from exc
        return TorchScriptExporter().export(quantized, examples, path, options)

    def describe_options(self, options: ExportOptions, files: list[Path]) -> dict[str, Any]:
        """``{"engine": torch's quantized engine, "method": "trace" | "script"}``."""
        return {"engine": torch.backends.quantized.engine, "method": options.torchscript_method}
