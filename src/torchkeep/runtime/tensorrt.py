"""TensorRT engines (``.engine`` / ``.plan``), CUDA only, through the name-based TensorRT 10 API.

An engine only runs with the TensorRT version and GPU architecture it was built for, and a
mismatched engine either fails to deserialize with an opaque message or misbehaves. So every
engine travels with a sidecar JSON (``model.engine.json``, or ``model.json`` next to
``model.engine``)::

    {"tensorrt": "10.3.0", "compute_capability": [8, 9], "device_name": "NVIDIA L4"}

which is checked before deserializing; a mismatch raises :class:`~torchkeep.errors.PredictorError`
saying to rebuild the engine on this machine. Specs: from export.json when present, else from the
engine's I/O tensors (``-1`` dims become None).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

import torch

from ..errors import CheckpointNotFoundError, PredictorError, UsageError, missing_dependency
from ._base import TensorSpec
from ._common import BasePredictor, fill_missing
from ._inputs import Bound, structure_outputs

__all__ = ["TensorRTPredictor", "check_sidecar", "load", "sidecar_path"]

logger = logging.getLogger(__name__)


def _import_trt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise missing_dependency("tensorrt", "tensorrt", "the tensorrt backend") from exc
    return tensorrt


def sidecar_path(path: str) -> str | None:
    """The sidecar JSON of an engine file, or None when there is none."""
    root, _ = os.path.splitext(path)
    for candidate in (path + ".json", root + ".json"):
        if os.path.isfile(candidate):
            return candidate
    return None


def _capability(value: Any) -> tuple[int, int] | None:
    if isinstance(value, str) and "." in value:
        major, minor = value.split(".", 1)
        return int(major), int(minor)
    if isinstance(value, list | tuple) and len(value) == 2:
        return int(value[0]), int(value[1])
    return None


def check_sidecar(path: str, sidecar: dict[str, Any], trt_version: str, capability: tuple[int, int]) -> None:
    """Refuse an engine built by another TensorRT version or for another GPU architecture.

    Example:
        >>> check_sidecar("m.engine", {"tensorrt": "10.3.0", "compute_capability": [8, 9]}, "10.3.0", (8, 9))
    """
    built_with = str(sidecar.get("tensorrt", ""))
    if built_with and built_with != trt_version:
        raise PredictorError(
            f"{path}: engine built with TensorRT {built_with}, this machine has TensorRT {trt_version}; "
            "engines are not portable across versions — rebuild it here (tk.export(..., formats=('tensorrt',)))"
        )
    built_for = _capability(sidecar.get("compute_capability"))
    if built_for is not None and built_for != capability:
        raise PredictorError(
            f"{path}: engine built for compute capability {built_for[0]}.{built_for[1]} "
            f"({sidecar.get('device_name', 'another GPU')}), this GPU is {capability[0]}.{capability[1]}; "
            "rebuild the engine on this GPU"
        )


class TensorRTPredictor(BasePredictor):
    """Runs a deserialized engine with ``set_tensor_address`` + ``execute_async_v3`` on torch's stream.

    Example:
        >>> import torchkeep as tk
        >>> p = tk.load_predictor("exported/model.engine", device="cuda")  # doctest: +SKIP
        >>> p.backend  # doctest: +SKIP
        'tensorrt'
    """

    backend = "tensorrt"

    def __init__(self, engine: Any, trt: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise PredictorError(f"{self.path}: TensorRT could not create an execution context (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._in = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._out = [n for n in names if engine.get_tensor_mode(n) != trt.TensorIOMode.INPUT]
        self._runtime: Any = None  # the engine must not outlive its runtime
        # One execution context holds per-call shapes and addresses: one call at a time.
        self._lock = threading.Lock()
        self._dtypes = {n: _torch_dtype(trt, engine.get_tensor_dtype(n)) for n in names}

    def _run(self, bound: Bound) -> Any:
        with self._lock:
            return self._run_locked(bound)

    def _run_locked(self, bound: Bound) -> Any:
        names = bound.names if bound.names is not None and set(bound.names) == set(self._in) else self._in
        if len(bound.tensors) != len(self._in):
            from ..errors import PredictorInputError

            raise PredictorInputError(f"got {len(bound.tensors)} input(s), the engine takes {self._in}")
        device = torch.device(self.device)
        stream = torch.cuda.current_stream(device)
        keep = []
        for name, tensor in zip(names, bound.tensors, strict=True):
            t = tensor.to(device=device, dtype=self._dtypes[name]).contiguous()
            keep.append(t)
            if not self.context.set_input_shape(name, tuple(t.shape)):
                from ..errors import PredictorInputError

                raise PredictorInputError(
                    f"input '{name}': shape {tuple(t.shape)} is outside the engine's optimization profile "
                    f"{self.engine.get_tensor_profile_shape(name, 0)} (min, opt, max); rebuild with a wider profile"
                )
            self.context.set_tensor_address(name, t.data_ptr())
        outs = []
        for name in self._out:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtypes[name], device=device)
            self.context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise PredictorError(f"{self.path}: TensorRT execute_async_v3 failed (see the TensorRT log above)")
        stream.synchronize()
        return structure_outputs(outs, self.outputs, self.output_structure)


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.int8: torch.int8,
        trt.bool: torch.bool,
    }
    for attr, td in (("int64", torch.int64), ("bfloat16", torch.bfloat16), ("uint8", torch.uint8)):
        if hasattr(trt, attr):
            table[getattr(trt, attr)] = td
    if dtype not in table:
        raise PredictorError(f"TensorRT dtype {dtype} has no torch equivalent")
    return table[dtype]


def _specs(engine: Any, trt: Any, mode_input: bool) -> list[TensorSpec]:
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if (engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT) != mode_input:
            continue
        shape = tuple(None if d < 0 else int(d) for d in engine.get_tensor_shape(name))
        dtype = str(_torch_dtype(trt, engine.get_tensor_dtype(name))).removeprefix("torch.")
        out.append(TensorSpec(name, shape, dtype))
    return out


def load(path: str | os.PathLike[str], *, device: str = "cuda:0", **kwargs: Any) -> TensorRTPredictor:
    """Deserialize an engine after checking its sidecar against this machine."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"{path}: no such TensorRT engine", path=path)
    if torch.device(device).type != "cuda":
        raise UsageError(
            f"{path}: TensorRT engines run on CUDA only; pass device='cuda' (got {device!r})", argument="device"
        )
    trt = _import_trt()
    dev = torch.device(device)
    capability = torch.cuda.get_device_capability(dev)
    side = sidecar_path(path)
    if side is None:
        logger.warning("%s: no sidecar JSON; cannot check TensorRT version and GPU before loading", path)
    else:
        try:
            with open(side, encoding="utf-8") as f:
                sidecar = json.load(f)
        except (OSError, ValueError) as exc:
            raise PredictorError(f"{side}: unreadable engine sidecar ({exc})") from exc
        if not isinstance(sidecar, dict):
            raise PredictorError(f"{side}: expected a JSON object with 'tensorrt' and 'compute_capability'")
        check_sidecar(path, sidecar, trt.__version__, capability)
    with torch.cuda.device(dev):
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with open(path, "rb") as f:
            engine = runtime.deserialize_cuda_engine(f.read())
        if engine is None:
            raise PredictorError(
                f"{path}: TensorRT {trt.__version__} could not deserialize this engine; it was probably built by "
                "another TensorRT version or for another GPU — rebuild it here"
            )
        fill_missing(kwargs, inputs=_specs(engine, trt, True), outputs=_specs(engine, trt, False))
        predictor = TensorRTPredictor(engine, trt, device=device, path=path, **kwargs)
    predictor._runtime = runtime
    return predictor
