"""One description of the running environment, recorded by checkpoints, exports and benchmarks.

A checkpoint, an ``export.json`` and a benchmark report each say where they were made; they say
it with the same keys, so a reader (``torchkeep diff``, a bench chart, a bug report) compares
like with like.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._version import __version__

__all__ = ["environment"]


def environment(packages: Sequence[str] = (), *, load: bool = False) -> dict[str, Any]:
    """Versions and hardware facts: python, torch, numpy, torchkeep, platform, CPU and CUDA.

    Args:
        packages: distributions whose installed version to add (None when not installed),
            e.g. the runtimes an export used.
        load: add the load average (benchmarks: a busy machine explains slow numbers).

    Example:
        >>> env = environment(["surely-not-installed"])
        >>> env["torch"] == torch.__version__, env["surely-not-installed"]
        (True, None)
    """
    cuda = torch.cuda.is_available()
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torchkeep": __version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.version.cuda if cuda else None,
    }
    if cuda:
        env["cudnn"] = torch.backends.cudnn.version()  # type: ignore[no-untyped-call]
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    for dist in packages:
        try:
            env[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            env[dist] = None
    if load:
        with contextlib.suppress(OSError):
            env["load_average"] = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return env
