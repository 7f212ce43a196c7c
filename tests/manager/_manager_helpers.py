"""Small shared helpers for the manager tests (not fixtures)."""

from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path
from typing import Any

import pytest

from torchkeep.io import _storage


class FailingFile:
    """A real file that raises ENOSPC (disk full) once more than ``limit`` bytes were written."""

    def __init__(self, f: Any, limit: int) -> None:
        self._f, self._limit, self._written = f, limit, 0
        self.name = f.name

    def write(self, data: Any) -> int:
        n = len(memoryview(data).cast("B"))
        if self._written + n > self._limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._written += n
        return int(self._f.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> FailingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def fill_disk_after(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    """Make every atomic_write in torchkeep.io._storage fail with ENOSPC after ``limit`` bytes."""

    def failing_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 - handed to the caller's with
        return FailingFile(f, limit) if "x" in mode or "w" in mode else f

    monkeypatch.setattr(_storage, "open", failing_open, raising=False)


def temporaries(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if _storage.is_temporary(n)]


def flip_byte(path: str | os.PathLike[str], offset_from_end: int = 1) -> None:
    """Corrupt one byte of tensor data (the end of the file is tensor bytes)."""
    with open(path, "r+b") as f:
        f.seek(-offset_from_end, os.SEEK_END)
        b = f.read(1)
        f.seek(-offset_from_end, os.SEEK_END)
        f.write(bytes([b[0] ^ 0xFF]))
