"""The single-file layout: one self-contained torchkeep file per checkpoint.

Saving writes the whole file under a temporary name (or a local staging file for object stores),
optionally re-reads every checksum, and commits it atomically (see :mod:`torchkeep.io._storage`).
Loading maps the file; on an object store the file is downloaded first. Files whose large
tensors live in blobs beside them (the ``dedup`` layout) read through the same code: the format
resolves those tensors, and a download fetches the blobs too.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

from ...errors import CheckpointNotFoundError, CheckpointWriteError, CorruptCheckpointError
from ...io import _format
from ...io._external import BLOB_DIR
from ...io._format import MapLocation
from ...io._storage import LocalStorage, Storage
from .. import _checkpoint
from .._checkpoint import CheckpointInfo
from ._base import Header, PendingSave, SaveRequest, Stage
from ._names import FILE_SUFFIX, checkpoint_name, parse_name, storage_path

__all__ = ["SingleFileLayout", "local_copy", "verify_staged"]

logger = logging.getLogger(__name__)


class SingleFileLayout:
    """One torchkeep file per checkpoint.

    Example:
        >>> import torch, tempfile
        >>> from torchkeep.io._storage import LocalStorage
        >>> layout, storage = SingleFileLayout(), LocalStorage(tempfile.mkdtemp())
        >>> request = SaveRequest(objects={"model": torch.nn.Linear(2, 2)}, step=7)
        >>> layout.begin_save(storage, "c.safetensors", request).commit().step
        7
        >>> layout.read_header(storage, "c.safetensors").info.step
        7
    """

    kind = "file"

    def step_name(self, step: int) -> str:
        """``ckpt-<step>-<time>.safetensors``."""
        return checkpoint_name(step)

    # -- saving -------------------------------------------------------------------------------
    def begin_save(
        self, storage: Storage, name: str, request: SaveRequest, *, stage: Stage | None = None
    ) -> PendingSave:
        """Collect the state now (``stage``: and copy it); ``commit()`` writes and commits the file."""
        tree, section = _checkpoint.collect_state(
            request.objects,
            epoch=request.epoch,
            step=request.step,
            metrics=request.metrics,
            extra=request.extra,
            rng=request.rng,
            strict=request.strict,
        )
        section.update(request.annotations)
        ready: Callable[[], None] | None = None
        if stage is not None:
            tree, ready = stage(tree)
        path = storage_path(storage, name)
        info = _checkpoint.info_from_section(path, section, None)
        info.extra = request.extra

        def commit() -> CheckpointInfo:
            if ready is not None:
                ready()
            try:
                size = self.write(storage, name, tree, section, verify=request.verify)
            except CheckpointWriteError:
                raise
            except (OSError, CorruptCheckpointError) as exc:
                raise CheckpointWriteError(
                    f"could not write {path}: {exc}. Earlier checkpoints are unchanged.", path=path
                ) from exc
            done = _checkpoint.info_from_section(path, section, size)
            done.extra = request.extra
            return done

        return PendingSave(info, commit)

    def write(self, storage: Storage, name: str, tree: Any, section: dict[str, Any], *, verify: bool) -> int:
        """Write a collected state as ``name``, atomically. Returns its size in bytes."""
        with storage.atomic_write(name) as f:
            size = _checkpoint.write_checkpoint(f, tree, section)
            if verify:
                verify_staged(f, storage_path(storage, name))
        return size

    # -- loading ------------------------------------------------------------------------------
    def load(
        self,
        storage: Storage,
        name: str,
        objects: Mapping[str, Any],
        *,
        map_location: MapLocation = None,
        strict: bool = True,
        rng: bool = True,
        verify: bool = True,
    ) -> CheckpointInfo:
        """Restore ``objects`` from the file (checking only the tensors they need)."""
        with local_copy(storage, name) as local:
            reader = _format.open_file(local)
            info = _checkpoint.read_info(reader, extra=False)  # restore_state fills extra from the verified tree
            wanted = [*objects, _checkpoint.EXTRA_KEY] + ([_checkpoint.RNG_KEY] if rng else [])
            tree = _checkpoint.decode_subtrees(reader, wanted, map_location=map_location, verify=verify)
        _checkpoint.restore_state(tree, objects, info, strict=strict, rng=rng)
        info.path = storage_path(storage, name)
        return info

    def load_tree(
        self, storage: Storage, name: str, *, map_location: MapLocation = None, verify: bool = True, mmap: bool = True
    ) -> Any:
        """The whole tree the file holds (a flat dict of tensors for a plain safetensors file)."""
        with local_copy(storage, name) as local:
            reader = _format.open_file(local, mmap=mmap)
            if verify:
                reader.verify()
            return _format.load_tree(reader, map_location=map_location)

    # -- listing ------------------------------------------------------------------------------
    def read_header(self, storage: Storage, name: str) -> Header:
        """Checkpoint info from the file's header (one ranged read on object stores)."""
        read_head = getattr(storage, "read_head", None)
        if isinstance(storage, LocalStorage):
            reader = _format.open_file(storage.path(name))
        elif read_head is not None:
            head, size = read_head(name)
            reader = _format.Reader(head, size, storage_path(storage, name))
        else:
            with storage.local_path(name) as p:
                reader = _format.open_file(p, mmap=False)
        try:
            info = _checkpoint.read_info(reader, extra=False)  # the header alone: object stores fetch only it
            section = reader.section(_checkpoint.SECTION)
            blobs = frozenset(e.blob for e in reader.external.values())
            info.size_bytes = reader.size + reader.external_bytes
        finally:
            reader.close()
        info.path = storage_path(storage, name)
        manager = section.get("manager") if isinstance(section, dict) else None
        if manager is not None and not isinstance(manager, dict):
            raise CorruptCheckpointError(
                f"{info.path}: the manager section is a {type(manager).__name__}, not an object",
                path=info.path,
                reason="bad manager section",
            )
        return Header(info, "dedup" if blobs else "file", manager, blobs)

    def verify(self, storage: Storage, name: str) -> None:
        """Check every tensor checksum (every referenced blob too)."""
        with local_copy(storage, name) as local:
            reader = _format.open_file(local)
            try:
                reader.verify()
            finally:
                reader.close()

    def delete(self, storage: Storage, name: str) -> None:
        """Remove the file (blobs it shared are collected by the dedup layout's sweep)."""
        storage.delete(name)

    def list(self, storage: Storage) -> list[str]:
        """Manager-named ``.safetensors`` files."""
        return [n for n in storage.list() if n.endswith(FILE_SUFFIX) and parse_name(n) is not None]

    def sweep(self, storage: Storage) -> builtins.list[str]:
        """Temporary files of killed writers (local directories; object stores never show them)."""
        return storage.sweep_temporaries() if isinstance(storage, LocalStorage) else []


