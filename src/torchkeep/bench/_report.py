"""What :func:`torchkeep.benchmark` reports: results per backend and batch size, a table, JSON, a plot."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UsageError
from ..runtime import rank_backends

__all__ = ["BenchReport", "BenchResult", "fastest_backends", "plot_reports"]


@dataclass
class BenchResult:
    """One backend at one batch size.

    Attributes:
        target: label of the target (the backend name, made unique when needed).
        backend: the predictor's backend.
        batch_size: samples per call.
        iterations: timed calls.
        p50_ms, p90_ms, p99_ms, mean_ms: latency per call in milliseconds.
        cpu_ms: median CPU time of the process per call, in milliseconds (all threads). Unlike
            latency, it barely moves when other processes compete for the cores.
        throughput: samples per second (``batch_size / p50``).
        speedup_vs_eager: eager p50 / this p50 (None without an eager row).
        peak_mem_mb: peak memory rise during the calls, in MiB (None when unmeasurable).
        error: why this row has no numbers (the backend failed), else None.
    """

    target: str
    backend: str
    batch_size: int
    iterations: int = 0
    p50_ms: float = float("nan")
    p90_ms: float = float("nan")
    p99_ms: float = float("nan")
    mean_ms: float = float("nan")
    cpu_ms: float = float("nan")
    throughput: float = float("nan")
    speedup_vs_eager: float | None = None
    peak_mem_mb: float | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (NaN becomes None)."""
        return {k: (None if isinstance(v, float) and v != v else v) for k, v in asdict(self).items()}


@dataclass
class BenchReport:
    """What :func:`benchmark` measured, with a table, JSON and a plot.

    Example:
        >>> import torch, torchkeep as tk
        >>> report = tk.benchmark(torch.nn.Linear(4, 2), example_inputs=[torch.zeros(1, 4)],
        ...                       batch_sizes=(1,), min_time=0.01, warmup=1)
        >>> [(r.backend, r.batch_size) for r in report.results]
        [('eager', 1)]
    """

    results: list[BenchResult]
    device: str
    threads: int
    created_at: str
    environment: dict[str, Any] = field(default_factory=dict)
    title: str = ""

    def fastest(self) -> dict[int, str]:
        """batch size → the backend with the lowest p50 latency (:func:`torchkeep.runtime.rank_backends`)."""
        return fastest_backends([r for r in self.results if r.error is None], self.device)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict: results plus device, threads, machine and the fastest per batch size."""
        return {
            "title": self.title,
            "created_at": self.created_at,
            "device": self.device,
            "threads": self.threads,
            "environment": self.environment,
            "results": [r.to_json() for r in self.results],
            "fastest": {str(bs): b for bs, b in self.fastest().items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchReport:
        """Inverse of :meth:`to_json` (e.g. to plot saved results again).

        Raises:
            UsageError: ``data`` is not a report written by :meth:`to_json`.
        """
        try:
            fields = set(BenchResult.__dataclass_fields__)
            results = []
            for row in data["results"]:
                values = {k: v for k, v in row.items() if k in fields}
                for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "cpu_ms", "throughput"):
                    if values.get(k) is None:
                        values[k] = float("nan")
                results.append(BenchResult(**values))
            return cls(
                results=results,
                device=str(data["device"]),
                threads=int(data["threads"]),
                created_at=str(data.get("created_at", "")),
                environment=dict(data.get("environment") or {}),
                title=str(data.get("title", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(
                f"not a benchmark report written by BenchReport.to_json ({exc!r})", argument="data"
            ) from None

    def table(self) -> Any:
        """A ``rich.table.Table``: one row per backend and batch size, fastest first, best marked ★."""
        from rich import box
        from rich.table import Table

        load = self.environment.get("load_average")
        calls = sorted({r.iterations for r in self.results if r.error is None})
        span = f"{calls[0]}" if len(calls) == 1 else f"{calls[0]}–{calls[-1]}" if calls else "0"
        caption = f"{self.device}, {self.threads} thread(s), {span} timed calls each" + (
            f", load average {load}" if load else ""
        )
        table = Table(
            title=self.title or "torchkeep benchmark",
            caption=caption,
            box=box.SIMPLE_HEAD,
            padding=(0, 1),
            pad_edge=False,
        )
        for name, justify in [
            ("backend", "left"),
            ("batch", "right"),
            ("p50 ms", "right"),
            ("p90 ms", "right"),
            ("p99 ms", "right"),
            ("samples/s", "right"),
            ("CPU ms", "right"),
            ("×eager", "right"),
            ("MiB", "right"),
        ]:
            table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        fastest = self.fastest()
        rows = sorted(self.results, key=lambda r: (r.batch_size, r.error is not None, r.p50_ms))
        for r in rows:
            if r.error is not None:
                table.add_row(r.target, str(r.batch_size), f"[red]failed: {r.error[:60]}[/red]", *[""] * 6)
                continue
            star = fastest.get(r.batch_size) == r.backend
            table.add_row(
                f"[bold green]★ {r.target}[/bold green]" if star else r.target,
                str(r.batch_size),
                _fmt(r.p50_ms),
                _fmt(r.p90_ms),
                _fmt(r.p99_ms),
                f"{r.throughput:,.0f}",
                _fmt(r.cpu_ms),
                "" if r.speedup_vs_eager is None else f"{r.speedup_vs_eager:.2f}",
                "" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.1f}",
            )
        return table

    def plot(self, path: str | os.PathLike[str], *, title: str | None = None) -> str:
        """Save a PNG chart (latency and throughput per backend per batch size); returns the path."""
        if title is not None:
            self.title = title
        return plot_reports([self], path)


def _fmt(ms: float) -> str:
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def plot_reports(reports: Sequence[BenchReport], path: str | os.PathLike[str]) -> str:
    """One PNG with a row per report: p50 latency (p90–p99 whiskers) and throughput, per backend.

    Both axes are log-scaled (backends and batch sizes differ by orders of magnitude); bars are
    grouped by batch size, one colour per backend, labelled with the speedup over eager.

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    from ..errors import missing_dependency

    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise missing_dependency("matplotlib", "bench", "BenchReport.plot") from exc
    from ._plot import draw

    fig = draw(plt, list(reports))
    path = os.fspath(path)
    try:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def fastest_backends(rows: Sequence[BenchResult], device: str) -> dict[int, str]:
    """batch size → fastest backend among ``rows``, by the runtime's one ranking rule.

    Example:
        >>> rows = [BenchResult("eager", "eager", 1, p50_ms=2.0), BenchResult("pt2", "pt2", 1, p50_ms=1.0)]
        >>> fastest_backends(rows, "cpu")
        {1: 'pt2'}
    """
    section = {"device": device, "results": [r.to_json() for r in rows]}
    out: dict[int, str] = {}
    for bs in sorted({r.batch_size for r in rows}):
        ranked = rank_backends(section, device=device, batch_size=bs)
        if ranked:
            out[bs] = ranked[0]
    return out
