"""OpenVINO IR (``model.xml`` + ``model.bin``) through the OpenVINO runtime, on the CPU.

Specs: from export.json when present, else from the compiled model (names, element types,
dims; ``?`` dims become None). Inference runs in fp32 (``INFERENCE_PRECISION_HINT=f32``):
OpenVINO would otherwise pick bf16 on CPUs that have it, silently changing the results.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointNotFoundError, PredictorError, PredictorInputError
from ._backends import backend_row, require
from ._base import TensorSpec
from ._common import BasePredictor, fill_missing
from ._inputs import Bound, structure_outputs

__all__ = ["OpenVinoPredictor", "load", "model_specs"]

logger = logging.getLogger(__name__)

_OV_DTYPES = {
    "f32": "float32",
    "f64": "float64",
    "f16": "float16",
    "bf16": "bfloat16",
    "i64": "int64",
    "i32": "int32",
    "i8": "int8",
    "u8": "uint8",
    "boolean": "bool",
}


def _spec(port: Any, fallback: str) -> TensorSpec:
    names = port.get_names()
    shape = port.get_partial_shape()
    dims = tuple(d.get_length() if d.is_static else None for d in shape) if shape.rank.is_static else ()
    return TensorSpec(
        sorted(names)[0] if names else fallback, dims, _OV_DTYPES.get(port.get_element_type().get_type_name(), "?")
    )


def model_specs(compiled: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs as the compiled OpenVINO model reports them."""
    return (
        [_spec(p, f"input_{i}") for i, p in enumerate(compiled.inputs)],
        [_spec(p, f"output_{i}") for i, p in enumerate(compiled.outputs)],
    )


class OpenVinoPredictor(BasePredictor):
    """Runs an ``openvino.CompiledModel`` (one infer request per call).

    Example:
        >>> import torchkeep as tk
        >>> p = tk.load_predictor("exported/model.xml")  # doctest: +SKIP
        >>> p.backend
        'openvino'
    """

    backend = "openvino"

    def __init__(self, compiled: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.compiled = compiled
        self._input_names = [sorted(p.get_names())[0] if p.get_names() else None for p in compiled.inputs]

    def _run(self, bound: Bound) -> Any:
        if len(bound.tensors) != len(self._input_names):
            raise PredictorInputError(
                f"got {len(bound.tensors)} input(s), the OpenVINO model takes {self._input_names}"
            )
        order = bound.tensors
        if bound.names is not None and set(bound.names) == set(self._input_names):
            by_name = dict(zip(bound.names, bound.tensors, strict=True))
            order = [by_name[str(n)] for n in self._input_names]
        try:
            result = self.compiled([t.detach().cpu().numpy() for t in order])
        except Exception as exc:
            raise PredictorError(f"{self.path}: openvino failed ({type(exc).__name__}: {exc})") from exc
        flat = [torch.from_numpy(np.array(result[port])) for port in self.compiled.outputs]
        return structure_outputs(flat, self.outputs, self.output_structure)


def load(
    path: str | os.PathLike[str], *, device: str = "cpu", threads: int | None = None, **kwargs: Any
) -> OpenVinoPredictor:
    """Compile ``model.xml`` (weights in the ``.bin`` next to it) for the CPU."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"{path}: no such OpenVINO IR file", path=path)
    if device != "cpu":
        raise PredictorError(f"{path}: the openvino backend runs on the CPU here; got device={device!r}")
    ov = require(backend_row("openvino"), "the openvino backend")
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        compiled = ov.Core().compile_model(path, "CPU", config)
    except Exception as exc:
        raise PredictorError(f"{path}: openvino could not compile the model ({type(exc).__name__}: {exc})") from exc
    inputs, outputs = model_specs(compiled)
    fill_missing(kwargs, inputs=inputs, outputs=outputs)
    return OpenVinoPredictor(compiled, device=device, path=path, threads=threads, **kwargs)