def verify_staged(f: IO[bytes], path: str, *, inline_only: bool = False) -> None:
    """Re-read a just-written (not yet committed) file and check its tensor checksums.

    ``inline_only`` skips tensors stored in blobs (the dedup layout checks the blobs it writes
    itself, and the ones it reuses were checked when they were written).
    """
    staged = getattr(f, "name", None)
    if not isinstance(staged, str) or not os.path.isfile(staged):
        return
    f.flush()
    reader = _format.open_file(staged)
    try:
        names = [n for n in reader.names if reader.info(n).file is None] if inline_only else None
        reader.verify(names)
    except CorruptCheckpointError as exc:
        raise CheckpointWriteError(
            f"{path}: the written bytes do not match what was saved ({exc.reason}); the file was not "
            "committed. Check the disk and memory of this machine.",
            path=path,
        ) from exc
    finally:
        reader.close()


@contextlib.contextmanager
def local_copy(storage: Storage, name: str) -> Iterator[str]:
    """A local path holding checkpoint file ``name`` and the blobs it refers to.

    Local directories are used in place. From an object store the file is downloaded into a
    temporary directory, with the blobs its header names beside it in ``blobs/``; a blob that
    is not in the store is left out, so loading it names the missing blob.
    """
    if isinstance(storage, LocalStorage):
        yield storage.path(name)
        return
    with tempfile.TemporaryDirectory(prefix=".torchkeep-download-") as tmp:
        local = os.path.join(tmp, name)
        with storage.local_path(name) as p:
            _link_or_copy(p, local)
        reader = _format.open_file(local)
        blobs = sorted({e.blob for e in reader.external.values()})
        reader.close()
        if blobs:
            os.mkdir(os.path.join(tmp, BLOB_DIR))
            child = storage.child(BLOB_DIR, create=False)
            for blob in blobs:
                try:
                    with child.local_path(blob) as p:
                        _link_or_copy(p, os.path.join(tmp, BLOB_DIR, blob))
                except CheckpointNotFoundError:
                    logger.debug("%s: blob %s is not in the store", storage_path(storage, name), blob)
        yield local


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # both in the temp directory: no second copy of the bytes
    except OSError:
        shutil.copyfile(src, dst)
