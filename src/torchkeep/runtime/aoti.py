"""AOTInductor packages (``model.aoti.pt2`` from ``torch._inductor.aoti_compile_and_package``).

Specs: the package records none, so they come from export.json (also when the file is loaded
directly from an export directory); without it inputs are converted but not checked. A package
is compiled for one device type and CPU instruction set; loading it elsewhere fails with
:class:`~torchkeep.errors.PredictorError`.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import PredictorError
from ._common import BasePredictor
from ._inputs import Bound

__all__ = ["AOTIPredictor", "load"]


class AOTIPredictor(BasePredictor):
    """Runs a compiled AOTInductor package.

    Example:
        >>> import torchkeep as tk
        >>> p = tk.load_predictor("exported/model.aoti.pt2")  # doctest: +SKIP
        >>> p.backend  # doctest: +SKIP
        'aoti'
    """

    backend = "aoti"

    def __init__(self, runner: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runner = runner
        self.metadata: dict[str, str] = dict(runner.get_metadata()) if hasattr(runner, "get_metadata") else {}

    def _run(self, bound: Bound) -> Any:
        return self._call_module(self.runner, bound)


def load(path: str | os.PathLike[str], *, device: str = "cpu", **kwargs: Any) -> AOTIPredictor:
    """Load an AOTInductor package for ``device``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        from ..errors import CheckpointNotFoundError

        raise CheckpointNotFoundError(f"{path}: no such AOTInductor package", path=path)
    index = torch.device(device).index if device != "cpu" else -1
    try:
        runner = torch._inductor.aoti_load_package(path, device_index=-1 if index is None else index)
    except Exception as exc:
        raise PredictorError(
            f"{path}: could not load the AOTInductor package ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "it must be compiled for this device type, CPU instruction set and torch version — re-export it here"
        ) from exc
    metadata: dict[str, str] = dict(runner.get_metadata()) if hasattr(runner, "get_metadata") else {}
    key = metadata.get("AOTI_DEVICE_KEY", "")
    if key and key != torch.device(device).type:
        raise PredictorError(
            f"{path}: the package was compiled for {key!r}, not for device {device!r}; re-export it for {device}"
        )
    return AOTIPredictor(runner, device=device, path=path, **kwargs)
