"""TorchScript modules (``torch.jit.save``; ``.torchscript.pt`` / ``.pt``).

Specs: from export.json when present; a TorchScript file records argument names but not shapes
or dtypes, so without export.json inputs are converted but not checked.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

import torch

from ..errors import CheckpointNotFoundError, PredictorError
from ._common import BasePredictor
from ._inputs import Bound

__all__ = ["TorchScriptPredictor", "load"]


class TorchScriptPredictor(BasePredictor):
    """Runs ``torch.jit.load(path)`` in eval mode.

    Example:
        >>> import torch, tempfile, os, torchkeep as tk
        >>> path = os.path.join(tempfile.mkdtemp(), "model.torchscript.pt")
        >>> torch.jit.trace(torch.nn.Linear(3, 1), torch.zeros(1, 3)).save(path)
        >>> tk.load_predictor(path).backend
        'torchscript'
    """

    backend = "torchscript"

    def __init__(self, module: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.module = module

    def _run(self, bound: Bound) -> Any:
        return self._call_module(self.module, bound)


def _is_torchscript(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.split("/", 1)[-1].startswith("code/") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load(path: str | os.PathLike[str], *, device: str = "cpu", **kwargs: Any) -> TorchScriptPredictor:
    """Load a TorchScript archive (never a ``torch.save`` pickle: those are refused)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"{path}: no such TorchScript file", path=path)
    if not _is_torchscript(path):
        raise PredictorError(
            f"{path}: not a TorchScript archive (no code/ inside). A torch.save() pickle cannot be served safely; "
            "convert it with `torchkeep convert --trust-pickle` and export it, or pass backend= explicitly"
        )
    try:
        module = torch.jit.load(path, map_location=device)  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise PredictorError(f"{path}: torch.jit.load failed ({type(exc).__name__}: {exc})") from exc
    return TorchScriptPredictor(module.eval(), device=device, path=path, **kwargs)
