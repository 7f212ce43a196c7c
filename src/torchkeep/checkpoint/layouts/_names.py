"""How a checkpoint manager names its steps, whatever their layout.

Each step is named ``ckpt-<step, 9+ digits>-<UTC time, YYYYmmddTHHMMSSZ><suffix>`` so ``ls``
sorts it by step and a person can read it; the suffix is ``.safetensors`` for one file (plain or
deduplicated) and ``.sharded`` for a directory of per-rank shards.
"""

from __future__ import annotations

import datetime as _dt
import re

from ...io._storage import Storage

__all__ = ["FILE_SUFFIX", "SHARDED_SUFFIX", "TIME_FORMAT", "checkpoint_name", "parse_name", "storage_path"]

FILE_SUFFIX = ".safetensors"
SHARDED_SUFFIX = ".sharded"
TIME_FORMAT = "%Y%m%dT%H%M%SZ"
_PREFIX = "ckpt-"
_NAME_RE = re.compile(r"^ckpt-(\d{9,})-(\d{8}T\d{6}Z)\.(?:safetensors|sharded)$")


def checkpoint_name(step: int, when: _dt.datetime | None = None, *, suffix: str = FILE_SUFFIX) -> str:
    """The name for ``step`` saved at ``when`` (default: now, UTC).

    Example:
        >>> checkpoint_name(1200, _dt.datetime(2026, 11, 23, 14, 22, 33, tzinfo=_dt.timezone.utc))
        'ckpt-000001200-20261123T142233Z.safetensors'
    """
    when = when or _dt.datetime.now(_dt.timezone.utc)
    return f"{_PREFIX}{step:09d}-{when.astimezone(_dt.timezone.utc).strftime(TIME_FORMAT)}{suffix}"


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


def storage_path(storage: Storage, name: str) -> str:
    """The path or URL a person would use for ``name`` in ``storage``.

    Example:
        >>> from torchkeep.io._storage import LocalStorage
        >>> storage_path(LocalStorage("runs", create=False), "a.safetensors")
        'runs/a.safetensors'
    """
    path = getattr(storage, "path", None)
    return str(path(name)) if callable(path) else f"{storage.root.rstrip('/')}/{name}"
