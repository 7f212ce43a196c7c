"""Checkpoint layouts behind one seam: single file, sharded directory, deduplicated steps.

See :mod:`torchkeep.checkpoint.layouts._base` for the :class:`Layout` Protocol and
:mod:`torchkeep.checkpoint.layouts._choose` for the rules that pick one.
"""

from ._base import Header, Layout, PendingSave, SaveRequest, Stage, local_target
from ._choose import ALL_LAYOUTS, layout_at, layout_for_kind, layout_for_name, layout_for_save, sweep_all
from ._names import FILE_SUFFIX, SHARDED_SUFFIX, TIME_FORMAT, checkpoint_name, parse_name, storage_path
from .dedup import INLINE_BYTES, DedupLayout, consolidate
from .sharded import ShardedLayout
from .single import SingleFileLayout, local_copy, verify_staged

__all__ = [
    "ALL_LAYOUTS",
    "FILE_SUFFIX",
    "INLINE_BYTES",
    "SHARDED_SUFFIX",
    "TIME_FORMAT",
    "DedupLayout",
    "Header",
    "Layout",
    "PendingSave",
    "SaveRequest",
    "ShardedLayout",
    "SingleFileLayout",
    "Stage",
    "checkpoint_name",
    "consolidate",
    "layout_at",
    "layout_for_kind",
    "layout_for_name",
    "layout_for_save",
    "local_copy",
    "local_target",
    "parse_name",
    "storage_path",
    "sweep_all",
    "verify_staged",
]
