"""What the checkpoint manager needs to treat a sharded step directory as one of its entries.

A manager directory holds single-file checkpoints (``ckpt-<step>-<time>.safetensors``) and, in
multi-process runs, sharded ones: directories named ``ckpt-<step>-<time>.sharded``. They are
listed, read (from ``index.json`` only), verified, and deleted here; deletion renames the
directory to a temporary name first, so a half-deleted step is never listed as committed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from typing import Any

from ...io._format import open_file
from ...io._storage import is_temporary, temporary_name
from .._info import info_from_section
from .._state import CheckpointInfo

__all__ = ["SUFFIX", "delete", "list_names", "read_header", "sweep", "verify"]

SUFFIX = ".sharded"

logger = logging.getLogger(__name__)


def list_names(root: str | os.PathLike[str]) -> list[str]:
    """Names of sharded step directories under ``root`` (committed or not; temporaries excluded).

    Example:
        >>> import tempfile
        >>> list_names(tempfile.mkdtemp())
        []
    """
    try:
        with os.scandir(root) as entries:
            return sorted(
                e.name for e in entries if e.name.endswith(SUFFIX) and not is_temporary(e.name) and e.is_dir()
            )
    except FileNotFoundError:
        return []


def read_header(path: str) -> tuple[CheckpointInfo, dict[str, Any] | None]:
    """The info of a sharded step from its ``index.json`` (no shard is opened), and the manager's keys.

    Raises:
        CheckpointNotFoundError: no index (never committed), or the directory is gone.
        CorruptCheckpointError: the index is malformed.
    """
    from ._index import read_index  # DCP's metadata classes: imported only when a sharded step exists

    index = read_index(path)
    size = 0
    for name in index.files:
        with contextlib.suppress(OSError):  # a shard gone missing shows up on load, not in a listing
            size += os.path.getsize(os.path.join(path, name))
    info = info_from_section(path, index.checkpoint, size)
    manager = index.checkpoint.get("manager")
    return info, manager if isinstance(manager, dict) else None


def verify(path: str) -> None:
    """Check every tensor checksum of every shard of a sharded step.

    Raises:
        CorruptCheckpointError: naming the shard file and the tensor that does not match.
    """
    from ._index import read_index

    index = read_index(path)
    for rank in range(index.world_size):
        reader = open_file(index.shard_path(rank))
        try:
            reader.verify()
        finally:
            reader.close()


def delete(path: str) -> None:
    """Remove a sharded step: renamed to a temporary name first (atomic), then removed."""
    parent, name = os.path.split(path)
    doomed = os.path.join(parent, temporary_name(name))
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def sweep(directory: str | os.PathLike[str]) -> list[str]:
    """Delete sharded saves that never committed (temporary directories) under ``directory``.

    Only call it when no save into ``directory`` is running. Returns the names removed.

    Example:
        >>> import tempfile
        >>> sweep(tempfile.mkdtemp())
        []
    """
    root = os.fspath(directory)
    removed = []
    with contextlib.suppress(FileNotFoundError), os.scandir(root) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and is_temporary(entry.name):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.name)
    if removed:
        logger.info("removed %d uncommitted sharded save(s) under %s: %s", len(removed), root, removed)
    return sorted(removed)
