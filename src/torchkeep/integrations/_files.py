"""What the framework adapters share: one framework's checkpoint tree ⇄ one torchkeep file.

A framework hands us a plain tree (Lightning's checkpoint dict, the HF Trainer's optimizer and
RNG state) and a path it picked. The tree goes into a training checkpoint's ``extra`` through the
public :func:`torchkeep.save_checkpoint`, so the file is checksummed, atomic and listed by
``torchkeep ls`` with its epoch and step. Remote paths (``s3://...``) are written locally first
and uploaded as one object: an object store never shows a half-written checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

from .. import load, load_checkpoint, read_info, save_checkpoint
from ..checkpoint.layouts import DedupLayout, SaveRequest, local_target, sweep_all
from ..errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnsupportedValueError,
    UsageError,
    missing_dependency,
)
from ..io._storage import LocalStorage

__all__ = [
    "is_remote",
    "is_torchkeep_file",
    "load_tree",
    "remove",
    "save_tree",
    "sweep_blobs",
]

EXTRA_PATH = "['__extra__']"


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an fsspec URL (``s3://``, ``gs://``, ``memory://``) rather than a local path.

    Example:
        >>> is_remote("s3://bucket/run/last.ckpt"), is_remote("/tmp/last.ckpt")
        (True, False)
    """
    text = os.fspath(path)
    return "://" in text and not text.startswith("file://")


def _local(path: str | os.PathLike[str]) -> str:
    text = os.fspath(path)
    return text[len("file://") :] if text.startswith("file://") else text


def _filesystem(path: str, storage_options: Mapping[str, Any] | None) -> Any:
    try:
        import fsspec
    except ImportError as exc:
        raise missing_dependency("fsspec", "s3", f"writing checkpoints to {path}") from exc
    fs, _ = fsspec.core.url_to_fs(path, **dict(storage_options or {}))
    return fs


