"""Convert legacy files into torchkeep files: ``torchkeep convert SRC DST [--trust-pickle]``.

Example:
    >>> from torchkeep.convert import source_kinds
    >>> [kind.name for kind in source_kinds()][-1]
    'torch'
"""

from . import _sources as _sources  # importing it registers the built-in source kinds
from ._as_checkpoint import CHECKPOINT_OBJECT_KEYS, checkpoint_tree
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
from ._sources import SAFE_GLOBALS

__all__ = [
    "CHECKPOINT_OBJECT_KEYS",
    "SAFE_GLOBALS",
    "ConvertOptions",
    "ConvertReport",
    "Source",
    "SourceKind",
    "checkpoint_tree",
    "convert",
    "detect_kind",
    "source_kind",
    "source_kinds",
]
