"""The backend table, and the one rule that picks the fastest backend from measurements.

Every deployment target is one :class:`Backend` row in :data:`BACKEND_TABLE`: the export format
that writes it, the module that runs it, the file names it owns, its chart colour, where it
stands in the CPU and CUDA preference orders, and the package (and ``torchkeep[extra]``) it
needs. :func:`torchkeep.export`, :func:`torchkeep.load_predictor`, ``torchkeep bench`` and
``torchkeep serve`` all read this table, so a new target is a new row plus its two modules
(``torchkeep/export/<format>.py`` and ``torchkeep/runtime/<backend>.py``).

Which measured backend is fastest is decided in one place, :func:`rank_backends`, over the
``"benchmark"`` section that ``tk.benchmark`` writes into ``export.json``.

Example:
    >>> from torchkeep.runtime import BACKEND_TABLE, backend_row
    >>> backend_row("onnxruntime").format, backend_row("onnxruntime").extra
    ('onnx', 'onnx')
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError, missing_dependency

__all__ = [
    "BACKEND_TABLE",
    "Backend",
    "backend_row",
    "fastest_backend",
    "fixed_order",
    "format_backend",
    "load_module",
    "rank_backends",
    "require",
]


@dataclass(frozen=True)
class Backend:
    """One deployment target: how it is written, run, recognised, drawn and ranked.

    Attributes:
        name: the backend name (``load_predictor(backend=...)``, bench rows, ``export.json``).
        format: the export format name (``tk.export(formats=...)``), or None when nothing
            exports to it (eager runs the source model).
        exporter: ``"module:Class"`` of the exporter, imported only when that format is asked for.
        predictor: the module (under ``torchkeep.runtime``) whose ``load()`` returns the predictor.
        suffix: the exported file's suffix (``model<suffix>``).
        patterns: file-name endings that this backend runs, checked longest first.
        color: the colour of this backend in every benchmark chart.
        cpu_rank / cuda_rank: place in the fixed preference order when nothing was measured
            (lower is preferred; None: never picked automatically on that device).
        package: the Python package it imports (None: torch alone).
        extra: the ``torchkeep[extra]`` that installs ``package``.
        cuda_only: runs on CUDA only (skipped on CPU).
        precision: ``"fp32"`` (the model's own dtype), ``"fp16"`` or ``"int8"``: picks the parity
            tolerance (see :data:`torchkeep.export.PRECISION_TOLERANCES`). Reduced-precision
            targets are never picked by the fixed order, only when a benchmark measured them.
    """

    name: str
    format: str | None
    exporter: str | None
    predictor: str
    suffix: str
    patterns: tuple[str, ...]
    color: str
    cpu_rank: int | None
    cuda_rank: int | None
    package: str | None = None
    extra: str | None = None
    cuda_only: bool = False
    precision: str = "fp32"


# The preference orders encode what the runtime tests on this project's machines showed: ONNX
# Runtime and AOTInductor beat the graph interpreters on CPU; TensorRT leads on CUDA.
BACKEND_TABLE: tuple[Backend, ...] = (
    Backend("eager", None, None, "eager", ".safetensors", (".safetensors",), "#7f7f7f", 90, 90),
    Backend("pt2", "pt2", "torchkeep.export.pt2:Pt2Exporter", "pt2", ".pt2", (".pt2",), "#1f77b4", 30, 40),
    Backend(
        "onnxruntime",
        "onnx",
        "torchkeep.export.onnx:OnnxExporter",
        "onnxruntime",
        ".onnx",
        (".onnx",),
        "#2ca02c",
        10,
        30,
        package="onnxruntime",
        extra="onnx",
    ),
    Backend(
        "torchscript",
        "torchscript",
        "torchkeep.export.torchscript:TorchScriptExporter",
        "torchscript",
        ".torchscript.pt",
        (".torchscript.pt", ".pt", ".jit", ".ts", ".torchscript"),
        "#ff7f0e",
        40,
        50,
    ),
    Backend(
        "aoti", "aoti", "torchkeep.export.aoti:AotiExporter", "aoti", ".aoti.pt2", (".aoti.pt2",), "#9467bd", 20, 20
    ),
    Backend(
        "tensorrt",
        "tensorrt",
        "torchkeep.export.tensorrt:TensorRTExporter",
        "tensorrt",
        ".engine",
        (".engine", ".plan", ".trt"),
        "#d62728",
        None,
        10,
        package="tensorrt",
        extra="tensorrt",
        cuda_only=True,
    ),
    Backend(
        "openvino",
        "openvino",
        "torchkeep.export.openvino:OpenVinoExporter",
        "openvino",
        ".xml",
        (".xml",),
        "#17becf",
        15,
        None,
        package="openvino",
        extra="openvino",
    ),
    Backend(
        "onnxruntime-int8",
        "onnx-int8",
        "torchkeep.export.quantized:OnnxInt8Exporter",
        "onnxruntime",
        ".int8.onnx",
        (".int8.onnx",),
        "#98df8a",
        None,
        None,
        package="onnxruntime",
        extra="onnx",
        precision="int8",
    ),
    Backend(
        "onnxruntime-fp16",
        "onnx-fp16",
        "torchkeep.export.quantized:OnnxFp16Exporter",
        "onnxruntime",
        ".fp16.onnx",
        (".fp16.onnx",),
        "#bcbd22",
        None,
        None,
        package="onnxruntime",
        extra="onnx",
        precision="fp16",
    ),
    Backend(
        "torchscript-int8",
        "torchscript-int8",
        "torchkeep.export.quantized:TorchScriptInt8Exporter",
        "torchscript",
        ".int8.torchscript.pt",
        (".int8.torchscript.pt",),
        "#ffbb78",
        None,
        None,
        precision="int8",
    ),
    Backend(
        "executorch",
        "executorch",
        "torchkeep.export.executorch:ExecuTorchExporter",
        "executorch",
        ".pte",
        (".pte",),
        "#8c564b",
        60,
        None,
        package="executorch",
        extra="executorch",
    ),
)

_BY_NAME = {b.name: b for b in BACKEND_TABLE}
_BY_FORMAT = {b.format: b for b in BACKEND_TABLE if b.format is not None}


def backend_row(name: str) -> Backend:
    """The table row of backend ``name`` (a format name such as ``"onnx"`` is accepted too).

    Raises:
        UsageError: no such backend or format.

    Example:
        >>> backend_row("onnx").name
        'onnxruntime'
    """
    row = _BY_NAME.get(name) or _BY_FORMAT.get(name)
    if row is None:
        raise UsageError(f"unknown backend {name!r}; expected one of {', '.join(_BY_NAME)}", argument="backend")
    return row


def format_backend(fmt: str) -> str:
    """The backend that runs artifacts of export format ``fmt`` (``"onnx"`` → ``"onnxruntime"``).

    Example:
        >>> format_backend("onnx")
        'onnxruntime'
    """
    row = _BY_FORMAT.get(fmt)
    return row.name if row is not None else fmt


def fixed_order(device: str) -> list[str]:
    """Backends in the preference order used when nothing was measured on ``device``.

    Example:
        >>> fixed_order("cpu")[:2]
        ['onnxruntime', 'aoti']
    """
    cuda = device.startswith("cuda")
    ranked = [(b.cuda_rank if cuda else b.cpu_rank, b.name) for b in BACKEND_TABLE]
    return [name for rank, name in sorted((r, n) for r, n in ranked if r is not None)]


def require(row: Backend, feature: str) -> Any:
    """Import ``row.package`` or raise the standard :class:`~torchkeep.MissingDependencyError`.

    Example:
        >>> require(backend_row("pt2"), "the pt2 backend") is None
        True
    """
    if row.package is None:
        return None
    try:
        return importlib.import_module(row.package)
    except ImportError as exc:
        raise missing_dependency(row.package, row.extra or row.name, feature) from exc


def load_module(dotted: str) -> Any:
    """The object named ``"package.module:attribute"`` (exporters are found this way, lazily)."""
    module, _, attribute = dotted.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _rows(benchmark: Any) -> list[dict[str, Any]]:
    # export.json is hostile input: keep only well-formed rows.
    raw = benchmark.get("results") if isinstance(benchmark, Mapping) else None
    return [
        dict(r)
        for r in (raw if isinstance(raw, list) else [])
        if isinstance(r, Mapping)
        and isinstance(r.get("p50_ms"), int | float)
        and not isinstance(r.get("p50_ms"), bool)
        and math.isfinite(r["p50_ms"])
        and r["p50_ms"] >= 0
        and isinstance(r.get("batch_size"), int)
        and isinstance(r.get("backend"), str)
        and r.get("error") is None
    ]


def _nearest(sizes: Iterable[int], batch_size: int) -> int:
    # Ties go to the larger batch size: a server batches up to its maximum.
    return min(sizes, key=lambda s: (abs(s - batch_size), -s))


def rank_backends(benchmark: Any, *, device: str = "cpu", batch_size: int | None = None) -> list[str]:
    """Measured backends, fastest first: the single rule behind every "fastest" in torchkeep.

    ``benchmark`` is the ``"benchmark"`` section of ``export.json`` (``{"device", "results":
    [{"backend", "batch_size", "p50_ms"}, ...], "fastest": {...}}``), or any mapping with
    ``"results"`` rows of that shape. A benchmark measured on another device type ranks nothing.

    * ``batch_size`` given: ranked by p50 latency at that batch size, or at the nearest measured
      one (ties: the larger).
    * ``batch_size`` None: ranked by the geometric mean of each backend's latency relative to the
      best backend at each batch size; backends that missed a batch size come last.
    * no usable rows: the ``"fastest"`` map (batch size → backend) of an older section, read the
      same way.

    Example:
        >>> rows = [{"backend": "pt2", "batch_size": 1, "p50_ms": 2.0},
        ...         {"backend": "onnxruntime", "batch_size": 1, "p50_ms": 1.0}]
        >>> rank_backends({"device": "cpu", "results": rows}, batch_size=8)
        ['onnxruntime', 'pt2']
    """
    if not isinstance(benchmark, Mapping):
        return []
    if str(benchmark.get("device", "cpu")).split(":")[0] != device.split(":")[0]:
        return []
    rows = _rows(benchmark)
    if not rows:
        fastest = benchmark.get("fastest")
        pairs: list[tuple[int, str]] = []
        for key, backend in fastest.items() if isinstance(fastest, Mapping) else ():
            try:
                pairs.append((int(key), str(backend)))
            except (TypeError, ValueError):
                continue
        if batch_size is not None and pairs:
            size = _nearest((p[0] for p in pairs), batch_size)
            return [b for s, b in pairs if s == size]
        return list(dict.fromkeys(b for _, b in sorted(pairs)))
    if batch_size is not None:
        size = _nearest({r["batch_size"] for r in rows}, batch_size)
        at = sorted((r for r in rows if r["batch_size"] == size), key=lambda r: float(r["p50_ms"]))
        return list(dict.fromkeys(str(r["backend"]) for r in at))
    best: dict[int, float] = {}
    for r in rows:
        best[r["batch_size"]] = min(best.get(r["batch_size"], math.inf), float(r["p50_ms"]))
    score: dict[str, dict[int, float]] = {}
    for r in rows:
        ratio = float(r["p50_ms"]) / best[r["batch_size"]] if best[r["batch_size"]] > 0 else 1.0
        per = score.setdefault(str(r["backend"]), {})
        per[r["batch_size"]] = min(per.get(r["batch_size"], math.inf), math.log(max(ratio, 1e-300)))
    return sorted(score, key=lambda b: (len(best) - len(score[b]), sum(score[b].values()) / len(score[b])))


def fastest_backend(
    manifest: Mapping[str, Any],
    *,
    device: str = "cpu",
    batch_size: int | None = None,
    available: Collection[str] | None = None,
) -> str | None:
    """The measured-fastest backend of an export directory's ``export.json``, or None.

    Only backends whose artifact exported and verified (``ok``) count, plus eager (the source
    model); ``available`` narrows further. None when nothing usable was measured on ``device``:
    :func:`torchkeep.load_predictor` then uses :func:`fixed_order`.

    Example:
        >>> manifest = {"artifacts": {"onnx": {"ok": True, "backend": "onnxruntime"}},
        ...             "benchmark": {"fastest": {"1": "onnxruntime"}}}
        >>> fastest_backend(manifest, batch_size=4)
        'onnxruntime'
    """
    artifacts = manifest.get("artifacts")
    ok = {
        str(a.get("backend") or format_backend(fmt))
        for fmt, a in (artifacts.items() if isinstance(artifacts, Mapping) else ())
        if isinstance(a, Mapping) and a.get("ok")
    }
    for name in rank_backends(manifest.get("benchmark"), device=device, batch_size=batch_size):
        if (name in ok or name == "eager") and (available is None or name in available):
            return name
    return None
