"""Where bytes live: the local filesystem (and, through the same Protocol, fsspec stores).

The atomic-commit protocol for a local file ``dir/name``:

1. write everything to a temporary sibling ``dir/.name.tmp-<12 hex>`` (same filesystem, so the
   rename below cannot turn into a copy);
2. ``flush`` + ``fsync`` the temporary file, so its bytes are on disk;
3. ``os.replace`` it over ``dir/name`` — atomic on POSIX: readers see the old file or the new one;
4. ``fsync`` the directory, so the rename itself survives a power cut.

If anything fails before step 3 the temporary file is removed and ``dir/name`` is untouched. A
process killed before step 3 leaves only a temporary file, which no reader ever picks (the name
starts with a dot and carries the ``.tmp-`` marker) and which :class:`LocalStorage` sweeps away.

Object stores have no rename; there the whole object is uploaded in one PUT (or one multipart
upload), which the store makes visible atomically.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

from ..errors import CheckpointWriteError, TorchkeepError

__all__ = ["LocalStorage", "Storage", "atomic_write", "fsync_dir", "is_temporary", "temporary_name"]

_TEMP_RE = re.compile(r"^\..+\.tmp-[0-9a-f]{12}$")


def temporary_name(name: str) -> str:
    """The temporary sibling name used while ``name`` is being written."""
    return f".{name}.tmp-{uuid.uuid4().hex[:12]}"


def is_temporary(name: str) -> bool:
    """True for names made by :func:`temporary_name` (left behind only by killed writers)."""
    return bool(_TEMP_RE.match(name))


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory so that renames and unlinks in it are durable."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # pragma: no cover - some filesystems refuse fsync on directories
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[IO[bytes]]:
    """Open a temporary sibling of ``path`` for writing; commit it atomically on success.

    On any exception the temporary file is removed, ``path`` is left as it was, and the exception
    propagates (an ``OSError`` becomes :class:`CheckpointWriteError`).

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> with atomic_write(os.path.join(d, "x.bin")) as f:
        ...     _ = f.write(b"hello")
        >>> Path(d, "x.bin").read_bytes()
        b'hello'
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise CheckpointWriteError(
            f"cannot write {target}: directory {directory} does not exist; create it first", path=str(target)
        )
    if not overwrite and target.exists():
        raise CheckpointWriteError(f"{target} already exists; pass overwrite=True to replace it", path=str(target))
    tmp = directory / temporary_name(target.name)
    committed = False
    try:
        with open(tmp, "xb", buffering=0) as f:
            yield f  # type: ignore[misc]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        committed = True
        fsync_dir(directory)
    except OSError as exc:
        if isinstance(exc, TorchkeepError):  # already says what went wrong (e.g. from the caller's body)
            raise
        raise CheckpointWriteError(
            f"could not write {target}: {exc.strerror or exc}. "
            + (
                "The previous file there is unchanged."
                if not committed
                else "The file was written but the directory could not be synced."
            ),
            path=str(target),
        ) from exc
    finally:
        if not committed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


@runtime_checkable
class Storage(Protocol):
    """A flat namespace of files under one root (a directory or an object-store prefix)."""

    root: str

    def atomic_write(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """Write ``name`` all or nothing."""

    def local_path(self, name: str) -> contextlib.AbstractContextManager[str]:
        """A local path holding ``name``'s bytes (downloaded first for remote stores)."""

    def list(self) -> list[str]:
        """Names of committed files (never temporaries)."""

    def delete(self, name: str) -> None:
        """Remove ``name``; missing is not an error."""

    def exists(self, name: str) -> bool:
        """Whether ``name`` is committed."""


class LocalStorage:
    """:class:`Storage` over a local directory, using the atomic-commit protocol above.

    Example:
        >>> import tempfile
        >>> s = LocalStorage(tempfile.mkdtemp())
        >>> with s.atomic_write("a.bin") as f:
        ...     _ = f.write(b"1")
        >>> s.list()
        ['a.bin']
    """

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self.root = os.fspath(root)
        if create:
            os.makedirs(self.root, exist_ok=True)

    def path(self, name: str) -> str:
        """The filesystem path of ``name``."""
        return os.path.join(self.root, name)

    def atomic_write(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        return atomic_write(self.path(name))

    @contextlib.contextmanager
    def local_path(self, name: str) -> Iterator[str]:
        yield self.path(name)

    def list(self) -> builtins.list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not is_temporary(n) and os.path.isfile(self.path(n)))

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(name))
        fsync_dir(self.root)

    def exists(self, name: str) -> bool:
        return os.path.isfile(self.path(name))

    def sweep_temporaries(self) -> builtins.list[str]:
        """Delete temporaries left by killed writers; returns their names."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        swept = [n for n in names if is_temporary(n)]
        for n in swept:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(n))
        return swept
