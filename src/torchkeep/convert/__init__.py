"""Convert legacy files into torchkeep files: ``torchkeep convert SRC DST [--trust-pickle]``.

Example:
    >>> from torchkeep.convert import source_kinds
    >>> [kind.name for kind in source_kinds()][-1]
    'torch'
"""

from . import _sources as _sources  # importing it registers the built-in source kinds
from ._convert import (
    ConvertOptions,
    ConvertReport,
    Source,
    SourceKind,
    convert,
    detect_kind,
    source_kind,
    source_kinds,
)

__all__ = [
    "ConvertOptions",
    "ConvertReport",
    "Source",
    "SourceKind",
    "convert",
    "detect_kind",
    "source_kind",
    "source_kinds",
]
