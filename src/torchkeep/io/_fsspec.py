"""The :class:`~torchkeep.io._storage.Storage` Protocol over fsspec (S3, GCS, Azure, ...).

Object stores have no rename, so the local commit protocol (temporary sibling + rename) does not
carry over. Instead a file is written completely to a local temporary file first and then
uploaded in one request (a PUT, or a multipart upload that the store completes atomically): the
object appears whole or not at all, and a listing never shows a half-written one. A writer killed
before the upload completes leaves nothing behind in the store (an unfinished multipart upload is
invisible; configure the bucket's lifecycle rule to abort those after a day).

fsspec and the backend (``s3fs`` for ``s3://``) are imported only when a remote URL is used.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import struct
import tempfile
from collections.abc import Iterator, Mapping
from typing import IO, Any

from ..errors import CheckpointNotFoundError, CheckpointWriteError, missing_dependency
from ._storage import is_temporary

__all__ = ["FsspecStorage", "is_remote", "sweep_staging_files"]

logger = logging.getLogger(__name__)

_BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
#: Bytes fetched in the first request for a header; most checkpoint headers fit.
_HEAD_GUESS = 256 * 1024
#: Local staging files are named ``.torchkeep-upload-<pid>-<random>.tmp`` in the temp directory.
_STAGING_PREFIX = ".torchkeep-upload-"


def sweep_staging_files(directory: str | None = None) -> list[str]:
    """Delete staging files left in the temp directory by killed writers (their PID is dead).

    Example:
        >>> isinstance(sweep_staging_files(), list)
        True
    """
    directory = directory or tempfile.gettempdir()
    swept = []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for name in names:
        if not (name.startswith(_STAGING_PREFIX) and name.endswith(".tmp")):
            continue
        pid_text = name[len(_STAGING_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))
            swept.append(name)
    return swept


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours, or cannot tell: keep the file
        return True
    return True


def is_remote(url: str) -> bool:
    """True for fsspec URLs (``s3://...``) other than local paths and ``file://``.

    Example:
        >>> is_remote("s3://bucket/run"), is_remote("/tmp/run"), is_remote("file:///tmp/run")
        (True, False, False)
    """
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme not in ("", "file", "local")


class FsspecStorage:
    """A flat namespace of objects under an fsspec URL, written with whole-object uploads.

    ``storage_options`` go to the fsspec filesystem (for S3: ``key``, ``secret``,
    ``endpoint_url``, ``client_kwargs``, ...).

    Example:
        >>> s = FsspecStorage("memory://torchkeep-doc")
        >>> with s.atomic_write("a.bin") as f:
        ...     _ = f.write(b"1")
        >>> s.list()
        ['a.bin']
    """

    def __init__(self, url: str, *, storage_options: Mapping[str, Any] | None = None, create: bool = True) -> None:
        scheme = url.partition("://")[0]
        try:
            import fsspec
        except ImportError:
            raise missing_dependency("fsspec", "s3", f"checkpoint directory {url}") from None
        try:
            fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        except ImportError:
            raise missing_dependency(_BACKENDS.get(scheme, scheme), "s3", f"checkpoint directory {url}") from None
        except (ValueError, TypeError) as exc:
            raise CheckpointNotFoundError(f"cannot open {url}: {exc}", path=url) from exc
        self.url = url.rstrip("/")
        self.root = self.url
        self.fs: Any = fs
        self._path = path.rstrip("/")
        if create:
            swept = sweep_staging_files()
            if swept:
                logger.info("removed %d staging file(s) of killed uploads: %s", len(swept), swept)
            try:
                self.fs.makedirs(self._path, exist_ok=True)
            except FileExistsError:
                pass
            except OSError as exc:
                raise CheckpointWriteError(f"cannot create {url}: {exc}", path=url) from exc

    def _p(self, name: str) -> str:
        return f"{self._path}/{name}"

    def path(self, name: str) -> str:
        """The URL of ``name``."""
        return f"{self.url}/{name}"

    @contextlib.contextmanager
    def atomic_write(self, name: str) -> Iterator[IO[bytes]]:
        """Write to a local temporary file; upload it whole on success, never on failure."""
        fd, tmp = tempfile.mkstemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-", suffix=".tmp")
        os.close(fd)
        try:
            # Opened by name (not fdopen) so that f.name is the path: callers may re-read it.
            with open(tmp, "w+b") as f:
                yield f
                f.flush()
            try:
                self.fs.put_file(tmp, self._p(name))
            except Exception as exc:  # backends raise their own types; all mean "not uploaded"
                raise CheckpointWriteError(
                    f"could not upload {self.path(name)}: {exc}. Objects already in the store are unchanged.",
                    path=self.path(name),
                ) from exc
        except OSError as exc:
            if isinstance(exc, CheckpointWriteError):
                raise
            raise CheckpointWriteError(
                f"could not write {self.path(name)} (local staging file {tmp}): {exc.strerror or exc}. "
                "Objects already in the store are unchanged.",
                path=self.path(name),
            ) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    @contextlib.contextmanager
    def local_path(self, name: str) -> Iterator[str]:
        """Download ``name`` to a local temporary file for the duration of the block."""
        fd, tmp = tempfile.mkstemp(prefix=".torchkeep-download-", suffix=".safetensors")
        os.close(fd)
        try:
            try:
                self.fs.get_file(self._p(name), tmp)
            except FileNotFoundError:
                raise CheckpointNotFoundError(f"{self.path(name)}: no such object", path=self.path(name)) from None
            yield tmp
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def list(self) -> builtins.list[str]:
        self.fs.invalidate_cache(self._path)  # another process may have written since
        try:
            entries = self.fs.ls(self._path, detail=True)
        except FileNotFoundError:
            return []
        names = []
        for e in entries:
            if e.get("type") != "file":
                continue
            name = str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
            if not is_temporary(name):
                names.append(name)
        return sorted(names)

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._p(name))

    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(self._p(name)))

    def read_head(self, name: str) -> tuple[bytes, int]:
        """The safetensors header bytes of ``name`` (length prefix included) and the object size.

        Reads only the header (one or two ranged GETs), so listing a directory of large
        checkpoints stays cheap.
        """
        path = self._p(name)
        try:
            size = int(self.fs.size(path))
            first = bytes(self.fs.cat_file(path, start=0, end=min(size, _HEAD_GUESS)))
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"{self.path(name)}: no such object", path=self.path(name)) from None
        if len(first) < 8:
            return first, size
        (n,) = struct.unpack("<Q", first[:8])
        want = min(8 + n, size)
        if want > len(first):
            first += bytes(self.fs.cat_file(path, start=len(first), end=want))
        return first, size
