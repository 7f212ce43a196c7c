"""Checkpoint directories: numbered saves, retention policies, restore, async saves, remote storage.

Example:
    >>> import torch, torchkeep as tk, tempfile
    >>> mgr = tk.CheckpointManager(tempfile.mkdtemp(), keep_last=3, model=torch.nn.Linear(2, 2))
    >>> _ = mgr.save(step=10)
    >>> mgr.latest.step
    10
    >>> mgr.close()
"""

from ._gc import collect_garbage
from ._listing import FILE_KINDS, CheckpointEntry, checkpoint_name, list_checkpoints, parse_name
from ._lock import DirectoryLock
from ._manager import CheckpointManager
from ._policies import KeepAny, KeepBestK, KeepEveryNSteps, KeepLastN, KeepNewerThan, Policy, Record

__all__ = [
    "FILE_KINDS",
    "CheckpointEntry",
    "CheckpointManager",
    "DirectoryLock",
    "KeepAny",
    "KeepBestK",
    "KeepEveryNSteps",
    "KeepLastN",
    "KeepNewerThan",
    "Policy",
    "Record",
    "checkpoint_name",
    "collect_garbage",
    "list_checkpoints",
    "parse_name",
]
