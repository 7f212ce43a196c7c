"""The benchmark chart: drawn here so that bench.py stays about measuring (matplotlib is lazy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..runtime import BACKEND_TABLE

if TYPE_CHECKING:
    from ._report import BenchReport

__all__ = ["draw"]

# One colour per backend, the same in every chart, so readers learn them once.
COLORS = {b.name: b.color for b in BACKEND_TABLE}


def draw(plt: Any, reports: Sequence[BenchReport]) -> Any:
    """A figure with one row per report: latency (left) and throughput (right), log scales."""
    fig, axes = plt.subplots(len(reports), 2, figsize=(12, 3.4 * len(reports) + 0.8), squeeze=False)
    legend: dict[str, str] = {}
    for row, report in enumerate(reports):
        ok = [r for r in report.results if r.error is None]
        batch_sizes = sorted({r.batch_size for r in ok})
        targets = list(dict.fromkeys(r.target for r in ok))
        width = 0.8 / max(1, len(targets))
        lat_ax, thr_ax = axes[row]
        eager_throughput = {r.batch_size: r.throughput for r in ok if r.backend == "eager"}
        for i, target in enumerate(targets):
            rows = {r.batch_size: r for r in ok if r.target == target}
            xs = [j + (i - (len(targets) - 1) / 2) * width for j, bs in enumerate(batch_sizes) if bs in rows]
            picked = [rows[bs] for bs in batch_sizes if bs in rows]
            color = COLORS.get(picked[0].backend) if picked else None
            lat_ax.bar(xs, [r.p50_ms for r in picked], width * 0.92, color=color, label=target)
            # The tail: a whisker from p90 to p99 on top of the p50 bar.
            lat_ax.vlines(xs, [r.p90_ms for r in picked], [r.p99_ms for r in picked], color="black", linewidth=1)
            lat_ax.scatter(xs, [r.p99_ms for r in picked], marker="_", color="black", s=40, zorder=3)
            bars = thr_ax.bar(xs, [r.throughput for r in picked], width * 0.92, color=color, label=target)
            for bar, r in zip(bars, picked, strict=True):
                base = eager_throughput.get(r.batch_size)
                if base and r.backend != "eager":
                    thr_ax.annotate(
                        f"{r.throughput / base:.2g}×",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        xytext=(0, 1),
                        textcoords="offset points",
                    )
            for backend in {r.backend for r in picked}:
                legend.setdefault(backend, COLORS.get(backend, "#333333"))
        name = report.title or "benchmark"
        for ax, ylabel, what in (
            (lat_ax, "latency per call (ms, log)", "p50 latency, whisker p90–p99 — lower is better"),
            (thr_ax, "samples / s (log)", "throughput (samples/s), label = × eager — higher is better"),
        ):
            ax.set_yscale("log")
            ax.set_xticks(range(len(batch_sizes)))
            ax.set_xticklabels([f"batch {bs}" for bs in batch_sizes])
            ax.set_ylabel(ylabel)
            ax.set_title(f"{name}: {what}", fontsize=9)
            ax.grid(axis="y", which="both", alpha=0.25)
            ax.set_axisbelow(True)
        thr_ax.margins(y=0.15)
    first = reports[0] if reports else None
    if first is not None:
        env = first.environment
        bits = [first.device, f"{first.threads} thread(s)", f"torch {env.get('torch', '?')}"]
        if env.get("onnxruntime"):
            bits.append(f"onnxruntime {env['onnxruntime']}")
        if env.get("load_average"):
            bits.append(f"load avg {env['load_average']}")
        fig.suptitle("torchkeep benchmark — " + ", ".join(bits), fontsize=10)
    # One legend for the whole figure: a backend has the same colour in every panel.
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in legend.values()]
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / fig.get_size_inches()[1]))
    fig.legend(
        handles,
        list(legend),
        loc="upper center",
        ncol=len(legend),
        frameon=False,
        fontsize=9,
        bbox_to_anchor=(0.5, 1 - 0.35 / fig.get_size_inches()[1]),
    )
    return fig
