"""``aoti``: an AOTInductor package (``model.aoti.pt2``): the model compiled ahead of time to C++.

``torch._inductor.aoti_compile_and_package`` turns the ``torch.export`` program into a shared
library inside a zip package; ``torch._inductor.aoti_load_package(path)`` (or
``tk.load_predictor``) runs it without Python overhead. Compiling runs a C++ compiler: expect
tens of seconds even for small models on a small machine. The package targets the device of the
program (CPU here; export a model on CUDA with ``device="cuda"`` for a CUDA package).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..errors import ExportError
from ._examples import ExportExamples
from ._messages import summarize_error
from ._options import ExportOptions

__all__ = ["AotiExporter"]

logger = logging.getLogger(__name__)


class AotiExporter:
    """``torch._inductor.aoti_compile_and_package`` on the shared ``torch.export`` program.

    Example:
        >>> AotiExporter().suffix
        '.aoti.pt2'
    """

    name = "aoti"
    suffix = ".aoti.pt2"
    backend = "aoti"

    def export(
        self, model: torch.nn.Module, examples: ExportExamples, path: Path, options: ExportOptions
    ) -> list[Path]:
        """Compile and package; the compiler's error is translated into :class:`ExportError`."""
        program = examples.exported_program(model, strict=options.strict)
        try:
            import torch._inductor
        except ImportError as exc:  # pragma: no cover - every torch >= 2.6 has it
            raise ExportError(
                f"aoti: this torch build lacks inductor: {exc}", format=self.name, step="compile"
            ) from exc
        configs = dict(options.aoti_configs or {})
        logger.info("aoti: compiling with a C++ compiler (this takes a while)")
        try:
            written = torch._inductor.aoti_compile_and_package(
                program, package_path=str(path), inductor_configs=configs or None
            )
        except Exception as exc:
            raise ExportError(
                f"aoti: AOTInductor compilation failed: {summarize_error(exc)}. AOTInductor needs a working "
                "C++ compiler (g++ or clang) on PATH.",
                format=self.name,
                step="compile",
            ) from exc
        return [Path(written)]

    def describe_options(self, options: ExportOptions, files: list[Path]) -> dict[str, Any]:
        """``{"inductor_configs": {...}}``."""
        return {"inductor_configs": dict(options.aoti_configs or {})}
