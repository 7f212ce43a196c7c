"""``tk.benchmark``: measure every backend of a model at several batch sizes, and remember the fastest.

Example:
    >>> from torchkeep.bench import BenchReport
    >>> BenchReport.from_json({"results": [], "device": "cpu", "threads": 1}).results
    []
"""

from ._bench import BenchReport, BenchResult, benchmark, plot_reports

__all__ = ["BenchReport", "BenchResult", "benchmark", "plot_reports"]
