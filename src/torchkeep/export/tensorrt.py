"""``tensorrt``: ONNX → a serialized TensorRT engine (``model.engine`` + ``model.engine.json``).

Uses the name-based TensorRT 10/11 Python API only: ``OnnxParser.parse_from_file`` into a
network, a builder config with a workspace **memory-pool limit**, one **optimization profile**
whose batch range is ``[1, max_batch_size]`` (tuned for ``opt_batch_size``), and
``build_serialized_network``. (The tutorials' ``max_workspace_size``, ``fp16_mode``,
``max_batch_size`` on the builder, ``build_cuda_engine`` and binding indices were removed in
TensorRT 10.) Inference on the engine goes through named tensors: ``set_input_shape``,
``set_tensor_address`` and ``execute_async_v3`` (see ``torchkeep.runtime``).

Half precision is done the TensorRT 11 way: the model is cast to fp16 and exported to an fp16
ONNX, and the network is created **strongly typed**, so TensorRT keeps the ONNX types instead
of choosing precisions itself (the ``BuilderFlag.FP16`` switch is gone in TensorRT 11).

An engine only runs on the TensorRT version and GPU architecture that built it, so the sidecar
``model.engine.json`` records both; the runtime compares them before deserializing and refuses
a mismatched engine with a clear error instead of crashing::

    {"tensorrt": "10.7.0", "compute_capability": [9, 0], "device_name": "NVIDIA H100",
     "precision": "fp32", "strongly_typed": false, "workspace_bytes": 1073741824,
     "profile": {"min": 1, "opt": 8, "max": 64},
     "inputs": [TensorSpec.to_json...], "outputs": [...]}

Needs CUDA and the ``tensorrt`` package (``pip install 'torchkeep[tensorrt]'``).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import ExportError, missing_dependency
from ._examples import ExportExamples
from ._messages import summarize_error
from ._options import ExportOptions
from .onnx import write_onnx

__all__ = ["ENGINE_METADATA_SUFFIX", "TensorRTExporter", "engine_metadata_path"]

logger = logging.getLogger(__name__)

ENGINE_METADATA_SUFFIX = ".json"


def engine_metadata_path(engine: Path) -> Path:
    """``model.engine`` → ``model.engine.json`` (the sidecar with version and GPU)."""
    return engine.with_name(engine.name + ENGINE_METADATA_SUFFIX)


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise missing_dependency("tensorrt", "tensorrt", "TensorRT export") from exc
    return trt


class _HalfExamples(ExportExamples):
    """The same examples with floating inputs cast to fp16 (for the fp16 ONNX)."""

    def __init__(self, base: ExportExamples) -> None:
        self.__dict__.update(base.__dict__)
        self.inputs = [t.half() if t.dtype.is_floating_point else t for t in base.inputs]
        self._exported = None
        self._export_error = None


class TensorRTExporter:
    """ONNX (fp32, or fp16 for a strongly typed network) → ``build_serialized_network``.

    Example:
        >>> TensorRTExporter().suffix
        '.engine'
    """

    name = "tensorrt"
    suffix = ".engine"
    backend = "tensorrt"

    def export(
        self, model: torch.nn.Module, examples: ExportExamples, path: Path, options: ExportOptions
    ) -> list[Path]:
        """Build the engine on the current CUDA device and write it with its metadata sidecar."""
        trt = _import_tensorrt()
        if not torch.cuda.is_available():
            raise ExportError(
                "tensorrt: building an engine needs a CUDA GPU and none is available; export 'onnx' here "
                "and build the engine on the deployment GPU.",
                format=self.name,
                step="build",
            )
        fp16 = options.tensorrt_precision == "fp16"
        src_model, src_examples = model, examples
        if fp16:
            src_model = copy.deepcopy(model).half().eval()
            src_examples = _HalfExamples(examples)
        tmp = Path(tempfile.mkdtemp(prefix=".tk-trt-", dir=path.parent))
        try:
            onnx_path = tmp / "model.onnx"
            write_onnx(src_model, src_examples, onnx_path, options, fmt=self.name)
            engine = self._build(trt, onnx_path, examples, options, strongly_typed=fp16)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        path.write_bytes(engine)
        meta = {
            "tensorrt": str(trt.__version__),
            "compute_capability": list(torch.cuda.get_device_capability()),
            "device_name": torch.cuda.get_device_name(),
            "precision": options.tensorrt_precision,
            "strongly_typed": fp16,
            "workspace_bytes": options.tensorrt_workspace_bytes,
            "profile": self._profile_range(examples, options),
            "inputs": [s.to_json() for s in examples.input_specs()],
            "outputs": [s.to_json() for s in examples.output_specs()],
        }
        meta_path = engine_metadata_path(path)
        meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return [path, meta_path]

    @staticmethod
    def _profile_range(examples: ExportExamples, options: ExportOptions) -> dict[str, int]:
        if not examples.dynamic_batch:
            b = examples.example_batch
            return {"min": b, "opt": b, "max": b}
        opt = options.opt_batch_size or min(max(examples.example_batch, 1), options.max_batch_size)
        return {"min": 1, "opt": opt, "max": options.max_batch_size}

    def _build(
        self, trt: Any, onnx_path: Path, examples: ExportExamples, options: ExportOptions, *, strongly_typed: bool
    ) -> bytes:
        trt_logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(trt_logger)
        flags = 0
        if strongly_typed:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, trt_logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
            raise ExportError(
                f"tensorrt: the ONNX parser rejected the model: {errors or 'no details'}",
                format=self.name,
                step="parse",
            )
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.tensorrt_workspace_bytes)
        rng = self._profile_range(examples, options)
        profile = builder.create_optimization_profile()
        shapes = {s.name: s.shape for s in examples.input_specs()}
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            spec = shapes.get(tensor.name)
            if spec is None:  # pragma: no cover - the ONNX inputs are named by us
                raise ExportError(f"tensorrt: unexpected network input {tensor.name!r}", format=self.name, step="parse")
            rest = tuple(int(d or 0) for d in spec[1:])
            if spec and spec[0] is None:
                profile.set_shape(tensor.name, (rng["min"], *rest), (rng["opt"], *rest), (rng["max"], *rest))
            else:
                static = tuple(int(d) for d in spec if d is not None)
                profile.set_shape(tensor.name, static, static, static)
        config.add_optimization_profile(profile)
        try:
            serialized = builder.build_serialized_network(network, config)
        except Exception as exc:
            raise ExportError(
                f"tensorrt: build_serialized_network failed: {summarize_error(exc)}", format=self.name, step="build"
            ) from exc
        if serialized is None:
            raise ExportError(
                "tensorrt: build_serialized_network returned no engine (see TensorRT's log above); a larger "
                "tensorrt_workspace_bytes or a smaller max_batch_size may help.",
                format=self.name,
                step="build",
            )
        logger.info("tensorrt: built a %s engine (%d bytes)", options.tensorrt_precision, serialized.nbytes)
        return bytes(serialized)

    def describe_options(self, options: ExportOptions, files: list[Path]) -> dict[str, Any]:
        """Precision, workspace and the batch profile; the GPU and version sit in the sidecar."""
        meta: dict[str, Any] = {}
        if len(files) > 1 and files[1].exists():
            meta = json.loads(files[1].read_text(encoding="utf-8"))
        return {
            "precision": options.tensorrt_precision,
            "workspace_bytes": options.tensorrt_workspace_bytes,
            "profile": meta.get("profile"),
            "tensorrt_version": meta.get("tensorrt"),
            "compute_capability": meta.get("compute_capability"),
            "metadata_file": files[1].name if len(files) > 1 else None,
        }
