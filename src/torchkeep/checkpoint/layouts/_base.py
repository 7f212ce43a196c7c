"""The seam between checkpoint callers and the ways a checkpoint can sit on storage.

A *layout* is one way of laying a checkpoint out: one self-contained file (``single``), one
directory of per-rank shards (``sharded``), or one small file whose large tensors live in
content-addressed blobs shared between steps (``dedup``). Callers — ``save_checkpoint``,
``load_checkpoint``, ``tk.load``, ``convert``, the listing and :class:`CheckpointManager` — only
call the :class:`Layout` methods, and only :mod:`torchkeep.checkpoint.layouts._choose` decides which layout
a save uses or an existing checkpoint has. A new layout is one module implementing this Protocol
plus one rule there.

Every layout names a checkpoint by ``(storage, name)``: a :class:`~torchkeep.io._storage.Storage`
(a local directory or an object-store prefix) and the step's name in it.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ...io._format import MapLocation
from ...io._storage import LocalStorage, Storage
from .._checkpoint import CheckpointInfo

__all__ = ["Header", "Layout", "PendingSave", "SaveRequest", "Stage", "local_target"]

#: Copies a state tree to host memory: ``(copy, wait_until_copied)`` (the manager's snapshot).
Stage = Callable[[Any], tuple[Any, Callable[[], None]]]


@dataclass(frozen=True)
class SaveRequest:
    """What to save: the stateful objects and the progress recorded with them.

    ``annotations`` are extra keys for the checkpoint section (the manager records its
    ``monitor``/``mode`` there); ``verify`` re-reads the written bytes before committing.

    Example:
        >>> SaveRequest(objects={}, step=3).step
        3
    """

    objects: Mapping[str, Any]
    epoch: int | None = None
    step: int | None = None
    metrics: Mapping[str, Any] | None = None
    extra: Any = None
    rng: bool = True
    #: ``strict=True``: a module that would lose state (see ``add_save_check``) is an error, not a warning.
    strict: bool = False
    annotations: Mapping[str, Any] = field(default_factory=dict)
    verify: bool = False


@dataclass
class PendingSave:
    """A save whose state is collected (and, in the background case, copied): ``commit()`` writes it.

    ``info`` describes the checkpoint before it is written (``size_bytes`` is None).

    Example:
        >>> p = PendingSave(CheckpointInfo(step=1), lambda: CheckpointInfo(step=1, size_bytes=8))
        >>> p.commit().size_bytes
        8
    """

    info: CheckpointInfo
    commit: Callable[[], CheckpointInfo]


@dataclass
class Header:
    """What a listing learns from a checkpoint without reading tensor data.

    Example:
        >>> Header(CheckpointInfo(step=2), kind="file").kind
        'file'
    """

    info: CheckpointInfo
    kind: str
    #: ``{"monitor": ..., "mode": ...}`` of the manager that saved it
    manager: dict[str, Any] | None = None
    #: blob names the checkpoint refers to (dedup steps only)
    blobs: frozenset[str] = frozenset()


@runtime_checkable
class Layout(Protocol):
    """How one kind of checkpoint is saved, loaded, listed, verified, deleted and swept.

    Example:
        >>> from torchkeep.checkpoint.layouts import SingleFileLayout
        >>> isinstance(SingleFileLayout(), Layout)
        True
    """

    #: the ``kind`` of a listing entry saved by this layout ("file", "sharded", "dedup")
    kind: str

    def step_name(self, step: int) -> str:
        """The name a checkpoint manager gives a new checkpoint of ``step``."""

    def begin_save(
        self, storage: Storage, name: str, request: SaveRequest, *, stage: Stage | None = None
    ) -> PendingSave:
        """Collect the state now (``stage``: and copy it, for a background write); commit writes it."""

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
        """Restore ``objects`` from the checkpoint; return its info."""

    def load_tree(
        self, storage: Storage, name: str, *, map_location: MapLocation = None, verify: bool = True, mmap: bool = True
    ) -> Any:
        """The whole saved tree (what ``tk.load`` returns)."""

    def read_header(self, storage: Storage, name: str) -> Header:
        """Info from headers only (no tensor data is read)."""

    def verify(self, storage: Storage, name: str) -> None:
        """Check every tensor checksum; raise :class:`CorruptCheckpointError` naming the bad one."""

    def delete(self, storage: Storage, name: str) -> None:
        """Remove the checkpoint so that no listing shows it half-deleted; missing is not an error."""

    def list(self, storage: Storage) -> list[str]:
        """Names of this layout's checkpoints in ``storage`` (never a temporary)."""

    def sweep(self, storage: Storage) -> builtins.list[str]:
        """Remove what interrupted saves (and deletes) left behind; call it only under the write lock."""


def local_target(path: str | os.PathLike[str]) -> tuple[LocalStorage, str]:
    """``(storage, name)`` for a local path, so path-based calls use the same layouts as the manager.

    Example:
        >>> storage, name = local_target("runs/ckpt.safetensors")
        >>> storage.root, name
        ('runs', 'ckpt.safetensors')
    """
    text = os.fspath(path).rstrip("/") or "/"
    directory, name = os.path.split(text)
    return LocalStorage(directory, create=False), name
