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

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..checkpoint.sharded._api import (
        async_save_checkpoint,
        consolidate,
        load_checkpoint,
        load_full,
        save_checkpoint,
    )
    from ..checkpoint.sharded._index import read_index
    from ..checkpoint.sharded._listing import sweep

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

#: The commit marker of a sharded checkpoint directory.
INDEX_NAME = "index.json"

_SHARD_RE = re.compile(r"^(\.)?shard-\d{5}-of-\d{5}\.safetensors(\.tmp-[0-9a-f]{12})?$")

_LAZY = {
    "async_save_checkpoint": "_api",
    "consolidate": "_api",
    "load_checkpoint": "_api",
    "load_full": "_api",
    "save_checkpoint": "_api",
    "sweep": "_listing",
    "read_index": "_index",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"torchkeep.checkpoint.sharded.{module}"), name)


def is_sharded_context(objects: Mapping[str, Any] | None = None) -> bool:
    """True when a save should be sharded: an initialized process group with more than one rank,
    or (in a one-rank group) a module among ``objects`` whose parameters are DTensors (FSDP2).

    Example:
        >>> is_sharded_context()
        False
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    if dist.get_world_size() > 1:
        return True
    modules = [o for o in (objects or {}).values() if callable(getattr(o, "parameters", None))]
    if not modules:
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for m in modules for p in m.parameters())


def is_sharded_checkpoint(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a directory that holds (or was meant to hold) a sharded checkpoint:
    an ``index.json``, or shard files of a save that never committed.

    Example:
        >>> is_sharded_checkpoint("model.safetensors")
        False
    """
    if not os.path.isdir(path):
        return False
    if os.path.isfile(os.path.join(path, INDEX_NAME)):
        return True
    with os.scandir(path) as entries:
        return any(_SHARD_RE.match(e.name) for e in entries)
