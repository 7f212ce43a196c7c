"""One writer per checkpoint directory: a lock file that names its holder.

The lock is ``DIR/.torchkeep.lock``. Its holder keeps it open with an exclusive ``flock``; the
kernel drops that lock the moment the process dies (even by SIGKILL), so a lock file left by a
dead process is stale by construction and the next writer simply takes it over. The file's
content (PID, host, start time) is for people and error messages: it says who holds the lock.

Where ``flock`` is unavailable (Windows, some network filesystems) the lock falls back to the
content: a lock whose PID is dead on this host is stale; a lock held from another host is
reported and never broken automatically (remove the file by hand if that host is gone).

Object stores get no lock (they cannot offer one cheaply and safely); see
``docs/guide/manager.md``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import socket
import stat
import weakref
from typing import Any

from ..errors import CheckpointLockedError, CheckpointWriteError

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "DirectoryLock", "pid_alive"]

LOCK_NAME = ".torchkeep.lock"
logger = logging.getLogger(__name__)
#: The holder text is a few dozen bytes of JSON; more is not a lock file this module wrote.
_MAX_LOCK_BYTES = 4096
# Never follow a link planted in a shared directory: the lock is truncated and rewritten.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host.

    Example:
        >>> pid_alive(os.getpid())
        True
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:  # pragma: no cover - platforms without signal 0
        return True
    return True


def _holder_text(info: dict[str, Any]) -> str:
    return f"PID {info.get('pid', '?')} on host {info.get('host', '?')} (since {info.get('since', '?')})"


class DirectoryLock:
    """An exclusive write lock on a local directory.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> lock = DirectoryLock(d); lock.acquire()
        >>> DirectoryLock(d).acquire()
        Traceback (most recent call last):
        ...
        torchkeep.errors.CheckpointLockedError: ...
        >>> lock.release()
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self._fd: int | None = None
        self._finalizer: weakref.finalize[Any, DirectoryLock] | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def _content(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def _read(self) -> dict[str, Any]:
        try:
            fd = os.open(self.path, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            return {}
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return {}
            raw = os.read(fd, _MAX_LOCK_BYTES + 1)
        except OSError:
            return {}
        finally:
            os.close(fd)
        if len(raw) > _MAX_LOCK_BYTES:
            return {}
        try:
            data = json.loads(raw.decode("utf-8") or "{}")
        except (ValueError, RecursionError):
            return {}
        return data if isinstance(data, dict) else {}

    def _open(self, flags: int) -> int:
        """Open the lock file without following links; refuse anything but a plain file of our own."""
        try:
            fd = os.open(self.path, flags | _NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP or os.path.islink(self.path):
                raise self._planted("is a symbolic link") from None
            if isinstance(exc, FileExistsError):
                raise
            raise CheckpointWriteError(
                f"cannot create the lock file {self.path}: {exc.strerror or exc}. To only list and restore "
                "from a directory you cannot write to, open it with read_only=True.",
                path=self.directory,
            ) from exc
        try:
            st = os.fstat(fd)
        except OSError:  # pragma: no cover - fstat on a fresh descriptor
            os.close(fd)
            raise
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise self._planted("is not a regular file")
        if st.st_nlink > 1:
            os.close(fd)
            raise self._planted(f"has {st.st_nlink} hard links (it is another file's name too)")
        return fd

    def _planted(self, what: str) -> CheckpointWriteError:
        return CheckpointWriteError(
            f"the lock file {self.path} {what}; torchkeep truncates and rewrites its lock, so it refuses to "
            "use one that could lead to another file. Someone (or something) put it there: check who can "
            f"write to {self.directory}, then remove {self.path} and try again.",
            path=self.directory,
        )

    def _write_holder(self, fd: int) -> None:
        try:
            os.ftruncate(fd, 0)
            data = json.dumps(self._content()).encode("utf-8")
            if os.pwrite(fd, data, 0) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            raise CheckpointWriteError(
                f"cannot write the lock file {self.path}: {exc.strerror or exc}. Free some space (or fix the "
                "directory's permissions) and open the manager again; no checkpoint was changed.",
                path=self.directory,
            ) from exc

    def _locked_error(self, info: dict[str, Any]) -> CheckpointLockedError:
        holder = _holder_text(info)
        if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            advice = (
                "The holder is this very process: close() the other manager first (e.g. after running a "
                "notebook cell twice), or use the manager as a context manager."
            )
        else:
            advice = (
                "Only one process may save into a checkpoint directory: stop the other run, use another "
                f"directory, or open this one with read_only=True to restore only. If that process is gone "
                f"for good (e.g. its host died), delete {self.path}."
            )
        return CheckpointLockedError(
            f"{self.directory} is being written by another CheckpointManager ({holder}). {advice}",
            path=self.directory,
            holder=holder,
        )

    def acquire(self) -> None:
        """Take the lock or raise :class:`CheckpointLockedError` naming the holder."""
        if self._fd is not None:
            return
        if fcntl is None:  # pragma: no cover - Windows
            self._acquire_by_content()
            return
        for _ in range(10):
            fd = self._open(os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise self._locked_error(self._read()) from None
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # pragma: no cover - NFS
                    self._acquire_by_content()
                    return
                raise
            # The previous holder may have unlinked the file between our open and our flock:
            # then we locked an orphan inode and must retry on the new path.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = self._read()
            if previous.get("pid") not in (None, os.getpid()):
                logger.info("taking over the stale lock of %s in %s", _holder_text(previous), self.directory)
            try:
                self._write_holder(fd)
            except CheckpointWriteError:
                os.close(fd)  # drops the flock too: nobody holds a lock we could not write
                raise
            self._hold(fd)
            return
        raise self._locked_error(self._read())  # pragma: no cover - lock file churning endlessly

    def _acquire_by_content(self) -> None:  # pragma: no cover - only without flock
        info = self._read()
        if info:
            same_host = info.get("host") == socket.gethostname()
            pid = info.get("pid")
            if not (same_host and isinstance(pid, int) and not pid_alive(pid)):
                raise self._locked_error(info)
            logger.info("removing the stale lock of %s (process is dead)", _holder_text(info))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        try:
            fd = self._open(os.O_RDWR | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            raise self._locked_error(self._read()) from None
        try:
            self._write_holder(fd)
        except CheckpointWriteError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise
        self._hold(fd)

    def _hold(self, fd: int) -> None:
        self._fd = fd
        # A manager dropped without close() must not hold the directory until the process ends.
        self._finalizer = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        """Give the lock up (removes the lock file). Safe to call twice.

        The lock is released even when its file cannot be removed (a directory that became
        read-only): the file left behind holds no ``flock``, so the next writer takes it over.
        """
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked, so nobody else's lock file is removed
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning(
                "could not remove the lock file %s (%s); it is released and the next writer takes it over",
                self.path,
                exc.strerror or exc,
            )
        finally:
            if self._finalizer is not None:
                self._finalizer()  # closes fd, once
                self._finalizer = None
