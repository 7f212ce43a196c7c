"""ONNX models through ONNX Runtime: the CPU provider, and CUDA / TensorRT providers when present.

Specs: from export.json when present, else from the session (input/output names, dtypes, and
dims; symbolic dims such as ``"batch"`` become None).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointNotFoundError, PredictorError, missing_dependency
from ._base import TensorSpec
from ._common import BasePredictor, fill_missing
from ._inputs import Bound, structure_outputs

__all__ = ["ONNXRuntimePredictor", "load", "session_specs"]

logger = logging.getLogger(__name__)

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise missing_dependency("onnxruntime", "onnx", "the onnxruntime backend") from exc
    return onnxruntime


def session_specs(session: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs as an ONNX Runtime session reports them."""

    def convert(args: Sequence[Any]) -> list[TensorSpec]:
        return [
            TensorSpec(
                a.name,
                tuple(d if isinstance(d, int) and d >= 0 else None for d in (a.shape or [])),
                _ORT_DTYPES.get(a.type, a.type),
            )
            for a in args
        ]

    return convert(session.get_inputs()), convert(session.get_outputs())


def providers_for(device: str, available: Sequence[str]) -> list[str]:
    """The execution providers to ask for on ``device``, best first, among ``available``."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    if not wanted:
        raise PredictorError(
            f"device {device!r}: this onnxruntime has no CUDA provider (available: {list(available)}); "
            "install onnxruntime-gpu or use device='cpu'"
        )
    return [*wanted, "CPUExecutionProvider"]


class ONNXRuntimePredictor(BasePredictor):
    """Runs an ``onnxruntime.InferenceSession``.

    Attributes:
        session: the session (``session.get_providers()`` shows the providers in use).

    Example:
        >>> import torchkeep as tk
        >>> p = tk.load_predictor("exported/model.onnx")  # doctest: +SKIP
        >>> p.session.get_providers()  # doctest: +SKIP
        ['CPUExecutionProvider']
    """

    backend = "onnxruntime"

    def __init__(self, session: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session = session
        self._input_names = [i.name for i in session.get_inputs()]
        self._output_names = [o.name for o in session.get_outputs()]

    def _run(self, bound: Bound) -> Any:
        if bound.names is not None and set(bound.names) == set(self._input_names):
            feed = {n: t.detach().cpu().numpy() for n, t in zip(bound.names, bound.tensors, strict=True)}
        elif len(bound.tensors) == len(self._input_names):
            feed = {n: t.detach().cpu().numpy() for n, t in zip(self._input_names, bound.tensors, strict=True)}
        else:
            from ..errors import PredictorInputError

            raise PredictorInputError(f"got {len(bound.tensors)} input(s), the ONNX model takes {self._input_names}")
        try:
            arrays = self.session.run(self._output_names, feed)
        except Exception as exc:
            raise PredictorError(f"{self.path}: onnxruntime failed ({type(exc).__name__}: {exc})") from exc
        flat = [torch.from_numpy(np.asarray(a)) for a in arrays]
        return structure_outputs(flat, self.outputs, self.output_structure)


def load(
    path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    **kwargs: Any,
) -> ONNXRuntimePredictor:
    """Open an ONNX Runtime session for ``path`` with ``threads`` intra-op threads."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"{path}: no such ONNX file", path=path)
    ort = _import_ort()
    options = ort.SessionOptions()
    # ORT warns on stderr when an output's size differs from a static size in the graph's shape
    # annotations (an exporter's guess for a dynamic sequence); the parity check is the real test.
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    chosen = list(providers) if providers is not None else providers_for(device, ort.get_available_providers())
    provider_options: list[dict[str, Any]] = []
    index = torch.device(device).index or 0
    for p in chosen:
        provider_options.append(
            {"device_id": index} if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else {}
        )
    try:
        session = ort.InferenceSession(path, sess_options=options, providers=chosen, provider_options=provider_options)
    except Exception as exc:
        raise PredictorError(f"{path}: onnxruntime could not open the model ({type(exc).__name__}: {exc})") from exc
    logger.debug("%s: onnxruntime providers %s", path, session.get_providers())
    inputs, outputs = session_specs(session)
    fill_missing(kwargs, inputs=inputs, outputs=outputs)
    return ONNXRuntimePredictor(session, device=device, path=path, threads=threads, **kwargs)
