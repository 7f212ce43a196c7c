"""The one place that decides which layout a save uses and which layout an existing checkpoint has.

Rules, in order:

* saving: an initialized process group with several ranks, or DTensor (FSDP2) parameters, means
  ``sharded`` (a collective; ``dedup`` is refused there); else ``dedup`` when asked; else ``single``;
* an existing checkpoint: a directory (or a manager name ending in ``.sharded``) is ``sharded``;
  a file is ``single`` — or ``dedup`` when its header refers to blobs (both read the same way).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ...errors import UsageError
from ...io._storage import LocalStorage, Storage
from ._base import Layout
from ._names import SHARDED_SUFFIX
from .dedup import DedupLayout
from .sharded import ShardedLayout
from .single import SingleFileLayout

__all__ = ["ALL_LAYOUTS", "layout_at", "layout_for_kind", "layout_for_name", "layout_for_save", "sweep_all"]

#: One instance of each layout, for listing and sweeping a directory (they hold no state).
ALL_LAYOUTS: tuple[Layout, ...] = (SingleFileLayout(), ShardedLayout(), DedupLayout())


def layout_for_save(objects: Mapping[str, Any], *, dedup: bool = False) -> Layout:
    """The layout a save of ``objects`` uses (a fresh instance).

    Raises:
        UsageError: ``dedup=True`` in a sharded (multi-rank) run.

    Example:
        >>> import torch
        >>> layout_for_save({"model": torch.nn.Linear(1, 1)}, dedup=True).kind
        'dedup'
    """
    from .. import sharded

    if sharded.is_sharded_context(objects):
        if dedup:
            raise UsageError(
                "dedup=True is not supported for sharded (multi-rank or FSDP2) checkpoints: each rank writes "
                "its own shard through torch.distributed.checkpoint. Pass dedup=False, or save from one process.",
                argument="dedup",
            )
        return ShardedLayout()
    return DedupLayout() if dedup else SingleFileLayout()


def layout_for_name(storage: Storage, name: str) -> Layout:
    """The layout of the existing checkpoint ``name`` in ``storage`` (by name; no read).

    Example:
        >>> layout_for_name(LocalStorage(".", create=False), "ckpt-000000001-20260101T000000Z.sharded").kind
        'sharded'
    """
    if name.endswith(SHARDED_SUFFIX):
        return ShardedLayout()
    if isinstance(storage, LocalStorage) and os.path.isdir(storage.path(name)):
        return ShardedLayout()
    return SingleFileLayout()


def layout_for_kind(kind: str) -> Layout:
    """The layout of a listing entry's ``kind``.

    Example:
        >>> layout_for_kind("dedup").kind
        'dedup'
    """
    for layout in ALL_LAYOUTS:
        if layout.kind == kind:
            return layout
    raise UsageError(f"unknown checkpoint layout {kind!r}; expected one of {[x.kind for x in ALL_LAYOUTS]}")


def layout_at(path: str | os.PathLike[str]) -> Layout:
    """The layout of the checkpoint at a local path (a directory is sharded).

    Example:
        >>> layout_at("model.safetensors").kind
        'file'
    """
    return ShardedLayout() if os.path.isdir(path) else SingleFileLayout()


def sweep_all(storage: Storage, *, min_age_s: float = 0.0) -> list[str]:
    """Run every layout's sweep over ``storage``: what interrupted saves left, and unreferenced blobs.

    Call it only while holding the directory's write lock (object stores: pass ``min_age_s`` so
    that blobs of a save in flight elsewhere are kept). Returns what was removed.

    Example:
        >>> import tempfile
        >>> sweep_all(LocalStorage(tempfile.mkdtemp()))
        []
    """
    removed: list[str] = []
    # sharded first: its leftovers are directories, which the file sweeps must not meet
    for layout in (ShardedLayout(), SingleFileLayout(), DedupLayout(min_age_s=min_age_s)):
        removed += layout.sweep(storage)
    return sorted(set(removed))
