"""Sharded checkpoints for multi-process training (DDP, FSDP2), through ``torch.distributed.checkpoint``.

When a process group with more than one rank is initialized, :func:`torchkeep.save_checkpoint`
writes a directory instead of a file::

    step-100/
      shard-00000-of-00002.safetensors   rank 0's chunks + its RNG state and extra
      shard-00001-of-00002.safetensors   rank 1's chunks + its RNG state and extra
      index.json                         DCP metadata as JSON; written last (the commit marker)

and :func:`torchkeep.load_checkpoint` reads it back on any number of ranks (resharding), or on
one process. ``tk.load(DIR)`` returns the full unsharded state; :func:`consolidate` writes it
as one file. Nothing on any load path unpickles: DCP's pickled ``.metadata`` is replaced by
JSON and its ``torch.save``'d non-tensor values by torchkeep-encoded bytes.

``import torchkeep.distributed`` is light; ``torch.distributed.checkpoint`` is imported on the
first sharded save or load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..checkpoint import sharded as _sharded
from ..checkpoint.sharded import INDEX_NAME, is_sharded_checkpoint, is_sharded_context

if TYPE_CHECKING:
    from ..checkpoint.sharded import (
        async_save_checkpoint,
        consolidate,
        load_checkpoint,
        load_full,
        read_index,
        save_checkpoint,
        sweep,
    )

__all__ = [
    "INDEX_NAME",
    "async_save_checkpoint",
    "consolidate",
    "is_sharded_checkpoint",
    "is_sharded_context",
    "load_checkpoint",
    "load_full",
    "read_index",
    "save_checkpoint",
    "sweep",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(_sharded, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
