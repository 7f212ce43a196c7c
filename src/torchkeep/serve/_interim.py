"""Stand-in for ``torchkeep.runtime.load_predictor`` until the runtime package lands.

Serves ``.onnx`` files (and export directories holding one) through ONNX Runtime only.
Delete this module once ``torchkeep.runtime.load_predictor`` exists: ``_loading`` prefers it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .._manifest import MANIFEST_NAME, read_manifest
from ..errors import PredictorError, PredictorInputError, missing_dependency
from ..runtime._base import TensorSpec

__all__ = ["load_predictor"]

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class _OrtPredictor:
    backend = "onnxruntime"

    def __init__(self, path: str, device: str) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise missing_dependency("onnxruntime", "onnx", "serving an ONNX model") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.device = device

        def spec(x: Any) -> TensorSpec:
            shape = tuple(d if isinstance(d, int) else None for d in x.shape)
            return TensorSpec(x.name, shape, _ORT_TYPES.get(x.type, "float32"))

        self.inputs = [spec(x) for x in self.session.get_inputs()]
        self.outputs = [spec(x) for x in self.session.get_outputs()]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) != len(self.inputs):
            raise PredictorInputError(f"expected {len(self.inputs)} inputs, found {len(args)}")
        feeds = {s.name: np.asarray(a) for s, a in zip(self.inputs, args, strict=True)}
        outs = self.session.run(None, feeds)
        return outs[0] if len(outs) == 1 else tuple(outs)


def load_predictor(path: str, *, backend: str | None = None, device: str = "cpu") -> Any:
    """Load an ``.onnx`` file, or the ONNX artifact of an export directory."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, MANIFEST_NAME)):
        art = read_manifest(path).get("artifacts", {}).get("onnx") or {}
        path = os.path.join(path, str(art.get("file") or "model.onnx"))
    if not path.endswith(".onnx"):
        raise PredictorError(f"{path}: this build can only serve .onnx models until torchkeep.runtime lands")
    return _OrtPredictor(path, device)