def is_torchkeep_file(path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether the file starts like a safetensors/torchkeep file (a small header length, then ``{``).

    Only 9 bytes are read; a torch.save zip starts with ``PK`` and a raw pickle with ``0x80``.

    Example:
        >>> import torch, torchkeep as tk, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "w.ckpt")
        >>> tk.save({"w": torch.ones(1)}, p)
        >>> is_torchkeep_file(p)
        True
    """
    try:
        if is_remote(path):
            with _filesystem(os.fspath(path), storage_options).open(os.fspath(path), "rb") as f:
                head = f.read(9)
        else:
            with open(_local(path), "rb") as f:
                head = f.read(9)
    except (OSError, ValueError):
        return False
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return 0 < size < (1 << 32) and head[8:9] == b"{"


def _named(exc: UnsupportedValueError, what: str) -> UnsupportedValueError:
    where = exc.path.replace(EXTRA_PATH, what, 1) if exc.path.startswith(EXTRA_PATH) else f"{what}{exc.path}"
    why = str(exc).split(": ", 1)[-1]
    return UnsupportedValueError(
        f"{where}: {why}. Nothing was written; store a pickle-free form of it instead (its settings "
        "as a dict, say), or leave it out of the checkpoint",
        path=where,
        value_type=exc.value_type,
    )


def save_tree(
    path: str | os.PathLike[str],
    tree: Any,
    *,
    what: str,
    epoch: int | None = None,
    step: int | None = None,
    rng: bool = False,
    dedup: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write ``tree`` as the ``extra`` of a torchkeep training checkpoint at ``path`` (local or remote).

    ``what`` names the tree in errors (``checkpoint['hyper_parameters']['fn']: cannot store a
    function``). With ``rng=True`` the process's RNG state is stored too. With ``dedup=True``
    (local paths only) every large tensor goes to ``blobs/`` beside the file, stored once for
    all the files of that directory (the ``dedup`` layout); the caller holds the directory's
    lock and runs :func:`sweep_blobs` after deleting files.

    Raises:
        UnsupportedValueError: a value cannot be stored; the message names its key in ``what``.
        UsageError: ``dedup=True`` with a remote path.
        CheckpointWriteError: the write failed; an earlier file at ``path`` is unchanged.

    Example:
        >>> import torch, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "sub", "a.ckpt")
        >>> save_tree(p, {"w": torch.zeros(2), "epoch": 1}, what="checkpoint", epoch=1)
        >>> load_tree(p)["epoch"]
        1
    """
    if dedup and is_remote(path):
        raise UsageError(
            f"{os.fspath(path)}: deduplicated checkpoints are written to local directories only (their blobs "
            "are shared by the files beside them). Use a local dirpath, or dedup=False for object stores; "
            "tk.CheckpointManager(dedup=True) deduplicates on S3 too.",
            argument="dedup",
        )
    try:
        if not is_remote(path):
            local = os.path.abspath(_local(path))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            if dedup:
                storage, name = local_target(local)
                request = SaveRequest({}, epoch=epoch, step=step, extra=tree, rng=rng)
                DedupLayout().begin_save(storage, name, request).commit()
            else:
                save_checkpoint(local, epoch=epoch, step=step, extra=tree, rng=rng)
            return
        url = os.fspath(path)
        fs = _filesystem(url, storage_options)
        with tempfile.TemporaryDirectory(prefix="torchkeep-upload-") as tmp:
            staged = os.path.join(tmp, "checkpoint.safetensors")
            save_checkpoint(staged, epoch=epoch, step=step, extra=tree, rng=rng)
            parent = url.rsplit("/", 1)[0]
            with contextlib.suppress(OSError):  # object stores have no directories to make
                fs.makedirs(parent, exist_ok=True)
            fs.put_file(staged, url)  # one whole-object put: readers see all of it or nothing
    except UnsupportedValueError as exc:
        raise _named(exc, what) from None


@contextlib.contextmanager
def _fetched(path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None) -> Iterator[str]:
    if not is_remote(path):
        yield _local(path)
        return
    url = os.fspath(path)
    fs = _filesystem(url, storage_options)
    if not fs.exists(url):
        raise CheckpointNotFoundError(f"{url}: no such checkpoint", path=url)
    with tempfile.TemporaryDirectory(prefix="torchkeep-download-") as tmp:
        local = os.path.join(tmp, "checkpoint.safetensors")
        fs.get_file(url, local)
        yield local


def load_tree(
    path: str | os.PathLike[str],
    *,
    map_location: Any = None,
    rng: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """Read back what :func:`save_tree` wrote, or a plain torchkeep file (what ``torchkeep convert`` writes).

    Every tensor's checksum is verified; nothing is unpickled. With ``rng=True`` the RNG state
    stored with the checkpoint (if any) is restored.

    Raises:
        CheckpointNotFoundError: no file at ``path``.
        CorruptCheckpointError: the file is damaged or not a torchkeep file; names the file.

    Example:
        >>> import torch, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "a.ckpt")
        >>> save_tree(p, {"step": 3}, what="state")
        >>> load_tree(p)
        {'step': 3}
    """
    with _fetched(path, storage_options) as local:
        try:
            read_info(local)
        except CorruptCheckpointError as exc:
            if exc.reason != "not a checkpoint":
                raise _renamed(exc, path) from None
            # a converted legacy file: the tree itself, as `torchkeep convert` wrote it
            return load(local, map_location=map_location, mmap=False)
        try:
            info = load_checkpoint(local, map_location=map_location, rng=rng)
        except CorruptCheckpointError as exc:
            raise _renamed(exc, path) from None
        return info.extra


def _renamed(exc: CorruptCheckpointError, path: str | os.PathLike[str]) -> CorruptCheckpointError:
    """Name the caller's path (a remote URL, not the temporary download) in the error."""
    shown = os.fspath(path)
    message = str(exc)
    if exc.path and exc.path != shown:
        message = message.replace(exc.path, shown)
    if shown not in message:
        message = f"{shown}: {message}"
    return CorruptCheckpointError(message, path=shown, tensor=exc.tensor, reason=exc.reason)


def remove(path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> None:
    """Delete one checkpoint file (missing is not an error); directories are refused.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "a.ckpt"); save_tree(p, {}, what="state")
        >>> remove(p); os.path.exists(p)
        False
    """
    if is_remote(path):
        url = os.fspath(path)
        fs = _filesystem(url, storage_options)
        if fs.exists(url):
            fs.rm(url)
        return
    with contextlib.suppress(FileNotFoundError):
        os.remove(_local(path))


def sweep_blobs(directory: str | os.PathLike[str]) -> list[str]:
    """Remove the blobs no file in local ``directory`` refers to (and temporaries of killed writes).

    The caller holds the directory's write lock (a concurrent save's new blobs are not referred
    to yet). Returns the names removed.

    Example:
        >>> import torch, tempfile, os
        >>> d = tempfile.mkdtemp(); p = os.path.join(d, "a.ckpt")
        >>> save_tree(p, {"w": torch.zeros(256, 256)}, what="state", dedup=True)
        >>> remove(p); [n.split("/")[0] for n in sweep_blobs(d)]
        ['blobs']
    """
    return sweep_all(LocalStorage(os.fspath(directory), create=False))
