"""The Lightning ``CheckpointIO`` logic, shared by the ``lightning`` and ``pytorch_lightning`` packages.

The two packages ship distinct ``CheckpointIO`` base classes (``Trainer`` checks plugins with
``isinstance``), so each public module combines :class:`TorchkeepIO` with its own base. Lightning
keeps choosing names (``epoch=1-step=8.ckpt``, ``last.ckpt``), finding ``last``, ranking top-k and
deleting what falls out of it; we only turn its checkpoint dict into bytes and back.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..manager import DirectoryLock
from . import _files

__all__ = ["TorchkeepIO", "patch_load_from_checkpoint"]

logger = logging.getLogger(__name__)


def _map_location(map_location: Any) -> Any:
    # Lightning's default is torch.load's `lambda storage, loc: storage` (keep where saved). Our
    # callables take (tensor, saved_device); a torch-style callable cannot be translated, and tensors
    # are loaded to the CPU from where Lightning moves them to the strategy's device anyway.
    return None if callable(map_location) else map_location


class TorchkeepIO:
    """Save Lightning's checkpoint dict as one torchkeep file; load it back without unpickling.

    Every load checks every tensor's checksum (a damaged file raises
    :class:`~torchkeep.CorruptCheckpointError` naming it).

    Args:
        storage_options: fsspec options for remote paths (``endpoint_url``, ``key``, ...); merged
            with the per-call ``storage_options`` of ``trainer.save_checkpoint``.
        dedup: store each distinct large tensor once per directory, in ``blobs/`` beside the
            ``.ckpt`` files, so a fine-tune with a frozen backbone writes the backbone once and then
            only what changed. Each ``.ckpt`` stays one loadable torchkeep file (``torchkeep
            consolidate`` makes a standalone copy). The plugin then holds the directory's write lock
            from its first save until the run ends (``teardown``) and removes the blobs no
            checkpoint needs whenever ``ModelCheckpoint`` deletes one. Local directories only.

    Example:
        >>> io = TorchkeepIO(dedup=True)
        >>> io.storage_options, io.dedup
        ({}, True)
    """

    def __init__(self, *, storage_options: Mapping[str, Any] | None = None, dedup: bool = False) -> None:
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self.dedup = bool(dedup)
        self._locks: dict[str, DirectoryLock] = {}
        # Lightning's AsyncCheckpointIO saves in a thread while ModelCheckpoint removes in the main
        # one: a sweep between a save's blob writes and its commit would delete the new blobs.
        self._mutex = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Strategies that spawn processes pickle the Trainer and its plugins: locks stay behind.
        state = dict(self.__dict__)
        state["_locks"], state["_mutex"] = {}, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._mutex = threading.Lock()

    def _hold(self, path: Any) -> str:
        """Take (once) the write lock of the directory that holds ``path``; returns the directory."""
        directory: str = os.path.dirname(os.path.abspath(os.fspath(path)))
        if directory not in self._locks:
            os.makedirs(directory, exist_ok=True)
            lock = DirectoryLock(directory)
            lock.acquire()  # CheckpointLockedError names the other writer
            self._locks[directory] = lock
        return directory

    def _options(self, extra: Any) -> dict[str, Any]:
        if extra is not None and not isinstance(extra, Mapping):
            from ..errors import UsageError

            raise UsageError(
                f"storage_options must be a dict of fsspec options (e.g. {{'endpoint_url': ...}}), got {type(extra).__name__}",
                argument="storage_options",
            )
        return {**self.storage_options, **dict(extra or {})}

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        """Write Lightning's whole checkpoint dict to ``path`` as a torchkeep file (atomically).

        Raises:
            UnsupportedValueError: a value has no pickle-free form; the message names its key
                (``checkpoint['hyper_parameters']['transform']``).
            CheckpointWriteError: the write failed; an earlier file at ``path`` is unchanged.

        Example:
            >>> import torch, tempfile, os
            >>> p = os.path.join(tempfile.mkdtemp(), "last.ckpt")
            >>> TorchkeepIO().save_checkpoint({"state_dict": {"w": torch.ones(1)}, "epoch": 0}, p)
            >>> TorchkeepIO().load_checkpoint(p)["epoch"]
            0
        """
        epoch, step = checkpoint.get("epoch"), checkpoint.get("global_step")
        options = self._options(storage_options)
        with self._mutex:
            if self.dedup and not _files.is_remote(path):
                self._hold(path)
            _files.save_tree(
                path,
                checkpoint,
                what="checkpoint",
                epoch=epoch if isinstance(epoch, int) else None,
                step=step if isinstance(step, int) else None,
                dedup=self.dedup,
                storage_options=options,
            )

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Load a checkpoint dict written by :meth:`save_checkpoint` or by ``torchkeep convert``.

        ``weights_only`` is accepted for Lightning's sake and changes nothing: no load unpickles.

        Raises:
            CheckpointNotFoundError: no file at ``path`` (a ``FileNotFoundError``, as Lightning expects).
            CorruptCheckpointError: the file is damaged, not a torchkeep file (an unconverted
                pickled ``.ckpt``: run ``torchkeep convert``), or holds no checkpoint dict.

        Example:
            >>> import tempfile, os
            >>> p = os.path.join(tempfile.mkdtemp(), "a.ckpt")
            >>> TorchkeepIO().save_checkpoint({"global_step": 4}, p)
            >>> TorchkeepIO().load_checkpoint(p)
            {'global_step': 4}
        """
        del weights_only
        from ..errors import CorruptCheckpointError

        shown = os.fspath(path)
        if not _files.is_torchkeep_file(path, self.storage_options) and os.path.isfile(shown):
            raise CorruptCheckpointError(
                f"{shown}: not a torchkeep file (a pickled Lightning .ckpt?). Convert it once with "
                f"`torchkeep convert {shown} NEW.ckpt --trust-pickle` (only for files you trust), then resume from NEW.ckpt",
                path=shown,
                reason="not a torchkeep file",
            )
        tree = _files.load_tree(path, map_location=_map_location(map_location), storage_options=self.storage_options)
        if not isinstance(tree, dict):
            raise CorruptCheckpointError(
                f"{shown}: holds a {type(tree).__name__}, not a Lightning checkpoint dict", path=shown
            )
        return tree

    def remove_checkpoint(self, path: Any) -> None:
        """Delete one checkpoint file (ModelCheckpoint's top-k retention calls this).

        With ``dedup=True`` the blobs that no file left in the directory refers to go too.

        Example:
            >>> import tempfile, os
            >>> p = os.path.join(tempfile.mkdtemp(), "a.ckpt")
            >>> TorchkeepIO().save_checkpoint({}, p); TorchkeepIO().remove_checkpoint(p)
            >>> os.path.exists(p)
            False
        """
        with self._mutex:
            _files.remove(path, self.storage_options)
            logger.debug("removed checkpoint %s", path)
            if self.dedup and not _files.is_remote(path):
                removed = _files.sweep_blobs(self._hold(path))
                logger.debug("removed %d unreferenced blob(s) beside %s", len(removed), path)

    def teardown(self) -> None:
        """Give up the directory locks a ``dedup=True`` plugin holds (Lightning calls this at the end of a run).

        Example:
            >>> TorchkeepIO(dedup=True).teardown()
        """
        with self._mutex:
            locks, self._locks = self._locks, {}
        for lock in locks.values():
            lock.release()


