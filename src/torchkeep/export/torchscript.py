"""``torchscript`` (legacy): ``torch.jit.trace`` or ``torch.jit.script`` → ``model.torchscript.pt``.

TorchScript is in maintenance mode upstream; ``pt2`` (``torch.export``) and ``aoti`` replace it.
It stays because the tutorials our users follow (and much C++/LibTorch code) load
``torch.jit.load`` files. Its deprecation warnings are kept out of the user's face: like every
exporter's warnings, :func:`torchkeep.export` catches them, logs deprecations at DEBUG
(``torchkeep --debug`` shows them) and other warnings (a ``TracerWarning`` that a trace may not
generalize) at INFO, and records the latter in the report and ``export.json``. Pass
``torchscript_warnings=True`` to let TorchScript's warnings through unchanged.

Tracing skips ``torch.jit.trace``'s own ``check_trace`` re-run: it compares graphs, not results,
and rejects models whose trace is fine (``nn.TransformerEncoder``'s fast-path checks); the
parity check against eager at several batch sizes is the stronger test.

``trace`` follows the path the example takes through the code: branches on tensor values are
frozen (the parity check at several batch sizes exposes that); ``script`` compiles the Python
source, control flow included, but only for the TorchScript subset of Python.
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

__all__ = ["TorchScriptExporter"]

logger = logging.getLogger(__name__)


class TorchScriptExporter:
    """``torch.jit.trace`` / ``torch.jit.script`` + ``ScriptModule.save``.

    Example:
        >>> TorchScriptExporter().suffix
        '.torchscript.pt'
    """

    name = "torchscript"
    suffix = ".torchscript.pt"
    backend = "torchscript"

    def export(
        self, model: torch.nn.Module, examples: ExportExamples, path: Path, options: ExportOptions
    ) -> list[Path]:
        """Trace (dict outputs allowed via ``strict=False``) or script, then save."""
        method = options.torchscript_method
        try:
            if method == "script":
                module = torch.jit.script(model)
            elif examples.input_structure == "dict":
                module = torch.jit.trace(  # type: ignore[no-untyped-call]
                    model, example_kwarg_inputs=examples.kwargs, strict=False, check_trace=False
                )
            else:
                module = torch.jit.trace(model, examples.args, strict=False, check_trace=False)  # type: ignore[no-untyped-call]
        except Exception as exc:
            hint = (
                " torch.jit.script accepts only the TorchScript subset of Python; try torchscript_method='trace'."
                if method == "script"
                else ""
            )
            raise ExportError(
                f"torchscript: torch.jit.{method} failed: {summarize_error(exc)}.{hint}",
                format=self.name,
                step=method,
            ) from exc
        try:
            module.save(str(path))  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise ExportError(
                f"torchscript: saving the {method}d module failed: {summarize_error(exc)}",
                format=self.name,
                step="save",
            ) from exc
        return [path]

    def describe_options(self, options: ExportOptions, files: list[Path]) -> dict[str, Any]:
        """``{"method": "trace" | "script"}``."""
        return {"method": options.torchscript_method}
