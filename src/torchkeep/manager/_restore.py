"""Restoring one step of a checkpoint directory: which step, the fall-back past damaged ones.

A step asked for by number is that step or an error. ``"latest"`` and ``"best"`` walk their
candidates in order and skip, with one warning each, a step that fails verification. Another
process may delete steps while this one reads (a trainer's retention, seen by a read-only
manager): a candidate that vanished is no failure, the directory is listed again.
"""

from __future__ import annotations

import logging
import operator
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from ..checkpoint._checkpoint import CheckpointInfo
from ..checkpoint.layouts import layout_for_kind
from ..errors import CheckpointNotFoundError, CorruptCheckpointError, UsageError
from ..io import _format
from ..io._storage import Storage
from ._listing import CheckpointEntry, best_first, list_names

__all__ = ["restore_step"]

logger = logging.getLogger(__name__)

_RESCANS = 20  # listings of a directory whose steps keep vanishing before restore gives up on it
_EMPTY_LISTINGS = 3  # empty listings in a row before a directory counts as empty


def restore_step(
    storage: Storage,
    objects: Mapping[str, Any],
    which: Any,
    *,
    list_entries: Callable[[], list[CheckpointEntry]],
    monitor: str | None,
    mode: str,
    map_location: _format.MapLocation = None,
    strict: bool = True,
) -> CheckpointInfo | None:
    """Load step ``which`` (``"latest"``, ``"best"`` or a step number) of ``storage`` into ``objects``.

    Returns its info, or None when the directory holds no checkpoint (errors name ``storage.root``). See
    :meth:`torchkeep.CheckpointManager.restore` for the rules and the errors.

    Example:
        >>> import torch, torchkeep as tk, tempfile
        >>> from torchkeep.io._storage import LocalStorage
        >>> d = tempfile.mkdtemp()
        >>> with tk.CheckpointManager(d, model=torch.nn.Linear(1, 1)) as mgr:
        ...     _ = mgr.save(step=3)
        >>> restore_step(LocalStorage(d), {"model": torch.nn.Linear(1, 1)}, "latest",
        ...              list_entries=lambda: tk.list_checkpoints(d), monitor=None, mode="min").step
        3
    """
    directory = storage.root
    if not isinstance(which, (str, bool)) and hasattr(which, "__index__"):
        which = operator.index(which)  # numpy ints too
    if isinstance(which, int) and not isinstance(which, bool):
        entries = list_entries()
        matches = [e for e in entries if e.step == which]
        if not matches:
            steps = [e.step for e in entries]
            raise CheckpointNotFoundError(
                f"{directory} has no checkpoint for step {which}; it has steps {steps}", path=directory
            )
        return _load_entry(storage, objects, matches[-1], map_location=map_location, strict=strict)
    if which not in ("latest", "best"):
        raise UsageError(f"which must be 'latest', 'best' or a step number, got {which!r}", argument="which")
    if which == "best" and not monitor:
        raise UsageError(
            "restore('best') needs the manager to be created with monitor= (the metric that defines "
            "'best'), e.g. CheckpointManager(dir, monitor='val_loss', ...); or restore 'latest' or a step",
            argument="which",
        )
    skipped: list[str] = []
    empty = 0
    for _ in range(_RESCANS):
        entries = list_entries()
        if not entries:
            # A listing taken while another process commits a step and deletes the one before can
            # miss both names (a rename in and an unlink out during one readdir): read it again
            # before an empty directory means "nothing to restore".
            empty += 1
            if empty < _EMPTY_LISTINGS:
                continue
            return None
        candidates = entries[::-1] if which == "latest" else _best(entries, directory, monitor, mode)
        vanished = False
        for entry in candidates:
            if entry.path in skipped:
                continue
            try:
                return _load_entry(storage, objects, entry, map_location=map_location, strict=strict)
            except (CorruptCheckpointError, CheckpointNotFoundError) as exc:
                if entry.name not in list_names(storage):
                    logger.debug("%s vanished while it was being restored (%s); listing again", entry.path, exc)
                    vanished = True
                    break
                skipped.append(entry.path)
                # One report, as a warning the caller can filter or turn into an error (a log line
                # as well would print it twice); the error already names the file, so say it once.
                reason = str(exc).removeprefix(f"{entry.path}: ")
                message = f"skipping checkpoint {entry.path} (step {entry.step}): {reason}; trying the next one"
                warnings.warn(message, UserWarning, stacklevel=3)  # at the caller of manager.restore()
        if not vanished:
            break
    if not skipped:
        return None
    raise CorruptCheckpointError(
        f"every checkpoint in {directory} failed verification: {skipped}. "
        "Run `torchkeep ls --verify` on the directory to see what is wrong.",
        path=directory,
        reason="no readable checkpoint",
    )


def _best(entries: list[CheckpointEntry], directory: str, monitor: str | None, mode: str) -> list[CheckpointEntry]:
    candidates = best_first(entries, monitor, mode)
    if not candidates:
        raise CheckpointNotFoundError(
            f"no checkpoint in {directory} records the metric {monitor!r}; pass it in save(metrics=...) or restore 'latest'",
            path=directory,
        )
    return candidates


def _load_entry(
    storage: Storage,
    objects: Mapping[str, Any],
    entry: CheckpointEntry,
    *,
    map_location: _format.MapLocation = None,
    strict: bool = True,
) -> CheckpointInfo:
    """Load one listed step into ``objects`` through its layout; an unreadable header raises."""
    if entry.error is not None:
        raise CorruptCheckpointError(entry.error, path=entry.path, reason="unreadable header")
    info = layout_for_kind(entry.kind).load(storage, entry.name, objects, map_location=map_location, strict=strict)
    info.path = entry.path
    return info
