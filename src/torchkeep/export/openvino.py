"""OpenVINO IR: ``openvino.convert_model`` from the PyTorch model (default) or from the ONNX export.

Writes ``model.xml`` (the graph) and ``model.bin`` (the weights, kept in fp32: ``save_model``
would otherwise compress them to fp16). Dynamic dimensions become ``?`` dims of the IR, so the
same artifact takes every batch size and sequence length the parity check tries.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import ExportError
from ..runtime import backend_row, require
from ._examples import ExportExamples
from ._messages import summarize_error
from ._options import ExportOptions
from .onnx import write_onnx

__all__ = ["OpenVinoExporter"]

logger = logging.getLogger(__name__)

_OV_TYPES = {"float32": "f32", "float64": "f64", "float16": "f16", "int64": "i64", "int32": "i32", "bool": "boolean"}


class OpenVinoExporter:
    """``openvino.convert_model`` + ``openvino.save_model`` (IR ``.xml``/``.bin``).

    Example:
        >>> OpenVinoExporter().suffix
        '.xml'
    """

    name = "openvino"
    suffix = ".xml"
    backend = "openvino"

    def export(
        self, model: torch.nn.Module, examples: ExportExamples, path: Path, options: ExportOptions
    ) -> list[Path]:
        """Convert and save the IR; ``openvino_source="onnx"`` converts the ONNX export instead."""
        ov = require(backend_row(self.backend), "OpenVINO export")
        tmp: Path | None = None
        try:
            if options.openvino_source == "onnx":
                tmp = Path(tempfile.mkdtemp(prefix=".tk-ov-", dir=path.parent))
                onnx_path = tmp / "model.onnx"
                write_onnx(model, examples, onnx_path, options, fmt=self.name)
                ov_model = ov.convert_model(str(onnx_path))
            else:
                shapes = [
                    (
                        s.name,
                        ov.PartialShape([-1 if d is None else d for d in s.shape]),
                        getattr(ov.Type, _OV_TYPES.get(s.dtype, "f32")),
                    )
                    for s in examples.input_specs()
                ]
                example = examples.kwargs if examples.input_structure == "dict" else examples.args
                ov_model = ov.convert_model(model, example_input=example, input=shapes)
            for port, name in zip(ov_model.outputs, examples.output_names, strict=False):
                port.get_tensor().set_names({name})
            ov.save_model(ov_model, str(path), compress_to_fp16=False)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(
                f"openvino: convert_model failed: {summarize_error(exc)}", format=self.name, step="export"
            ) from exc
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        return [path, path.with_suffix(".bin")]

    def describe_options(self, options: ExportOptions, files: list[Path]) -> dict[str, Any]:
        """``{"source": "torch" | "onnx", "openvino": version}``."""
        import openvino

        return {"source": options.openvino_source, "openvino": str(openvino.__version__)}
