"""What a checkpoint directory holds, read from the checkpoints themselves (no index to disagree).

Each step is named ``ckpt-<step, 9+ digits>-<UTC time, YYYYmmddTHHMMSSZ>.<safetensors|sharded>``
(:mod:`torchkeep.checkpoint.layouts._names`), so ``ls`` sorts it by step and a person can read it. Listing
parses names and reads headers only, through the step's layout (:mod:`torchkeep.checkpoint.layouts`); tensor
data is read and verified only when a checkpoint is restored.

A :class:`CheckpointEntry` is the unit of a listing; its ``kind`` is the layout that wrote it
(``file``, ``sharded`` or ``dedup``). Retention, restore and ``torchkeep ls`` never look further.
"""

from __future__ import annotations

import datetime as _dt
import logging
import operator
import os
from dataclasses import dataclass
from typing import Any

from ..checkpoint._state import CheckpointInfo
from ..checkpoint.layouts import (
    ALL_LAYOUTS,
    SHARDED_SUFFIX,
    TIME_FORMAT,
    checkpoint_name,
    layout_for_kind,
    layout_for_name,
    parse_name,
    storage_path,
)
from ..errors import (
    CheckpointNotFoundError,
    CheckpointWriteError,
    CorruptCheckpointError,
    FormatVersionError,
    UsageError,
)
from ..io._storage import LocalStorage, Storage
from ._policies import KeepBestK, Record

__all__ = [
    "best_first",
    "check_step",
    "CheckpointEntry",
    "checkpoint_name",
    "list_checkpoints",
    "open_storage",
    "parse_name",
    "read_entry",
    "scan",
    "storage_path",
    "FILE_KINDS",
    "MANAGER_KEY",
    "SHARDED_SUFFIX",
    "verify_entry",
]

logger = logging.getLogger(__name__)

#: Key in the checkpoint section where the manager records its monitor/mode.
MANAGER_KEY = "manager"
#: Entry kinds that are one file (``tk.load_model``, ``serve`` and ``consolidate`` read them by path).
FILE_KINDS = ("file", "dedup")


