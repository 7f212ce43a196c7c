"""``CheckpointManager``: numbered checkpoints in one directory, with retention, restore and async saves.

How a save stays safe, in order:

1. the state is collected (and, with ``async_save=True``, copied to host memory) — a failing
   ``state_dict()`` raises :class:`CheckpointWriteError` before any byte is written;
2. the file is written under a temporary name (local) or to a local staging file (object stores),
   then **verified** by re-reading every tensor checksum;
3. it is committed atomically (rename + directory fsync, or one whole-object upload);
4. only then does retention delete what no policy keeps. The newest checkpoint and the one just
   written are always kept (a run rolled back to an earlier step saves lower step numbers than
   the files already there; its new checkpoints must not be deleted by the save that wrote them).

So at every instant the directory holds every checkpoint that existed before the save, plus
possibly the new one — never a partial file under a checkpoint name. Everything the manager knows
(steps, metrics, which is best) is read back from the files' headers, so a restarted run applies
retention exactly as an uninterrupted one would.

How a step is laid out (one file, a sharded directory, or a deduplicated step sharing tensor
blobs) is the business of its layout (:mod:`torchkeep.checkpoint.layouts`); the manager only calls the
:class:`~torchkeep.checkpoint.layouts.Layout` methods. Async saves of every layout go through one
:class:`BackgroundSaver`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from ..checkpoint._checkpoint import CheckpointInfo, check_stateful, jsonable_metrics
from ..checkpoint.layouts import PendingSave, SaveRequest, layout_for_kind, layout_for_save, sweep_all
from ..errors import (
    CheckpointWriteError,
    TorchkeepError,
    UsageError,
)
from ..io import _format
from ..io._storage import LocalStorage, Storage
from ._async import BackgroundSaver, BufferPool, snapshot
from ._listing import (
    MANAGER_KEY,
    CheckpointEntry,
    best_first,
    check_step,
    open_storage,
    parse_name,
    scan,
    storage_path,
)
from ._lock import DirectoryLock
from ._policies import KeepAny, Policy, combined_policy, metric_value
from ._restore import restore_step

__all__ = ["CheckpointManager"]

logger = logging.getLogger(__name__)


class CheckpointManager:
    """Save numbered checkpoints into a directory; keep the right ones; resume from the newest good one.

    Args:
        directory: a local directory (created if missing) or an fsspec URL such as
            ``s3://bucket/run``.
        keep_last: keep the N newest checkpoints.
        keep_best: keep the K best checkpoints by ``monitor`` (needs ``monitor``).
        monitor: the metric (a key of ``metrics=`` in :meth:`save`) that defines "best".
        mode: ``"min"`` (lower is better, e.g. a loss) or ``"max"`` (e.g. accuracy).
        keep_every: also keep every checkpoint whose step is a multiple of this.
        async_save: :meth:`save` copies the state to host memory and returns; a background thread
            writes, verifies and applies retention. At most one save is in flight.
        storage_options: passed to fsspec for remote directories (``endpoint_url``, ``key``,
            ``secret``, ...).
        retention: extra retention policies (e.g. :class:`KeepNewerThan`); a checkpoint is kept
            when any policy keeps it. With no policy at all, every checkpoint is kept.
        read_only: open without taking the write lock, to list and restore while another process
            trains; :meth:`save` is refused.
        dedup: store each distinct large tensor once, in content-addressed blobs shared by the
            steps (frozen backbones, LoRA adapters and new heads are then written once); see
            ``docs/guide/manager.md``. Off by default: every step is then one standalone file.
        **objects: the stateful objects to save and restore (``model=``, ``optimizer=``,
            ``scheduler=``, ``scaler=``, anything with ``state_dict()``/``load_state_dict()``).

    Raises:
        CheckpointLockedError: another live process has the directory open for writing.
        UsageError: ``mode`` is not "min"/"max", ``keep_best`` lacks ``monitor``, or a count is not
            a positive int.

    Example:
        >>> import torch, torchkeep as tk, tempfile
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with tk.CheckpointManager(tempfile.mkdtemp(), keep_last=2, model=model, optimizer=opt) as mgr:
        ...     for step in (100, 200, 300):
        ...         _ = mgr.save(step=step, metrics={"loss": 1 / step})
        ...     [c.step for c in mgr.checkpoints], mgr.restore().step
        ([200, 300], 300)
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        keep_last: int | None = None,
        keep_best: int | None = None,
        monitor: str | None = None,
        mode: str = "min",
        keep_every: int | None = None,
        async_save: bool = False,
        storage_options: dict[str, Any] | None = None,
        retention: Policy | Sequence[Policy] | None = None,
        read_only: bool = False,
        dedup: bool = False,
        **objects: Any,
    ) -> None:
        if mode not in ("min", "max"):
            raise UsageError(
                f"mode must be 'min' or 'max' (min: lower is better, e.g. a loss; max: e.g. accuracy), got {mode!r}",
                argument="mode",
            )
        self.policy: KeepAny | None = combined_policy(
            keep_last=keep_last,
            keep_best=keep_best,
            monitor=monitor,
            mode=mode,
            keep_every=keep_every,
            retention=retention,
        )
        for name, obj in objects.items():
            check_stateful(name, obj)
        self.monitor = monitor
        self.mode = mode
        self.async_save = bool(async_save)
        self.read_only = bool(read_only)
        self._objects: dict[str, Any] = dict(objects)
        self._storage: Storage = open_storage(directory, storage_options=storage_options, create=not read_only)
        self.directory = self._storage.root
        self._cache: dict[str, CheckpointEntry] = {}
        self._mutex = threading.RLock()
        self._closed = False
        self._lock: DirectoryLock | None = None
        self.dedup = bool(dedup)
        self._layout = layout_for_save(self._objects, dedup=self.dedup)
        # several ranks (torchkeep.distributed): each saves its shard, rank 0 commits, locks, deletes
        self._sharded = self._layout.kind == "sharded"
        self._rank0 = not self._sharded or _rank() == 0
        if not read_only and isinstance(self._storage, LocalStorage) and self._rank0:
            self._lock = DirectoryLock(self._storage.root)
            self._lock.acquire()
            self.collect_garbage()
        elif not read_only:
            logger.debug("%s is an object store: no cross-process write lock (see docs/guide/manager.md)", directory)
        self._saver = BackgroundSaver(self.directory) if self.async_save else None
        self._pool = BufferPool()
        self._told_no_metric = False

    # -- listing ------------------------------------------------------------------------------
    @property
    def entries(self) -> list[CheckpointEntry]:
        """Every checkpoint file in the directory, oldest first, readable or not (see ``status``)."""
        with self._mutex:
            return scan(self._storage, self._cache)

    @property
    def checkpoints(self) -> list[CheckpointInfo]:
        """Info of every readable checkpoint, oldest step first (headers only; nothing is verified)."""
        return [e.info for e in self.entries if e.info is not None]

    @property
    def latest(self) -> CheckpointInfo | None:
        """The checkpoint with the highest step, or None in an empty directory."""
        ok = self.checkpoints
        return ok[-1] if ok else None

    @property
    def best(self) -> CheckpointInfo | None:
        """The checkpoint with the best ``monitor`` metric (None without ``monitor`` or without values)."""
        entries = best_first(self.entries, self.monitor, self.mode)
        return entries[0].info if entries else None

    # -- saving -------------------------------------------------------------------------------
    def save(
        self,
        *,
        step: int,
        epoch: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        extra: Any = None,
        overwrite: bool = False,
    ) -> CheckpointInfo:
        """Save a checkpoint of every object for ``step``, then apply retention.

        With ``async_save=True`` this returns once the state is copied to host memory (the
        returned info has ``size_bytes=None``); the error of a failed background save is raised
        by the next call to :meth:`save`, :meth:`wait`, :meth:`restore` or :meth:`close`.

        Raises:
            CheckpointWriteError: the step already has a checkpoint (pass ``overwrite=True``),
                collecting the state failed, or the write failed. Earlier checkpoints are intact.
            UsageError: ``step`` is not a non-negative int, or ``metrics`` is not a dict.

        Example:
            >>> import torch, torchkeep as tk, tempfile
            >>> mgr = tk.CheckpointManager(tempfile.mkdtemp(), model=torch.nn.Linear(1, 1))
            >>> mgr.save(step=1, metrics={"loss": 0.5}).metrics
            {'loss': 0.5}
            >>> mgr.close()
        """
        self._check_open()
        if self.read_only:
            raise CheckpointWriteError(
                f"{self.directory} was opened with read_only=True; open it without read_only to save",
                path=self.directory,
            )
        step = check_step(step)
        if metrics is not None and not isinstance(metrics, Mapping):
            raise UsageError(
                f"metrics must be a dict of name -> number (e.g. {{'val_loss': 0.31}}), got {type(metrics).__name__}",
                argument="metrics",
            )
        if self._saver is not None:
            self._saver.wait()  # one save in flight; raises the previous save's error
        existing = [e for e in self.entries if e.step == step]
        if existing and not overwrite:
            raise CheckpointWriteError(
                f"step {step} already has a checkpoint ({existing[-1].path}); pass overwrite=True to replace "
                "it (the old file is removed only after the new one is written), or save a new step",
                path=existing[-1].path,
            )
        if self.monitor:
            self._check_monitored(step, metrics)
        name = self._layout.step_name(step)
        annotations: dict[str, Any] = (
            {MANAGER_KEY: {"monitor": self.monitor, "mode": self.mode}} if self.monitor else {}
        )
        request = SaveRequest(
            self._objects, epoch=epoch, step=step, metrics=metrics, extra=extra, annotations=annotations, verify=True
        )
        try:
            pending = self._layout.begin_save(
                self._storage, name, request, stage=self._stage if self._saver is not None else None
            )
        except TorchkeepError:
            raise
        except Exception as exc:
            raise CheckpointWriteError(
                f"could not collect the state for step {step}"
                + (" (and copy it to host memory)" if self._saver is not None else "")
                + f": {type(exc).__name__}: {exc}. Nothing was written; earlier checkpoints are unchanged."
            ) from exc
        if self._saver is None:
            return self._commit(name, pending, existing, annotations.get(MANAGER_KEY))
        keys = annotations.get(MANAGER_KEY)
        self._saver.submit(lambda: self._commit(name, pending, existing, keys), pending.info.path or name)
        return pending.info

    def _stage(self, tree: Any) -> tuple[Any, Any]:
        return snapshot(tree, self._pool)

    def _check_monitored(self, step: int, metrics: Mapping[str, Any] | None) -> None:
        # Without the metric, keep_best cannot rank a checkpoint: the runs then keep only what the
        # other policies keep, which looks like "best-K deleted my checkpoints". Say so, once.
        if self._told_no_metric or not self._rank0:
            return
        try:
            stored = jsonable_metrics(metrics)  # as the file will hold them (0-d tensors as numbers)
        except TorchkeepError:
            return  # collecting the state raises it, naming the metric
        if metric_value(stored, str(self.monitor)) is not None:
            return
        self._told_no_metric = True
        logger.warning(
            "save(step=%d): metrics has no finite %r (got %s), so keep_best and restore('best') cannot rank this "
            "checkpoint; pass save(metrics={%r: value})",
            step,
            self.monitor,
            sorted(metrics or {}),
            self.monitor,
        )

    def _commit(
        self, name: str, pending: PendingSave, replaced: list[CheckpointEntry], manager_keys: dict[str, Any] | None
    ) -> CheckpointInfo:
        """Write the step, then (rank 0) record it, drop what it replaces, apply retention and sweep."""
        info = pending.commit()
        if not self._rank0:
            return info
        with self._mutex:
            parsed = parse_name(name)
            if parsed is not None and not self._sharded:  # a sharded step's header is read on the next scan
                self._cache[name] = CheckpointEntry(
                    name=name,
                    step=parsed[0],
                    timestamp=parsed[1],
                    path=storage_path(self._storage, name),
                    kind=self._layout.kind,
                    info=info,
                    manager=manager_keys,
                )
            deleted = 0
            for old in replaced:
                if old.name != name:
                    deleted += self._delete(old)
            deleted += self._apply_retention(written=name)
            if deleted:
                self.collect_garbage()
        logger.debug("saved %s (%s bytes)", info.path, info.size_bytes)
        return info

    def _delete(self, entry: CheckpointEntry) -> int:
        try:
            layout_for_kind(entry.kind).delete(self._storage, entry.name)
        except OSError as exc:  # the save itself succeeded; a leftover checkpoint is harmless
            logger.warning("retention could not delete %s: %s", entry.path, exc)
            return 0
        self._cache.pop(entry.name, None)
        logger.debug("retention deleted %s", entry.path)
        return 1

    def _apply_retention(self, *, written: str | None = None) -> int:
        """Delete what no policy keeps, except the highest step and ``written`` (the step just saved)."""
        if self.policy is None:
            return 0
        entries = scan(self._storage, self._cache)
        if not entries:
            return 0
        mask = self.policy.keep([e.record() for e in entries])
        mask[-1] = True  # never delete the newest checkpoint
        deleted = 0
        for entry, keep in zip(entries, mask, strict=True):
            if not keep and entry.name != written:
                deleted += self._delete(entry)
        return deleted

    def collect_garbage(self) -> list[str]:
        """Remove what interrupted saves left and every tensor blob that no listed step refers to.

        Runs when a writing manager opens a directory and after retention deletes a step; call it
        yourself after deleting steps by hand. Needs the write lock (refused when ``read_only``).
        Returns the names removed (blobs as ``blobs/<hash>``).

        Example:
            >>> import torch, torchkeep as tk, tempfile
            >>> with tk.CheckpointManager(tempfile.mkdtemp(), model=torch.nn.Linear(1, 1)) as mgr:
            ...     mgr.collect_garbage()
            []
        """
        if self.read_only:
            raise CheckpointWriteError(
                f"{self.directory} was opened with read_only=True; garbage collection needs the write lock",
                path=self.directory,
            )
        if not self._rank0:
            return []
        with self._mutex:
            removed = sweep_all(self._storage)
        if removed:
            logger.info("removed %d leftover(s) of interrupted saves or deleted steps: %s", len(removed), removed[:10])
        return removed

    # -- restoring ----------------------------------------------------------------------------
    def restore(
        self, which: str | int = "latest", *, map_location: _format.MapLocation = None, strict: bool = True
    ) -> CheckpointInfo | None:
        """Load a checkpoint into the manager's objects; return its info, or None if there is none.

        ``which`` is ``"latest"`` (highest step), ``"best"`` (best ``monitor`` value) or a step.
        For ``"latest"``/``"best"`` a checkpoint that fails verification is skipped with a
        warning naming it, and the next one is used. A step asked for by number is never
        replaced by another one: if it is corrupt, that raises.

        Raises:
            CheckpointNotFoundError: no checkpoint for the step asked for (or, for "best", none
                records the monitored metric).
            CorruptCheckpointError: the step asked for (or every candidate) is corrupt.
            UsageError: ``which`` is none of the above, or "best" without ``monitor``.

        Example:
            >>> import torch, torchkeep as tk, tempfile
            >>> mgr = tk.CheckpointManager(tempfile.mkdtemp(), model=torch.nn.Linear(1, 1))
            >>> mgr.restore() is None  # a fresh run
            True
            >>> _ = mgr.save(step=5)
            >>> mgr.restore(5).step
            5
            >>> mgr.close()
        """
        self._check_open()
        self.wait()
        return restore_step(
            self._storage,
            self._objects,
            which,
            list_entries=lambda: self.entries,
            monitor=self.monitor,
            mode=self.mode,
            map_location=map_location,
            strict=strict,
        )

    # -- lifecycle ----------------------------------------------------------------------------
    def wait(self) -> None:
        """Block until the background save (if any) is written; raise its error if it failed."""
        if self._saver is not None:
            self._saver.wait()

    def close(self) -> None:
        """Flush the background save, then release the directory. Safe to call twice."""
        if self._closed:
            return
        try:
            self.wait()
        finally:
            self._closed = True
            if self._lock is not None:
                self._lock.release()

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointWriteError(f"this CheckpointManager for {self.directory} is closed", path=self.directory)

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # an exception is already on its way out: do not replace it with a save error
            self.close()
        except Exception as close_exc:
            logger.error("while closing %s after an error: %s", self.directory, close_exc)

    def __repr__(self) -> str:
        mode = "async" if self.async_save else "sync"
        return f"CheckpointManager({self.directory!r}, {mode}, objects={sorted(self._objects)})"


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
