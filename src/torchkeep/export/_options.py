"""The format options of :func:`torchkeep.export` (``opset=``, ``torchscript_method=``, ...), checked up front."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from ..errors import UsageError

__all__ = ["ExportOptions"]


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
        verify_dims: sizes checked per dynamic dimension name, e.g. ``{"seq": (3, 17, 64)}``
            (None: 3, 17 and 64 for every dynamic dimension but the batch, within its range).
        verify_seed: seed of the random verification inputs.
        openvino_source: ``"torch"`` (convert the PyTorch model) or ``"onnx"`` (convert the ONNX
            export, for models OpenVINO's PyTorch frontend cannot take).
        calibration_data: example batches for static ONNX int8 quantization (``onnx-int8``):
            a list of inputs in the form ``example_inputs`` takes. None: dynamic quantization.
        tolerances: per precision (``"fp32"``, ``"fp16"``, ``"int8"``) or per format
            (``"openvino"``), ``(rtol, atol)`` replacing the defaults of
            :data:`~torchkeep.export.PRECISION_TOLERANCES`.
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
    verify_dims: Mapping[str, tuple[int, ...]] | None = None
    verify_seed: int = 0
    openvino_source: Literal["torch", "onnx"] = "torch"
    calibration_data: Any = None
    tolerances: Mapping[str, tuple[float, float]] | None = None
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
        if self.verify_dims is not None:
            if not isinstance(self.verify_dims, Mapping):
                raise bad("verify_dims", "a dict dimension name → sizes, e.g. {'seq': [3, 17, 64]}")
            checked = {}
            for key, values in self.verify_dims.items():
                sizes = tuple(values) if isinstance(values, (list, tuple)) else ()
                if not isinstance(key, str) or not sizes or not all(isinstance(v, int) and v >= 1 for v in sizes):
                    raise bad("verify_dims", "a dict dimension name → a non-empty list of ints >= 1")
                checked[key] = sizes
            object.__setattr__(self, "verify_dims", checked)
        if self.openvino_source not in ("torch", "onnx"):
            raise bad("openvino_source", "'torch' or 'onnx'")
        if self.calibration_data is not None and not (
            isinstance(self.calibration_data, (list, tuple)) and self.calibration_data
        ):
            raise bad("calibration_data", "a non-empty list of example inputs")
        if self.tolerances is not None:
            checked_tol: dict[str, tuple[float, float]] = {}
            for key, pair in self.tolerances.items() if isinstance(self.tolerances, Mapping) else [(None, None)]:
                ok = isinstance(key, str) and isinstance(pair, (tuple, list)) and len(pair) == 2
                if not ok or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in pair):
                    raise bad("tolerances", "a dict precision/format → (rtol, atol), e.g. {'int8': (0.05, 0.05)}")
                checked_tol[str(key)] = (float(pair[0]), float(pair[1]))
            object.__setattr__(self, "tolerances", checked_tol)
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
                if f.name == "calibration_data":
                    value = len(value)  # the number of batches; the tensors stay out of export.json
                elif isinstance(value, Mapping):
                    value = {k: list(v) for k, v in value.items()}
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out
