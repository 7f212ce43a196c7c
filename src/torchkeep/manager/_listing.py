"""What a checkpoint directory holds, read from the files themselves (no index to disagree).

Each checkpoint is one self-describing torchkeep file named

    ckpt-<step, 9+ digits>-<UTC time, YYYYmmddTHHMMSSZ>.safetensors

so ``ls`` sorts it by step and a person can read it. Listing parses names and reads headers only
(:func:`torchkeep.read_info`); tensor data is read and verified only when a checkpoint is restored.

A :class:`CheckpointEntry` is the unit of a listing. Today every entry is one file
(``kind="file"``); a sharded step (a directory of shards with a commit marker) can become an entry
of another kind by teaching :func:`parse_name` and :func:`read_entry` about it, without changing
retention, restore or ``torchkeep ls``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from ..checkpoint._state import SECTION, CheckpointInfo, read_info
from ..errors import CheckpointNotFoundError, CheckpointWriteError, CorruptCheckpointError, FormatVersionError
from ..io import _format
from ..io._storage import LocalStorage, Storage
from ._policies import KeepBestK, Record

__all__ = [
    "best_first",
    "CheckpointEntry",
    "checkpoint_name",
    "list_checkpoints",
    "open_storage",
    "parse_name",
    "read_entry",
    "scan",
    "storage_path",
    "verify_entry",
]

logger = logging.getLogger(__name__)

PREFIX = "ckpt-"
SUFFIX = ".safetensors"
# ".sharded": a step saved by several ranks, a directory (torchkeep.distributed)
_NAME_RE = re.compile(r"^ckpt-(\d{9,})-(\d{8}T\d{6}Z)\.(?:safetensors|sharded)$")
SHARDED_SUFFIX = ".sharded"
_TS_FORMAT = "%Y%m%dT%H%M%SZ"
#: Key in the checkpoint section where the manager records its monitor/mode.
MANAGER_KEY = "manager"


def checkpoint_name(step: int, when: _dt.datetime | None = None) -> str:
    """The file name for ``step`` saved at ``when`` (default: now, UTC).

    Example:
        >>> checkpoint_name(1200, _dt.datetime(2026, 11, 23, 14, 22, 33, tzinfo=_dt.timezone.utc))
        'ckpt-000001200-20261123T142233Z.safetensors'
    """
    when = when or _dt.datetime.now(_dt.timezone.utc)
    return f"{PREFIX}{step:09d}-{when.astimezone(_dt.timezone.utc).strftime(_TS_FORMAT)}{SUFFIX}"


def parse_name(name: str) -> tuple[int, str] | None:
    """``(step, timestamp)`` for a checkpoint name, None for anything else in the directory.

    Example:
        >>> parse_name("ckpt-000001200-20261123T142233Z.safetensors")
        (1200, '20261123T142233Z')
        >>> parse_name("notes.txt") is None
        True
    """
    m = _NAME_RE.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


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
        return _dt.datetime.strptime(self.timestamp, _TS_FORMAT).replace(tzinfo=_dt.timezone.utc)

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


def storage_path(storage: Storage, name: str) -> str:
    """The path or URL a person would use for ``name`` in ``storage``."""
    path = getattr(storage, "path", None)
    return str(path(name)) if callable(path) else f"{storage.root.rstrip('/')}/{name}"


def read_entry(storage: Storage, name: str) -> CheckpointEntry | None:
    """The entry for ``name`` (reading its header only), or None if ``name`` is no checkpoint."""
    parsed = parse_name(name)
    if parsed is None:
        return None
    step, ts = parsed
    path = storage_path(storage, name)
    entry = CheckpointEntry(name=name, step=step, timestamp=ts, path=path)
    if name.endswith(SHARDED_SUFFIX):
        entry.kind = "sharded"
    try:
        entry.info, entry.manager = _read_header(storage, name)
        entry.info.path = path
    except CheckpointNotFoundError:
        return None  # deleted since it was listed
    except (CorruptCheckpointError, FormatVersionError) as exc:
        entry.info, entry.error = None, str(exc)
    return entry


def _read_header(storage: Storage, name: str) -> tuple[CheckpointInfo, dict[str, Any] | None]:
    read_head = getattr(storage, "read_head", None)
    if name.endswith(SHARDED_SUFFIX):
        from ..checkpoint.sharded import _listing as sharded

        return sharded.read_header(storage_path(storage, name))
    if isinstance(storage, LocalStorage):
        reader = _format.open_file(storage.path(name))
    elif read_head is not None:
        head, size = read_head(name)
        reader = _format.Reader(head, size, storage_path(storage, name))
    else:
        with storage.local_path(name) as p:
            reader = _format.open_file(p, mmap=False)
    try:
        info = read_info(reader, extra=False)  # the header alone: object stores fetch only it
        section = reader.section(SECTION)
    finally:
        reader.close()
    manager = section.get(MANAGER_KEY) if isinstance(section, dict) else None
    return info, manager if isinstance(manager, dict) else None


def verify_entry(storage: Storage, entry: CheckpointEntry) -> None:
    """Check every tensor checksum of ``entry``; on failure mark it corrupt (``status``, ``error``)."""
    if not entry.ok:
        return
    if entry.kind == "sharded":
        from ..checkpoint.sharded import _listing as sharded

        try:
            sharded.verify(entry.path)
        except (CorruptCheckpointError, FormatVersionError, CheckpointNotFoundError) as exc:
            entry.error = str(exc)
        return
    try:
        with storage.local_path(entry.name) as p:
            reader = _format.open_file(p)
            try:
                reader.verify()
            finally:
                reader.close()
    except (CorruptCheckpointError, FormatVersionError, CheckpointNotFoundError) as exc:
        entry.error = str(exc)


def scan(storage: Storage, cache: dict[str, CheckpointEntry] | None = None) -> list[CheckpointEntry]:
    """Every checkpoint under ``storage``, oldest first. Headers already in ``cache`` are not re-read.

    ``cache`` (name → entry) is updated in place: new names are added, vanished ones dropped.
    Committed files never change under the same name, so a cached header stays true.
    """
    cache = {} if cache is None else cache
    names = [n for n in storage.list() if parse_name(n) is not None]
    if isinstance(storage, LocalStorage):  # sharded steps are directories, which list() leaves out
        from ..checkpoint.sharded._listing import list_names

        names += list_names(storage.root)
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
