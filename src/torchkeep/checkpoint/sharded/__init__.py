"""Sharded checkpoints: one directory per step, one shard per rank; public as :mod:`torchkeep.distributed`.

Importing this package is light: the planner and storage (``_api``, ``_dcp``, ``_index``,
``_listing``) and ``torch.distributed.checkpoint`` load on first use.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._api import async_save_checkpoint, load_checkpoint, save_checkpoint
    from ._full import consolidate, load_full
    from ._index import read_index
    from ._listing import sweep

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
    "consolidate": "_full",
    "load_checkpoint": "_api",
    "load_full": "_full",
    "save_checkpoint": "_api",
    "sweep": "_listing",
    "read_index": "_index",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


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
