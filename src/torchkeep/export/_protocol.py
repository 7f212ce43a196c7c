"""The export seam: one :class:`Exporter` per format (one module each, listed in the backend table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from ._examples import ExportExamples
from ._options import ExportOptions

__all__ = ["Exporter"]


@runtime_checkable
class Exporter(Protocol):
    """One export format.

    Attributes:
        name: the format name used in ``formats=`` and ``export.json`` (``"onnx"``).
        suffix: the artifact's file-name suffix; the file is ``model<suffix>``.
        backend: the :func:`torchkeep.load_predictor` backend that runs the artifact.

    Example:
        >>> from torchkeep.export import get_exporter
        >>> get_exporter("onnx").suffix
        '.onnx'
    """

    name: str
    suffix: str
    backend: str

    def export(
        self, model: torch.nn.Module, examples: ExportExamples, path: Path, options: ExportOptions
    ) -> list[Path]:
        """Write the artifact to ``path`` (and sidecar files next to it); return every file written.

        Raises:
            ExportError: with ``format`` and ``step`` set and the backend's message.
        """
        ...

    def describe_options(self, options: ExportOptions, files: list[Path]) -> dict[str, Any]:
        """The options that shaped this artifact, for ``export.json``."""
        ...
