"""Run any exported artifact through one interface (see :class:`Predictor`).

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

from ._base import Predictor, TensorSpec
from ._common import BasePredictor
from ._inputs import example_inputs
from ._loader import BACKENDS, backend_for_file, export_targets, load_predictor

__all__ = [
    "BACKENDS",
    "BasePredictor",
    "Predictor",
    "TensorSpec",
    "backend_for_file",
    "example_inputs",
    "export_targets",
    "load_predictor",
]
