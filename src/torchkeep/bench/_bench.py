"""``tk.benchmark``: measure every backend of a model at several batch sizes, and remember the fastest.

How it measures (why each step is there):

1. Every target is loaded as a :class:`~torchkeep.runtime.Predictor`, so each backend pays the
   same input checking and conversion a real caller pays.
2. The same random inputs (made from the input specs) go to every backend at a batch size.
3. Each backend gets ``warmup`` untimed calls (allocation, lazy init, JIT), then timed calls until
   ``min_time`` seconds or ``max_iters`` calls, whichever comes first (at least ``min_iters``).
   The budget is split into ``rounds`` that visit the backends in turn, so a burst of load on a
   shared machine hits all backends alike instead of ruining one of them.
4. Latency is per call (``perf_counter_ns``); throughput is ``batch_size / p50 latency`` (the
   mean, ``mean_ms``, is at the mercy of stalls caused by other processes);
   speedup is eager's p50 / the backend's p50 at the same batch size. The process's CPU time
   per call is recorded too: on a loaded machine latency stretches with the load, CPU time
   does not. Peak memory is the rise of the process's peak RSS over its RSS before the
   backend's first call at that batch size (CPU; Linux ``/proc``), or of torch's peak CUDA
   allocation (CUDA; memory that ONNX Runtime or TensorRT allocate themselves is not seen).

Results go into the export directory's ``export.json`` (``"benchmark"`` key), which
``tk.load_predictor(directory)`` and ``torchkeep serve`` read to pick the fastest backend.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import PredictorError, TorchkeepError, UsageError
from ..io._env import environment
from ..io._manifest import MANIFEST_NAME, read_manifest, write_manifest
from ..runtime import BACKEND_TABLE, Predictor, backend_row, example_inputs, export_targets, load_predictor
from ._report import BenchReport, BenchResult, fastest_backends

__all__ = ["benchmark"]

logger = logging.getLogger(__name__)

Target = str | os.PathLike[str] | Predictor | torch.nn.Module


def _rss_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    # Writing 5 to clear_refs resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0).
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


class _Memory:
    """Peak memory rise over a span of calls, on CPU (RSS) or CUDA (torch's allocator)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.device = device
        self.base: int | None = None

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = _rss_kib("VmRSS") if _reset_peak_rss() else None

    def peak_mb(self) -> float | None:
        if self.base is None:
            return None
        if self.cuda:
            return max(0, torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        peak = _rss_kib("VmHWM")
        return None if peak is None else max(0, peak - self.base) / 1024


@dataclass
class _Runner:
    label: str
    predictor: Predictor
    source: str | None  # the export directory it came from
    latencies: dict[int, list[int]] = field(default_factory=dict)
    cpu: dict[int, list[int]] = field(default_factory=dict)
    peaks: dict[int, float | None] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)


def _expand(targets: Target | Sequence[Target], device: str, threads: int | None, example: Any) -> list[_Runner]:
    items: list[Target] = (
        [targets] if isinstance(targets, str | os.PathLike | torch.nn.Module | Predictor) else list(targets)  # type: ignore[arg-type]
    )
    if not items:
        raise UsageError(
            "tk.benchmark: no targets given; pass an export directory, artifact files, predictors or a module",
            argument="targets",
        )
    runners: list[_Runner] = []
    for item in items:
        if isinstance(item, torch.nn.Module):
            runners.append(
                _Runner("eager", load_predictor(item, device=device, threads=threads, example_inputs=example), None)
            )
        elif isinstance(item, str | os.PathLike):
            path = os.fspath(item)
            if os.path.isdir(path):
                found = export_targets(path)
                if not found:
                    raise PredictorError(f"{path}: {MANIFEST_NAME} lists no working artifact to benchmark")
                for backend, file in found.items():
                    if backend_row(backend).cuda_only and not device.startswith("cuda"):
                        continue
                    try:
                        p = load_predictor(path, backend=backend, device=device, threads=threads)
                    except TorchkeepError as exc:
                        logger.warning("%s: not benchmarking %s (%s)", path, backend, exc)
                        runners.append(_Runner(backend, _Unloaded(backend, str(exc), file), path))
                        continue
                    runners.append(_Runner(backend, p, path))
            else:
                p = load_predictor(path, device=device, threads=threads)
                runners.append(_Runner(p.backend, p, None))
        elif isinstance(item, Predictor):
            runners.append(_Runner(item.backend, item, None))
        else:
            raise UsageError(
                f"tk.benchmark: cannot benchmark a {type(item).__name__}; expected a path, Predictor or nn.Module",
                argument="targets",
            )
    seen: dict[str, int] = {}
    for r in runners:
        seen[r.label] = seen.get(r.label, 0) + 1
        if seen[r.label] > 1:
            r.label = f"{r.label}#{seen[r.label]}"
    return runners


class _Unloaded:
    """Stands in for a backend that could not load, so the report says why."""

    def __init__(self, backend: str, error: str, path: str) -> None:
        self.backend = backend
        self.error = error
        self.path = path
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self.device = "cpu"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise PredictorError(self.error)


def _make_inputs(runners: list[_Runner], batch_size: int, example: Any) -> tuple[list[torch.Tensor], list[str] | None]:
    for r in runners:
        if r.predictor.inputs:
            named = getattr(r.predictor, "input_structure", "positional") == "dict"
            specs = r.predictor.inputs
            return example_inputs(specs, batch_size), [s.name for s in specs] if named else None
    if example is not None:
        tensors = list(example)
        return [t[:1].expand(batch_size, *t.shape[1:]).clone() if t.dim() else t for t in tensors], None
    raise UsageError(
        "tk.benchmark: no target knows its input specs; benchmark an export directory, or pass example_inputs=[tensor, ...]",
        argument="example_inputs",
    )


def benchmark(
    targets: Target | Sequence[Target],
    *,
    batch_sizes: Sequence[int] = (1, 32),
    warmup: int = 10,
    min_time: float = 1.0,
    max_iters: int = 1000,
    min_iters: int = 5,
    rounds: int = 3,
    threads: int | None = None,
    device: str = "cpu",
    example_inputs: Sequence[torch.Tensor] | None = None,
    record: bool = True,
    title: str = "",
    progress: Callable[[str, int], None] | None = None,
) -> BenchReport:
    """Measure latency, throughput and memory of each target at each batch size.

    Args:
        targets: an export directory (every artifact in it, and the eager source model file when
            there is one), artifact files, :class:`Predictor` objects or an ``nn.Module``
            (eager), or a list of these.
        batch_sizes: batch sizes to measure.
        warmup: untimed calls per backend and batch size.
        min_time: seconds of timed calls per backend and batch size (the time budget) ...
        max_iters: ... or this many calls (the count budget), whichever ends first.
        min_iters: at least this many timed calls, even past ``min_time``.
        rounds: the budget is split into this many turns over the backends (fairness under load).
        threads: intra-op threads for every backend (None: the runtimes' defaults).
        device: ``"cpu"`` or ``"cuda[:N]"``.
        example_inputs: tensors that show the input shapes when no target knows its specs
            (e.g. only an ``nn.Module``); their batch dimension is resized.
        record: write the results into each benchmarked export directory's ``export.json``.
        title: a title for the table and the plot.
        progress: called with (target label, batch size) before each measurement.

    Raises:
        UsageError: no targets, or bad budget values.
        PredictorError: a target that cannot load.

    Example:
        >>> import torch, torchkeep as tk
        >>> model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
        >>> report = tk.benchmark(model, example_inputs=[torch.zeros(1, 10)], batch_sizes=(1, 32), min_time=0.05)
        >>> sorted(report.fastest())
        [1, 32]
    """
    bad = [bs for bs in batch_sizes if not isinstance(bs, int) or bs < 1]
    if not batch_sizes or bad:
        raise UsageError(
            f"batch_sizes={tuple(batch_sizes)!r}: expected positive ints, e.g. (1, 32)", argument="batch_sizes"
        )
    if min_time < 0 or max_iters < 1 or min_iters < 1 or warmup < 0 or rounds < 1:
        raise UsageError(
            f"benchmark budget: min_time={min_time} (>= 0), max_iters={max_iters} (>= 1), "
            f"min_iters={min_iters} (>= 1), warmup={warmup} (>= 0), rounds={rounds} (>= 1)",
            argument="budget",
        )
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        runners = _expand(targets, device, threads, example_inputs)
        for bs in batch_sizes:
            _measure(runners, bs, example_inputs, warmup, min_time, max_iters, min_iters, rounds, device, progress)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
    report = BenchReport(
        results=_results(runners, batch_sizes),
        device=device,
        threads=threads or used_threads,
        created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        environment=_environment(),
        title=title,
    )
    if record:
        for directory in sorted({r.source for r in runners if r.source is not None}):
            # The directory's own artifacts, plus eager from anywhere (it is the reference).
            labels = [
                r.label
                for r in runners
                if r.source == directory or (r.source is None and r.predictor.backend == "eager")
            ]
            _record(directory, report, labels)
    return report


def _measure(
    runners: list[_Runner],
    batch_size: int,
    example: Any,
    warmup: int,
    min_time: float,
    max_iters: int,
    min_iters: int,
    rounds: int,
    device: str,
    progress: Callable[[str, int], None] | None,
) -> None:
    tensors, names = _make_inputs(runners, batch_size, example)
    memory = _Memory(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda *_: None)
    per_round_time = min_time / rounds
    per_round_iters = max(1, -(-max_iters // rounds))
    per_round_min = max(1, -(-min_iters // rounds))
    for round_index in range(rounds):
        for r in runners:
            if batch_size in r.errors:
                continue
            if progress is not None and round_index == 0:
                progress(r.label, batch_size)

            def call(p: Any = r.predictor) -> Any:
                return p(**dict(zip(names, tensors, strict=True))) if names else p(*tensors)

            times = r.latencies.setdefault(batch_size, [])
            cpu = r.cpu.setdefault(batch_size, [])
            try:
                if round_index == 0:
                    memory.start()
                    for _ in range(warmup):
                        call()
                    sync()
                deadline = time.perf_counter() + per_round_time
                done = 0
                while done < per_round_iters and (done < per_round_min or time.perf_counter() < deadline):
                    cpu_start = time.process_time_ns()
                    start = time.perf_counter_ns()
                    call()
                    sync()
                    times.append(time.perf_counter_ns() - start)
                    cpu.append(time.process_time_ns() - cpu_start)
                    done += 1
                peak = memory.peak_mb() if round_index == 0 else None
                if round_index == 0:
                    r.peaks[batch_size] = peak
            except TorchkeepError as exc:
                r.errors[batch_size] = str(exc)
                logger.warning("%s at batch size %d failed: %s", r.label, batch_size, exc)


def _results(runners: list[_Runner], batch_sizes: Sequence[int]) -> list[BenchResult]:
    results: list[BenchResult] = []
    for bs in batch_sizes:
        rows = []
        for r in runners:
            if bs in r.errors:
                rows.append(BenchResult(r.label, r.predictor.backend, bs, error=r.errors[bs]))
                continue
            ns = np.asarray(r.latencies.get(bs, []), dtype=np.float64)
            if ns.size == 0:
                continue
            ms = ns / 1e6
            p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
            mean = float(ms.mean())
            rows.append(
                BenchResult(
                    r.label,
                    r.predictor.backend,
                    bs,
                    iterations=int(ns.size),
                    p50_ms=p50,
                    p90_ms=p90,
                    p99_ms=p99,
                    mean_ms=mean,
                    cpu_ms=float(np.median(r.cpu[bs])) / 1e6,
                    throughput=bs / (p50 / 1e3) if p50 > 0 else float("inf"),
                    peak_mem_mb=r.peaks.get(bs),
                )
            )
        eager = next((row for row in rows if row.backend == "eager" and row.error is None), None)
        for row in rows:
            if eager is not None and row.error is None and row.p50_ms > 0:
                row.speedup_vs_eager = eager.p50_ms / row.p50_ms
        results.extend(rows)
    return results


def _environment() -> dict[str, Any]:
    packages = dict.fromkeys(b.package for b in BACKEND_TABLE if b.package)
    return environment([p for p in packages if p is not None], load=True)


def _record(directory: str, report: BenchReport, labels: list[str]) -> None:
    """Write this directory's rows into its export.json (atomically; other keys untouched)."""
    rows = [r for r in report.results if r.target in labels and r.error is None]
    fastest = {str(bs): backend for bs, backend in fastest_backends(rows, report.device).items()}
    manifest = read_manifest(directory)
    manifest["benchmark"] = {
        "created_at": report.created_at,
        "device": report.device,
        "threads": report.threads,
        "environment": report.environment,
        "results": [{k: v for k, v in r.to_json().items() if k not in ("target", "error")} for r in rows],
        "fastest": fastest,
    }
    write_manifest(directory, manifest)
    logger.info("%s: recorded benchmark results; fastest %s", directory, fastest)