def patch_load_from_checkpoint(saving_module: str) -> None:
    """Let ``LightningModule.load_from_checkpoint`` read torchkeep files; other files go to Lightning.

    Lightning's ``load_from_checkpoint`` reads with ``torch.load`` directly, bypassing the
    trainer's plugins. The loader of ``saving_module`` (``lightning.pytorch.core.saving``) is
    wrapped once: a file that starts like a torchkeep file is read by torchkeep, anything else is
    handed to Lightning's own loader unchanged.

    Example:
        >>> patch_load_from_checkpoint("no.such.module")  # a module not imported: nothing to do
    """
    module: Any = sys.modules.get(saving_module)
    if module is None:
        return
    original: Callable[..., Any] = module.pl_load
    if getattr(original, "__torchkeep__", False):
        return

    def pl_load(path_or_url: Any, map_location: Any = None, weights_only: bool | None = None) -> Any:
        if isinstance(path_or_url, (str, Path)) and _files.is_torchkeep_file(path_or_url):
            return TorchkeepIO().load_checkpoint(path_or_url, map_location=map_location)
        return original(path_or_url, map_location=map_location, weights_only=weights_only)

    pl_load.__torchkeep__ = True  # type: ignore[attr-defined]
    pl_load.__wrapped__ = original  # type: ignore[attr-defined]
    module.pl_load = pl_load
