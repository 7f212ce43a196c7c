"""``pt2``: a ``torch.export`` program saved with ``torch.export.save`` (``model.pt2``).

The portable, Python-free graph PyTorch now recommends for deployment. Load it back with
``torch.export.load(path).module()`` or ``tk.load_predictor(path)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ExportError
from ._examples import ExportExamples
from ._messages import summarize_error
from ._options import ExportOptions

__all__ = ["Pt2Exporter"]


class Pt2Exporter:
    """``torch.export.export`` + ``torch.export.save``.

    Example:
        >>> Pt2Exporter().suffix
        '.pt2'
    """

    name = "pt2"
    suffix = ".pt2"
    backend = "pt2"

    def export(
        self, model: torch.nn.Module, examples: ExportExamples, path: Path, options: ExportOptions
    ) -> list[Path]:
        """Capture the model with ``torch.export`` (shared with aoti) and save the program."""
        program = examples.exported_program(model, strict=options.strict)
        try:
            torch.export.save(program, str(path))
        except Exception as exc:
            raise ExportError(
                f"pt2: torch.export.save failed: {summarize_error(exc)}", format=self.name, step="save"
            ) from exc
        return [path]

    def describe_options(self, options: ExportOptions, files: list[Path]) -> dict[str, Any]:
        """``{"strict": bool}``."""
        return {"strict": options.strict}
