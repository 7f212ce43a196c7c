"""The sharded layout: one directory per checkpoint, one shard file per rank, ``index.json`` last.

It adapts :mod:`torchkeep.distributed` (DCP with torchkeep storage) to the :class:`Layout`
seam. Sharded checkpoints live on local (or shared) filesystems only; on an object store a
sharded save is refused with a :class:`UsageError`.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any

from ...errors import UsageError
from ...io._format import MapLocation
from ...io._storage import LocalStorage, Storage
from .._checkpoint import CheckpointInfo
from ._base import Header, PendingSave, SaveRequest, Stage
from ._names import SHARDED_SUFFIX, checkpoint_name, parse_name, storage_path

__all__ = ["ShardedLayout"]


def _local(storage: Storage, what: str) -> LocalStorage:
    if not isinstance(storage, LocalStorage):
        raise UsageError(
            f"{what}: sharded (multi-rank) checkpoints need a local or shared filesystem directory, "
            f"not {storage.root}; save into a mounted directory and copy the steps to the object store",
            argument="directory",
        )
    return storage


class ShardedLayout:
    """A directory of per-rank shards per checkpoint (``torch.distributed.checkpoint``).

    Example:
        >>> ShardedLayout().step_name(5).endswith(".sharded")
        True
    """

    kind = "sharded"

    def step_name(self, step: int) -> str:
        """``ckpt-<step>-<time>.sharded``."""
        return checkpoint_name(step, suffix=SHARDED_SUFFIX)

    def begin_save(
        self, storage: Storage, name: str, request: SaveRequest, *, stage: Stage | None = None
    ) -> PendingSave:
        """A collective: call it on every rank. With ``stage``, DCP stages the state and writes in the background."""
        from .. import sharded

        path = _local(storage, name).path(name)
        kw: dict[str, Any] = dict(
            epoch=request.epoch,
            step=request.step,
            metrics=request.metrics,
            extra=request.extra,
            rng=request.rng,
            annotations=dict(request.annotations) or None,
        )
        info = CheckpointInfo(
            path=path, step=request.step, epoch=request.epoch, metrics=dict(request.metrics or {}), extra=request.extra
        )
        if stage is not None:
            future = sharded.async_save_checkpoint(path, **kw, **request.objects)
            return PendingSave(info, future.result)
        return PendingSave(info, lambda: sharded.save_checkpoint(path, **kw, **request.objects))

    def load(
        self,
        storage: Storage,
        name: str,
        objects: Mapping[str, Any],
        *,
        map_location: MapLocation = None,
        strict: bool = True,
        rng: bool = True,
        verify: bool = True,
    ) -> CheckpointInfo:
        """Restore ``objects``, resharding to this run (a collective under a process group)."""
        from .. import sharded

        path = _local(storage, name).path(name)
        return sharded.load_checkpoint(
            path, map_location=map_location, strict=strict, rng=rng, verify=verify, **objects
        )

    def load_tree(
        self, storage: Storage, name: str, *, map_location: MapLocation = None, verify: bool = True, mmap: bool = True
    ) -> Any:
        """The full, unsharded tree, on one process."""
        from .. import sharded

        return sharded.load_full(_local(storage, name).path(name), map_location=map_location, verify=verify)

    def read_header(self, storage: Storage, name: str) -> Header:
        """Info from ``index.json`` only (no shard is opened)."""
        from ..sharded import _listing

        info, manager = _listing.read_header(_local(storage, name).path(name))
        info.path = storage_path(storage, name)
        return Header(info, self.kind, manager)

    def verify(self, storage: Storage, name: str) -> None:
        """Check every tensor checksum of every shard."""
        from ..sharded import _listing

        _listing.verify(_local(storage, name).path(name))

    def delete(self, storage: Storage, name: str) -> None:
        """Rename the directory to a temporary name (atomic), then remove it."""
        from ..sharded import _listing

        _listing.delete(_local(storage, name).path(name))

    def list(self, storage: Storage) -> list[str]:
        """Manager-named ``.sharded`` directories (object stores hold none)."""
        if not isinstance(storage, LocalStorage):
            return []
        from ..sharded import _listing

        return [n for n in _listing.list_names(storage.root) if parse_name(n) is not None]

    def sweep(self, storage: Storage) -> builtins.list[str]:
        """Sharded saves that never committed (temporary directories)."""
        if not isinstance(storage, LocalStorage) or not storage.root:
            return []
        from ..sharded import _listing

        return _listing.sweep(storage.root)
