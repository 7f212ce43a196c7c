"""The shared parity check: every artifact against eager PyTorch, through the users' loading code.

At each verification point (batch 1, 3 and 17 when the batch is dynamic; with other dynamic
dimensions, sizes such as 3, 17 and 64 of each, see :mod:`torchkeep.export._dims`) fresh random
inputs are drawn, shaped and typed like the examples:

* floating inputs: normal with the example's mean and standard deviation;
* integer inputs: uniform over the example's ``[min, max]`` (token ids stay valid ids);
* bool inputs: entries of the example, resampled along each dynamic dimension (a mask keeps a
  realistic pattern);
* inputs without a batch dimension: the example itself.

The reference is the eager model in float64 where it runs in float64 (else in its own dtype;
models with more than 2 GiB of weights are compared in their own dtype, since a float64 copy
would double their memory).
The artifact runs through a *runner*: by default ``torchkeep.runtime.load_predictor(path,
backend=...)``, the very code users load artifacts with, so a passing check means the artifact
works the way it will be used.

Per output: ``max_abs = max |a - r|`` and ``max_rel = max |a - r| / max(|r|, atol)`` (bounded near
zero). An output fails when any element has ``|a - r| > atol + rtol * |r|`` (``torch.allclose``
semantics; NaN matches NaN), or when its shape differs (a batch size baked into the artifact).
Tolerances depend on the eager output's dtype (:data:`DEFAULT_TOLERANCES`); an artifact that
computes in reduced precision (fp16, int8) is held to :data:`PRECISION_TOLERANCES` instead,
whose ``atol`` is relative to the output's largest reference value (quantization error scales
with the values), and a few formats have their own (:data:`FORMAT_TOLERANCES`). The export
option ``tolerances={"int8": (rtol, atol)}`` replaces a default; ``rtol``/``atol`` given to
:func:`torchkeep.export` override them all for every output.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ExportParityError, PredictorError
from ._dims import Point
from ._examples import ExportExamples

__all__ = [
    "DEFAULT_TOLERANCES",
    "FORMAT_TOLERANCES",
    "PRECISION_TOLERANCES",
    "EagerReference",
    "Tolerance",
    "ParityResult",
    "check_parity",
    "load_runner",
    "point_label",
    "sample_inputs",
    "tolerance_for",
]

logger = logging.getLogger(__name__)

Runner = Callable[..., Any]
RunnerFactory = Callable[[Path, str, str], Runner]

# (rtol, atol) by the dtype eager produces. float32 allows for kernel differences across runtimes
# (fused ops, different summation order), not for real disagreement.
DEFAULT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-9),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
}

#: (rtol, atol as a fraction of the output's largest |reference|) for reduced-precision artifacts.
PRECISION_TOLERANCES: dict[str, tuple[float, float]] = {
    "fp16": (1e-2, 1e-2),
    "int8": (5e-2, 5e-2),
}

#: (rtol, atol) for fp32 formats whose kernels approximate (OpenVINO's CPU activations).
FORMAT_TOLERANCES: dict[str, tuple[float, float]] = {"openvino": (1e-3, 1e-4)}


@dataclass(frozen=True)
class Tolerance:
    """A tolerance that replaces the per-dtype default for floating outputs.

    Attributes:
        rtol: relative tolerance.
        atol: absolute tolerance, or with ``scaled`` a fraction of the output's largest |reference|.
        scaled: ``atol`` scales with the output (reduced precision).
        label: where it came from (``"int8"``, ``"openvino"``), recorded in ``export.json``.
    """

    rtol: float
    atol: float
    scaled: bool = False
    label: str = ""

    @classmethod
    def choose(
        cls, fmt: str, precision: str, overrides: Mapping[str, tuple[float, float]] | None = None
    ) -> Tolerance | None:
        """The tolerance for format ``fmt`` computing in ``precision`` (None: by dtype)."""
        user = overrides or {}
        if precision in PRECISION_TOLERANCES:
            r, a = user.get(precision, PRECISION_TOLERANCES[precision])
            return cls(r, a, scaled=True, label=precision)
        if fmt in user or fmt in FORMAT_TOLERANCES:
            r, a = user.get(fmt, FORMAT_TOLERANCES.get(fmt, (0.0, 0.0)))
            return cls(r, a, label=fmt)
        if precision in user:
            r, a = user[precision]
            return cls(r, a, label=precision)
        return None


_DOUBLE_REFERENCE_MAX_BYTES = 2 << 30

ParityResult = dict[int | str, dict[str, dict[str, float]]]


def tolerance_for(dtype: torch.dtype, rtol: float | None, atol: float | None) -> tuple[float, float]:
    """The (rtol, atol) used for an output of ``dtype``: exact for integers and bools."""
    default = DEFAULT_TOLERANCES.get(dtype, (0.0, 0.0))
    return (default[0] if rtol is None else rtol, default[1] if atol is None else atol)


def _as_point(examples: ExportExamples, point: int | Point) -> Point:
    if isinstance(point, int):
        batch = examples.dims.batch_name
        return {batch: point} if batch is not None else {}
    return point


def sample_inputs(examples: ExportExamples, point: int | Point, generator: torch.Generator) -> list[torch.Tensor]:
    """Fresh inputs at ``point`` (dim name → size; an int is the batch size), like the user's examples."""
    sizes = _as_point(examples, point)
    out = []
    for t, batched, dims in zip(examples.user_inputs, examples.batched, examples.dims.per_input, strict=True):
        if not batched and not dims:
            out.append(t.clone())
            continue
        shape = tuple(sizes.get(dims[d], n) if d in dims else n for d, n in enumerate(t.shape))
        if t.dtype.is_floating_point or t.dtype.is_complex:
            ref = t.double()
            mean = float(ref.mean()) if ref.numel() else 0.0
            std = float(ref.std()) if ref.numel() > 1 else 1.0
            if not math.isfinite(std) or std == 0.0:
                std = 1.0
            if not math.isfinite(mean):
                mean = 0.0
            out.append((torch.randn(shape, generator=generator, dtype=torch.float64) * std + mean).to(t.dtype))
        elif t.dtype == torch.bool:
            picked = t
            for d in sorted({0, *dims} if batched else dims):
                rows = torch.randint(0, t.shape[d], (shape[d],), generator=generator)
                picked = picked.index_select(d, rows)
            out.append(picked.clone())
        else:
            lo, hi = (int(t.min()), int(t.max())) if t.numel() else (0, 0)
            out.append(torch.randint(lo, hi + 1, shape, generator=generator, dtype=torch.int64).to(t.dtype))
    return out


