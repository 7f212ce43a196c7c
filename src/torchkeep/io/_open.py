"""Reading a file's bytes safely: a regular file only (never a FIFO or device), mapped or read whole.

:func:`torchkeep.io._format.open_file` parses what this returns; nothing here looks inside the bytes.
"""

from __future__ import annotations

import mmap as _mmap
import os
import stat
from typing import Any

from ..errors import CheckpointNotFoundError, CorruptCheckpointError

__all__ = ["read_regular_file"]


def _bad(path: str, msg: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"{path}: {msg}", path=path, reason=msg)


def read_regular_file(path: str, *, mmap: bool = True) -> tuple[Any, int]:
    """The bytes of the regular file ``path`` and its size: mapped copy-on-write, or read whole.

    Raises:
        CheckpointNotFoundError: no file at ``path``, or it is a directory.
        CorruptCheckpointError: not a regular file, empty, or it shrank while being read.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile(delete=False) as f:
        ...     _ = f.write(b"abc")
        >>> bytes(read_regular_file(f.name, mmap=False)[0])
        b'abc'
    """
    try:
        # O_NONBLOCK: opening a FIFO must not hang waiting for a writer (checked below).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{path}: no such file", path=path) from None
    except IsADirectoryError:
        raise CheckpointNotFoundError(f"{path}: is a directory, expected a file", path=path) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise CheckpointNotFoundError(f"{path}: is a directory, expected a file", path=path)
        if not stat.S_ISREG(st.st_mode):
            raise _bad(path, "not a regular file (a pipe, socket or device); save or copy it to a file first")
        size = st.st_size
        if size == 0:
            raise _bad(path, "file is empty (0 bytes); it was never written completely")
        if mmap:
            buf: Any = _mmap.mmap(fd, size, access=_mmap.ACCESS_COPY)
        else:
            buf = bytearray(size)
            view, got = memoryview(buf), 0
            while got < size:
                n = os.readv(fd, [view[got:]])
                if n == 0:
                    raise _bad(path, "file shrank while it was being read")
                got += n
    finally:
        os.close(fd)
    return buf, size
