"""ExecuTorch programs (``.pte``) through ExecuTorch's Python runtime, on the CPU.

Specs: from export.json when present (a ``.pte`` holds no names); inputs are passed by
position in the order the export recorded.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import CheckpointNotFoundError, PredictorError
from ._backends import backend_row, require
from ._common import BasePredictor
from ._inputs import Bound, structure_outputs

__all__ = ["ExecuTorchPredictor", "load"]


class ExecuTorchPredictor(BasePredictor):
    """Runs the ``forward`` method of a loaded ExecuTorch program.

    Example:
        >>> import torchkeep as tk
        >>> tk.load_predictor("exported/model.pte").backend  # doctest: +SKIP
        'executorch'
    """

    backend = "executorch"

    def __init__(self, method: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.method = method

    def _run(self, bound: Bound) -> Any:
        try:
            flat = self.method.execute([t.contiguous() for t in bound.tensors])
        except Exception as exc:
            raise PredictorError(f"{self.path}: executorch failed ({type(exc).__name__}: {exc})") from exc
        return structure_outputs([torch.as_tensor(t) for t in flat], self.outputs, self.output_structure)


def load(path: str | os.PathLike[str], *, device: str = "cpu", **kwargs: Any) -> ExecuTorchPredictor:
    """Load ``path`` with ``executorch.runtime.Runtime`` (CPU only)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"{path}: no such ExecuTorch program", path=path)
    if device != "cpu":
        raise PredictorError(f"{path}: the executorch backend runs on the CPU; got device={device!r}")
    require(backend_row("executorch"), "the executorch backend")
    try:
        from executorch.runtime import Runtime

        program = Runtime.get().load_program(path)
        method = program.load_method("forward")
    except Exception as exc:
        raise PredictorError(
            f"{path}: ExecuTorch's runtime could not load it ({type(exc).__name__}: {exc}); an ExecuTorch built "
            f"for another torch than {torch.__version__} fails here"
        ) from exc
    return ExecuTorchPredictor(method, device=device, path=path, **kwargs)