def point_label(examples: ExportExamples, point: Point) -> int | str:
    """How a point is keyed in the report: the batch size alone, or ``"batch=3,seq=17"``."""
    names = list(point)
    if not names:
        return examples.example_batch
    if names == [examples.dims.batch_name]:
        return point[names[0]]
    return ",".join(f"{n}={v}" for n, v in point.items())


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )


class EagerReference:
    """Eager outputs for the parity check: in float64 when the model runs in float64."""

    def __init__(self, model: torch.nn.Module, examples: ExportExamples) -> None:
        self.model = model
        self.examples = examples
        self.double: torch.nn.Module | None = None
        if _param_bytes(model) <= _DOUBLE_REFERENCE_MAX_BYTES:
            try:
                self.double = copy.deepcopy(model).double().eval()
            except Exception as exc:  # deepcopy of exotic modules: fall back to the model's own dtype
                logger.debug("no float64 reference (%s); comparing in the model's dtype", exc)

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Eager outputs (on the CPU) for ``inputs`` (moved to the examples' device)."""
        device = self.examples.inputs[0].device
        inputs = [t.to(device) for t in inputs]
        with torch.no_grad():
            if self.double is not None:
                try:
                    wide = [t.double() if t.dtype.is_floating_point else t for t in inputs]
                    outs = self.examples.flatten_outputs(self.examples.call(self.double, wide))
                    return [o.cpu() for o in outs]
                except Exception as exc:
                    logger.debug("float64 reference failed (%s); comparing in the model's dtype", exc)
                    self.double = None
            outs = self.examples.flatten_outputs(self.examples.call(self.model, list(inputs)))
            return [o.cpu() for o in outs]


def load_runner(path: Path, backend: str, device: str) -> Runner:
    """Load an artifact the way users do: ``torchkeep.runtime.load_predictor``."""
    try:
        from ..runtime import load_predictor
    except ImportError as exc:  # pragma: no cover - only before the runtime package exists
        raise PredictorError(
            "verification needs torchkeep.runtime.load_predictor, which this build lacks; pass verify=False"
        ) from exc
    predictor: Runner = load_predictor(path, backend=backend, device=device)
    return predictor


def _compare(
    fmt: str, name: str, got: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float, batch: int | str
) -> dict[str, float]:
    at = f"batch {batch}" if isinstance(batch, int) else batch
    if tuple(got.shape) != tuple(ref.shape):
        raise ExportParityError(
            f"{fmt}: output '{name}' has shape {tuple(got.shape)} at {at}, eager gives "
            f"{tuple(ref.shape)}; the artifact has a baked-in shape. Export with an example of size >= 2 in each "
            "dynamic dimension, or keep the dimension static (dynamic_batch=False / dynamic_shapes).",
            format=fmt,
            output=name,
            max_abs_error=float("inf"),
            max_rel_error=float("inf"),
        )
    if not (ref.dtype.is_floating_point or ref.dtype.is_complex):
        mismatched = int((got.to(ref.dtype) != ref).sum())
        max_abs = float((got.double() - ref.double()).abs().max()) if ref.numel() else 0.0
        denom = float(ref.double().abs().max()) if ref.numel() else 1.0
        result = {"max_abs": max_abs, "max_rel": max_abs / max(denom, 1.0)}
        ok = mismatched == 0
    else:
        a, r = got.detach().cpu().double(), ref.detach().cpu().double()
        both_nan = torch.isnan(a) & torch.isnan(r)
        diff = torch.where(both_nan, torch.zeros_like(a), (a - r).abs())
        diff = torch.nan_to_num(diff, nan=math.inf)
        max_abs = float(diff.max()) if diff.numel() else 0.0
        rel = diff / r.abs().clamp_min(max(atol, 1e-30))
        max_rel = float(rel.max()) if rel.numel() else 0.0
        result = {"max_abs": max_abs, "max_rel": max_rel}
        ok = bool((diff <= atol + rtol * r.abs().nan_to_num(nan=0.0)).all())
    if not ok:
        raise ExportParityError(
            f"{fmt}: output '{name}' differs from eager PyTorch at {at}: max abs error "
            f"{result['max_abs']:.3g}, max rel error {result['max_rel']:.3g} (allowed rtol={rtol:g}, atol={atol:g}). "
            "Check for ops the format does not support exactly, or loosen rtol/atol if the difference is expected "
            "(e.g. fp16).",
            format=fmt,
            output=name,
            max_abs_error=result["max_abs"],
            max_rel_error=result["max_rel"],
        )
    return result


def check_parity(
    fmt: str,
    runner: Runner,
    reference: EagerReference,
    examples: ExportExamples,
    *,
    points: Sequence[Point],
    rtol: float | None,
    atol: float | None,
    seed: int,
    device: str = "cpu",
    tolerance_dtype: torch.dtype | None = None,
    special: Tolerance | None = None,
) -> tuple[ParityResult, dict[str, dict[str, float]]]:
    """Run ``runner`` and eager on the same fresh inputs at each point and compare every output.

    Returns ``(parity, tolerance)``: point label (:func:`point_label`) → output →
    ``{"max_abs", "max_rel"}``, and the
    tolerance used per output (chosen by the eager output's dtype, or by ``tolerance_dtype``
    for an artifact that computes in a narrower type, e.g. an fp16 TensorRT engine; or
    ``special`` for a reduced-precision artifact, see :class:`Tolerance`).

    Raises:
        ExportParityError: an output differs beyond tolerance (names format, output and error).
        PredictorError: the runner failed on valid inputs.
    """
    generator = torch.Generator().manual_seed(seed)
    tolerance = {}
    for name, dtype in zip(examples.output_names, examples.output_dtypes(), strict=True):
        use = tolerance_dtype if tolerance_dtype is not None and dtype.is_floating_point else dtype
        r, a = tolerance_for(use, rtol, atol)
        if special is not None and dtype.is_floating_point:
            r = special.rtol if rtol is None else rtol
            a = special.atol if atol is None else atol
        tolerance[name] = {"rtol": r, "atol": a}
    parity: ParityResult = {}
    for point in points:
        batch = point_label(examples, point)
        inputs = sample_inputs(examples, point, generator)
        expected = reference(inputs)
        moved = [t.to(device) for t in inputs] if device != "cpu" else inputs
        try:
            with torch.inference_mode():
                got = examples.flatten_outputs(examples.call(runner, moved))
        except ExportParityError:
            raise
        except Exception as exc:
            raise ExportParityError(
                f"{fmt}: the artifact failed to run at {batch if isinstance(batch, str) else f'batch {batch}'}: {exc}",
                format=fmt,
                output="",
            ) from exc
        if len(got) != len(expected):
            raise ExportParityError(
                f"{fmt}: the artifact returns {len(got)} outputs, eager returns {len(expected)}",
                format=fmt,
                output="",
            )
        per: dict[str, dict[str, float]] = {}
        for name, g, e in zip(examples.output_names, got, expected, strict=True):
            tol = tolerance[name]
            allowed = tol["atol"]
            if special is not None and special.scaled and atol is None and e.is_floating_point() and e.numel():
                allowed *= max(float(e.double().abs().max()), 1e-12)
            per[name] = _compare(fmt, name, g.cpu(), e, tol["rtol"], allowed, batch)
        parity[batch] = per
    return parity, tolerance