@dataclass
class CheckpointEntry:
    """One checkpoint in a directory: its name, step, and header info (None if unreadable).

    ``status`` is ``"ok"`` when the header reads (tensor checksums are checked on restore, or
    by ``torchkeep ls --verify``), ``"corrupt"`` otherwise, with ``error`` saying why.

    Example:
        >>> e = CheckpointEntry(name="ckpt-000000007-20260101T000000Z.safetensors", step=7, timestamp="20260101T000000Z")
        >>> e.status, e.record().step
        ('corrupt', 7)
    """

    name: str
    step: int
    timestamp: str
    path: str = ""
    kind: str = "file"
    info: CheckpointInfo | None = None
    error: str | None = None
    #: ``{"monitor": ..., "mode": ...}`` of the manager that saved it (so ``ls`` can mark "best").
    manager: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """Whether the header could be read."""
        return self.info is not None and self.error is None

    @property
    def status(self) -> str:
        """``"ok"`` or ``"corrupt"``."""
        return "ok" if self.ok else "corrupt"

    @property
    def created_at(self) -> _dt.datetime:
        """When the checkpoint was saved (from the header; from the name if the header is bad)."""
        if self.info is not None and self.info.created_at:
            try:
                t = _dt.datetime.fromisoformat(self.info.created_at)
                return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)
            except ValueError:
                pass
        return _dt.datetime.strptime(self.timestamp, TIME_FORMAT).replace(tzinfo=_dt.timezone.utc)

    @property
    def sort_key(self) -> tuple[int, str]:
        """Oldest first: by step, then by save time (a re-saved step sorts after the original)."""
        return (self.step, self.timestamp)

    def record(self) -> Record:
        """What retention policies see."""
        metrics = self.info.metrics if self.info is not None else {}
        return Record(step=self.step, metrics=metrics, created_at=self.created_at)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary (used by ``torchkeep ls --json``)."""
        info = self.info
        return {
            "name": self.name,
            "path": self.path,
            "kind": self.kind,
            "step": self.step,
            "epoch": info.epoch if info else None,
            "created_at": self.created_at.isoformat(),
            "metrics": dict(info.metrics) if info else {},
            "size_bytes": info.size_bytes if info else None,
            "status": self.status,
            "monitor": (self.manager or {}).get("monitor"),
            "error": self.error,
        }


def best_first(entries: list[CheckpointEntry], monitor: str | None, mode: str = "min") -> list[CheckpointEntry]:
    """Readable entries that record ``monitor``, best first (ties: newer first)."""
    if not monitor:
        return []
    ok = [e for e in entries if e.ok]
    ranking = KeepBestK(1, monitor, mode).ranking([e.record() for e in ok])
    return [ok[i] for i in ranking]


def open_storage(
    directory: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None, create: bool = True
) -> Storage:
    """A :class:`~torchkeep.io._storage.Storage` for a local directory or an fsspec URL."""
    text = os.fspath(directory)
    from ..io._fsspec import FsspecStorage, is_remote

    if is_remote(text):
        return FsspecStorage(text, storage_options=storage_options, create=create)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if os.path.exists(text) and not os.path.isdir(text):
        raise CheckpointWriteError(
            f"{text} is a file, but a checkpoint directory was expected; pass a directory path", path=text
        )
    try:
        return LocalStorage(text, create=create)
    except OSError as exc:
        raise CheckpointWriteError(
            f"cannot create the checkpoint directory {text}: {exc.strerror or exc}", path=text
        ) from exc


def read_entry(storage: Storage, name: str) -> CheckpointEntry | None:
    """The entry for ``name`` (reading its header only), or None if ``name`` is no checkpoint."""
    parsed = parse_name(name)
    if parsed is None:
        return None
    step, ts = parsed
    layout = layout_for_name(storage, name)
    entry = CheckpointEntry(name=name, step=step, timestamp=ts, path=storage_path(storage, name), kind=layout.kind)
    try:
        header = layout.read_header(storage, name)
    except CheckpointNotFoundError:
        return None  # deleted since it was listed
    except (CorruptCheckpointError, FormatVersionError) as exc:
        entry.info, entry.error = None, str(exc)
        return entry
    if header.manager is not None and not _valid_manager(header.manager):
        entry.info = None
        entry.error = (
            f"{entry.path}: the manager section {str(header.manager)[:80]!r} is malformed "
            "(expected {'monitor': a metric name or null, 'mode': 'min' or 'max'})"
        )
        return entry
    entry.info, entry.manager, entry.kind = header.info, header.manager, header.kind
    return entry


def _valid_manager(manager: Any) -> bool:
    return (
        isinstance(manager, dict)
        and (manager.get("monitor") is None or (isinstance(manager["monitor"], str) and bool(manager["monitor"])))
        and manager.get("mode") in (None, "min", "max")
    )


def verify_entry(storage: Storage, entry: CheckpointEntry) -> None:
    """Check every tensor checksum of ``entry``; on failure mark it corrupt (``status``, ``error``)."""
    if not entry.ok:
        return
    try:
        layout_for_kind(entry.kind).verify(storage, entry.name)
    except (CorruptCheckpointError, FormatVersionError, CheckpointNotFoundError) as exc:
        entry.error = str(exc)


def list_names(storage: Storage) -> list[str]:
    """Names of every step under ``storage``, whatever its layout (sorted, no duplicates)."""
    names: set[str] = set()
    for layout in ALL_LAYOUTS:
        names.update(layout.list(storage))
    return sorted(names)


def scan(storage: Storage, cache: dict[str, CheckpointEntry] | None = None) -> list[CheckpointEntry]:
    """Every checkpoint under ``storage``, oldest first. Headers already in ``cache`` are not re-read.

    ``cache`` (name → entry) is updated in place: new names are added, vanished ones dropped.
    Committed files never change under the same name, so a cached header stays true.
    """
    cache = {} if cache is None else cache
    names = list_names(storage)
    present = set(names)
    for gone in [n for n in cache if n not in present]:
        del cache[gone]
    for n in names:
        if n not in cache or not cache[n].ok:
            entry = read_entry(storage, n)
            if entry is not None:
                cache[n] = entry
    return sorted(cache.values(), key=lambda e: e.sort_key)


def list_checkpoints(
    directory: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None, verify: bool = False
) -> list[CheckpointEntry]:
    """List a checkpoint directory without opening it for writing (no lock, nothing changes).

    Headers only, unless ``verify=True``, which also checks every tensor checksum (and downloads
    remote files to do so).

    Raises:
        CheckpointNotFoundError: ``directory`` is a local path that does not exist (a typo would
            otherwise look like an empty run).

    Example:
        >>> import tempfile
        >>> list_checkpoints(tempfile.mkdtemp())
        []
    """
    storage = open_storage(directory, storage_options=storage_options, create=False)
    if isinstance(storage, LocalStorage) and not os.path.isdir(storage.root):
        raise CheckpointNotFoundError(
            f"{storage.root}: no such directory; pass the directory a CheckpointManager saves into",
            path=storage.root,
        )
    entries = scan(storage)
    if verify:
        for e in entries:
            verify_entry(storage, e)
    return entries


def check_step(step: Any) -> int:
    """``step`` as an int (numpy and 0-d integer tensors too), or :class:`UsageError`.

    Example:
        >>> check_step(12)
        12
    """
    try:
        if isinstance(step, bool):
            raise TypeError
        value = operator.index(step)
    except TypeError:
        value = -1
    if value < 0:
        raise UsageError(
            f"step must be a non-negative int (e.g. the optimizer step or batch count), got {step!r}", argument="step"
        )
    return value
