"""Convert legacy files into torchkeep files: ``torchkeep convert SRC DST [--trust-pickle]``.

Example:
    >>> from torchkeep.convert import source_kinds
    >>> [kind.name for kind in source_kinds()][-1]
    'torch'
"""

from ._convert import (
    CHECKPOINT_OBJECT_KEYS,
    SAFE_GLOBALS,
    ConvertOptions,
    ConvertReport,
    Source,
    SourceKind,
    checkpoint_tree,
    convert,
    detect_kind,
    source_kind,
    source_kinds,
)

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
