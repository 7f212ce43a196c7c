"""Run any exported artifact through one interface (see :class:`Predictor`).

Every target is a row of :data:`BACKEND_TABLE` (export format, predictor module, file names,
chart colour, CPU/CUDA preference, optional package); :func:`rank_backends` is the one rule
that orders measured backends by speed, and :func:`fastest_backend` applies it to an export
directory's ``export.json``.

Backends, one module each: :mod:`.eager`, :mod:`.pt2`, :mod:`.aoti`, :mod:`.torchscript`,
:mod:`.onnxruntime`, :mod:`.tensorrt`. Each imports its runtime only when used.

What each backend knows about its tensors without export.json:

============  =====================================================
eager         from ``example_inputs=`` only
pt2           names, dtypes, static/dynamic dims (program signature)
aoti          nothing (export.json next to the file is used)
torchscript   nothing (export.json next to the file is used)
onnxruntime   names, dtypes, static/symbolic dims (session)
tensorrt      names, dtypes, dims (engine I/O tensors)
============  =====================================================
"""

from ._backends import (
    BACKEND_TABLE,
    Backend,
    backend_row,
    fastest_backend,
    fixed_order,
    format_backend,
    load_module,
    rank_backends,
    require,
)
from ._base import Predictor, TensorSpec
from ._common import BasePredictor
from ._inputs import example_inputs
from ._loader import BACKENDS, backend_for_file, backend_order, export_targets, load_predictor

__all__ = [
    "BACKENDS",
    "BACKEND_TABLE",
    "Backend",
    "BasePredictor",
    "Predictor",
    "TensorSpec",
    "backend_for_file",
    "backend_order",
    "backend_row",
    "example_inputs",
    "export_targets",
    "fastest_backend",
    "fixed_order",
    "format_backend",
    "load_module",
    "load_predictor",
    "rank_backends",
    "require",
]
