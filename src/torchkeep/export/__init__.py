"""Export for deployment, verified: ``pt2``, ``onnx``, ``torchscript``, ``aoti``, ``tensorrt``,
``openvino``, ``onnx-int8``, ``onnx-fp16``, ``torchscript-int8``, ``executorch``.

The public entry point is :func:`torchkeep.export` (``tk.export(model, example_inputs,
output_dir, formats=...)``). This package holds the machinery: one module per format behind the
:class:`Exporter` Protocol, the shared parity check, and :class:`ExportReport`.

A note on the name: ``torchkeep.export`` the *attribute* is the function (as the SPEC promises:
``tk.export(...)``), while ``torchkeep.export`` the *package* stays importable by its dotted name
for its other members::

    import torchkeep as tk
    tk.export(model, x, "exported")                       # the function
    from torchkeep.export import Exporter, get_exporter   # the package's members

(``import torchkeep.export as m`` binds the function, since Python resolves it as an attribute of
``torchkeep``; use ``from torchkeep.export import ...`` instead.)

Example:
    >>> from torchkeep.export import EXPORTERS
    >>> list(EXPORTERS)[:5]
    ['pt2', 'onnx', 'torchscript', 'aoti', 'tensorrt']
"""

from ._examples import ExportExamples
from ._export import export
from ._options import ExportOptions
from ._parity import DEFAULT_TOLERANCES, FORMAT_TOLERANCES, PRECISION_TOLERANCES
from ._prepare import EXPORTERS, get_exporter
from ._protocol import Exporter
from ._report import ExportReport, FormatResult

__all__ = [
    "DEFAULT_TOLERANCES",
    "FORMAT_TOLERANCES",
    "PRECISION_TOLERANCES",
    "EXPORTERS",
    "ExportExamples",
    "ExportOptions",
    "ExportReport",
    "Exporter",
    "FormatResult",
    "export",
    "get_exporter",
]
