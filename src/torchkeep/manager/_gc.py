"""``collect_garbage``: sweep a checkpoint directory from outside a training run (``torchkeep gc``)."""

from __future__ import annotations

import logging
import os
from typing import Any

from ..checkpoint.layouts import sweep_all
from ..errors import CheckpointNotFoundError
from ..io._storage import LocalStorage
from ._listing import open_storage
from ._lock import DirectoryLock

__all__ = ["collect_garbage"]

logger = logging.getLogger(__name__)


def collect_garbage(
    directory: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None, min_age_s: float = 3600.0
) -> list[str]:
    """Remove what interrupted saves left and every tensor blob that no step in ``directory`` refers to.

    A local directory is swept under its write lock (refused with
    :class:`CheckpointLockedError` while a run writes into it; that run's own saves sweep it).
    Object stores have no lock: blobs younger than ``min_age_s`` are kept, so the blobs of a save
    in flight in another process survive. Returns the names removed.

    Example:
        >>> import tempfile
        >>> collect_garbage(tempfile.mkdtemp())
        []
    """
    storage = open_storage(directory, storage_options=storage_options, create=False)
    if not isinstance(storage, LocalStorage):
        return sweep_all(storage, min_age_s=min_age_s)
    if not os.path.isdir(storage.root):
        raise CheckpointNotFoundError(f"{storage.root}: no such directory", path=storage.root)
    lock = DirectoryLock(storage.root)
    lock.acquire()
    try:
        removed = sweep_all(storage)
    finally:
        lock.release()
    logger.info("removed %d item(s) from %s", len(removed), storage.root)
    return removed
