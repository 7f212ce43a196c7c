"""ExecuTorch (``model.pte``): the mobile/edge path, lowered to the XNNPACK CPU backend.

``torch.export`` (shared with pt2/aoti) → ``to_edge_transform_and_lower`` with the XNNPACK
partitioner → ``.to_executorch()`` → ``model.pte``. Verification runs the file with
ExecuTorch's Python runtime (:mod:`torchkeep.runtime.executorch`), the same kernels a phone runs.

ExecuTorch wheels are built against one torch release each; with another torch its compiled
runtime may not import. Install the ``executorch`` extra only where its torch pin matches.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..errors import ExportError
from ..runtime import backend_row, require
from ._examples import ExportExamples
from ._messages import summarize_error
from ._options import ExportOptions

__all__ = ["ExecuTorchExporter"]


#: upper bound of a dynamic dimension other than the batch, where torch.export proved none: the
#: ExecuTorch memory planner sizes every buffer for the largest shape, so each dim needs one.
MAX_DYNAMIC_SIZE = 1024


def _bounded(examples: ExportExamples, options: ExportOptions) -> ExportExamples:
    """The examples with a finite upper bound on every dynamic dimension (``max_batch_size`` for the batch)."""
    ranges: dict[str, tuple[int, int | None]] = {}
    for name, (lo, hi) in examples.dims.ranges.items():
        cap = options.max_batch_size if name == examples.dims.batch_name else MAX_DYNAMIC_SIZE
        ranges[name] = (lo, hi if hi is not None else max(cap, examples.dims.example.get(name, 1)))
    if ranges == examples.dims.ranges:
        return examples
    bounded = copy.copy(examples)
    bounded.dims = dataclasses.replace(examples.dims, ranges=ranges)
    bounded.forget_program()
    return bounded


class ExecuTorchExporter:
    """``torch.export`` → edge dialect with XNNPACK delegation → ``.pte``.

    Example:
        >>> ExecuTorchExporter().suffix
        '.pte'
    """

    name = "executorch"
    suffix = ".pte"
    backend = "executorch"

    def export(
        self, model: torch.nn.Module, examples: ExportExamples, path: Path, options: ExportOptions
    ) -> list[Path]:
        """Lower the shared ``torch.export`` program to XNNPACK and write ``model.pte``."""
        require(backend_row(self.backend), "ExecuTorch export")
        try:
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
        except Exception as exc:  # an ExecuTorch built for another torch fails here, not at `import executorch`
            raise ExportError(
                f"executorch: its exporter does not import with torch {torch.__version__} "
                f"({summarize_error(exc)}); install an ExecuTorch release built for this torch",
                format=self.name,
                step="import",
            ) from exc
        program = _bounded(examples, options).exported_program(model, strict=options.strict)
        try:
            lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
            path.write_bytes(lowered.buffer)
        except Exception as exc:
            raise ExportError(
                f"executorch: lowering to XNNPACK failed: {summarize_error(exc)}", format=self.name, step="lower"
            ) from exc
        return [path]

    def describe_options(self, options: ExportOptions, files: list[Path]) -> dict[str, Any]:
        """``{"delegate": "xnnpack", "max_batch_size": n}``: the largest batch the program takes."""
        return {"delegate": "xnnpack", "strict": options.strict, "max_batch_size": options.max_batch_size}
