"""The deduplicated layout: each step is one small file; large tensors are shared blobs.

A step holds its tree, sections and small tensors like any torchkeep file; every tensor of at
least :data:`INLINE_BYTES` is stored once, in ``blobs/<xxh3-128 of its bytes>`` beside the step
files, and the step's header refers to it (see :mod:`torchkeep.io._external`). A save hashes every
large tensor (one pass over memory, far faster than the disk), writes only blobs that are not
already there, then writes the step file. Fine-tuning a frozen backbone, LoRA adapters or a new
head thus writes the backbone once and only the changed tensors afterwards.

Crash safety, in order:

1. new blobs are written under temporary names, fsynced, renamed to their content names and the
   blob directory is fsynced: every blob a step will refer to is durable **before** the step;
2. the step file is committed atomically (temporary sibling, fsync, rename, directory fsync);
3. retention deletes step files only; blobs are removed by :meth:`DedupLayout.sweep`, which runs
   only under the directory's write lock (the manager runs it after retention and when it opens a
   directory; ``torchkeep gc DIR`` takes the lock), and deletes exactly the blobs that no step file
   in the directory refers to. A step whose header cannot be read protects nothing (it cannot be
   loaded anyway); a step written by a newer torchkeep stops the sweep (its references are unknown).

A kill at any point leaves every committed step whole and, at worst, blobs no step refers to,
which the next sweep removes. On object stores (no lock) the sweep keeps blobs younger than
``min_age_s``, so a sweep run from another process never removes the blobs of a save in flight.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ...errors import CheckpointNotFoundError, CheckpointWriteError, CorruptCheckpointError, FormatVersionError
from ...io import _codec, _format
from ...io._external import BLOB_DIR, ExternalTensor, content_hash, is_blob_name
from ...io._storage import LocalStorage, Storage, fsync_dir, temporary_name
from .. import _checkpoint
from ._names import FILE_SUFFIX, storage_path
from .single import SingleFileLayout, verify_staged

__all__ = ["INLINE_BYTES", "DedupLayout", "consolidate"]

logger = logging.getLogger(__name__)

#: Tensors smaller than this stay inside the step file (biases, norms, counters, RNG state):
#: a blob per tiny tensor would cost more in files and requests than it saves.
INLINE_BYTES = 64 * 1024
_CHUNK = 16 * 1024 * 1024
_BATCH = 64  # blobs written before their fsyncs: bounds open descriptors, lets writeback overlap


class DedupLayout(SingleFileLayout):
    """Step files that share content-addressed tensor blobs (see the module docstring).

    ``min_age_s``: the sweep keeps blobs written less than this many seconds ago (object stores,
    where no lock keeps a concurrent save out).

    Example:
        >>> import torch, tempfile, os
        >>> from torchkeep.io._storage import LocalStorage
        >>> from torchkeep.checkpoint.layouts import SaveRequest
        >>> storage, layout = LocalStorage(tempfile.mkdtemp()), DedupLayout()
        >>> big = torch.nn.Linear(256, 256)
        >>> for step in (1, 2):
        ...     _ = layout.begin_save(storage, f"s{step}.safetensors", SaveRequest({"m": big}, step=step)).commit()
        >>> len(os.listdir(os.path.join(storage.root, "blobs")))  # the weight, stored once
        1
    """

    kind = "dedup"

    def __init__(self, *, min_age_s: float = 0.0) -> None:
        self.min_age_s = float(min_age_s)

    def write(self, storage: Storage, name: str, tree: Any, section: dict[str, Any], *, verify: bool) -> int:
        """Write new blobs (durably), then the step file. Returns the step's logical size."""
        enc = _codec.encode(dict(tree))
        blobs = storage.child(BLOB_DIR)
        present = {n for n in blobs.list() if is_blob_name(n)}
        inline: dict[str, Any] = {}
        external: dict[str, ExternalTensor] = {}
        new: dict[str, memoryview] = {}
        for tname, t in enc.tensors.items():
            nbytes = t.numel() * t.element_size()
            if nbytes < INLINE_BYTES:
                inline[tname] = t
                continue
            data = _format.tensor_bytes(t)
            blob = content_hash(data)
            external[tname] = ExternalTensor(blob, t.dtype, tuple(t.shape), str(t.device))
            if blob not in present and blob not in new:
                new[blob] = data
        _write_blobs(blobs, new, verify=verify)
        with storage.atomic_write(name) as f:
            size = _format.write(
                f, inline, tree=enc.tree, sections=_checkpoint.checkpoint_sections(section), external=external
            )
            if verify:
                verify_staged(f, storage_path(storage, name), inline_only=True)
        logger.debug(
            "%s: %d tensor(s) in %d new blob(s), %d shared", name, len(external), len(new), len(external) - len(new)
        )
        return size + sum(e.nbytes for e in external.values())

    def sweep(self, storage: Storage) -> list[str]:
        """Temporaries of killed writers, then every blob that no step file refers to."""
        removed = super().sweep(storage)
        if isinstance(storage, LocalStorage) and not os.path.isdir(storage.path(BLOB_DIR)):
            return removed
        blobs = storage.child(BLOB_DIR, create=False)
        if isinstance(blobs, LocalStorage):
            removed += [f"{BLOB_DIR}/{n}" for n in blobs.sweep_temporaries()]
        referenced = self.referenced(storage)
        if referenced is None:
            return removed
        doomed = [n for n in blobs.list() if is_blob_name(n) and n not in referenced and self._old_enough(blobs, n)]
        if isinstance(blobs, LocalStorage):
            blobs.delete_many(doomed)
        else:
            for n in doomed:
                blobs.delete(n)
        if doomed:
            logger.info("removed %d blob(s) no checkpoint in %s refers to", len(doomed), storage.root)
        return removed + [f"{BLOB_DIR}/{n}" for n in doomed]

    def referenced(self, storage: Storage) -> set[str] | None:
        """Blobs referred to by any torchkeep file in ``storage``; None when that cannot be known.

        In a local directory every file is read, not only ``.safetensors`` steps: a framework
        plugin names its files itself (Lightning's ``epoch=1-step=8.ckpt``), and a blob one of them
        needs must survive ``torchkeep gc``. Files that are not torchkeep files (logs, configs, the
        lock) refer to nothing. On an object store only steps count (plugins write deduplicated
        files to local directories only), so a sweep never downloads a stranger's large object.
        """
        referenced: set[str] = set()
        every_file = isinstance(storage, LocalStorage)
        for name in storage.list():
            if not every_file and not name.endswith(FILE_SUFFIX):
                continue
            try:
                referenced |= self.read_header_blobs(storage, name)
            except CheckpointNotFoundError:
                continue  # deleted since it was listed
            except FormatVersionError as exc:
                logger.warning("not removing any blob: %s (its references are unknown to this torchkeep)", exc)
                return None
            except CorruptCheckpointError as exc:
                if name.endswith(FILE_SUFFIX):
                    logger.warning("%s refers to no blob that can be kept for it: %s", name, exc)
        return referenced

    def read_header_blobs(self, storage: Storage, name: str) -> set[str]:
        """The blobs one file refers to (any torchkeep file, checkpoint or not)."""
        if isinstance(storage, LocalStorage):
            reader = _format.open_file(storage.path(name))
        else:
            head, size = storage.read_head(name)  # type: ignore[attr-defined]
            reader = _format.Reader(head, size, storage_path(storage, name))
        try:
            return {e.blob for e in reader.external.values()}
        finally:
            reader.close()

    def _old_enough(self, blobs: Storage, name: str) -> bool:
        if self.min_age_s <= 0:
            return True
        age = getattr(blobs, "modified_age", None)
        seconds = age(name) if callable(age) else None
        return seconds is None or seconds >= self.min_age_s


def _write_blobs(blobs: Storage, new: dict[str, memoryview], *, verify: bool) -> None:
    """Make every new blob durable under its content name (see the module docstring, step 1)."""
    if not new:
        return
    if not isinstance(blobs, LocalStorage):
        for blob, data in new.items():
            with blobs.atomic_write(blob) as f:
                _write_all(f.fileno() if hasattr(f, "fileno") else None, f, data)
        return
    items = list(new.items())
    for start in range(0, len(items), _BATCH):
        _write_local_batch(blobs, items[start : start + _BATCH], verify=verify)
    fsync_dir(blobs.root)


def _write_local_batch(blobs: LocalStorage, items: list[tuple[str, memoryview]], *, verify: bool) -> None:
    staged: list[tuple[str, str, int]] = []
    try:
        for blob, data in items:
            tmp = blobs.path(temporary_name(blob))
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            staged.append((blob, tmp, fd))
            _write_all(fd, None, data)
        # fsync the blobs concurrently: the filesystem then commits them in one journal transaction
        # instead of one per file (each fsync releases the GIL).
        with ThreadPoolExecutor(max_workers=min(8, len(staged))) as pool:
            list(pool.map(os.fsync, [fd for _blob, _tmp, fd in staged]))
        if verify:
            for blob, tmp, fd in staged:
                _check_written(fd, blob, tmp, blobs.path(blob))
        for blob, tmp, fd in staged:
            os.close(fd)
            os.replace(tmp, blobs.path(blob))
        staged = []
    except OSError as exc:
        raise CheckpointWriteError(
            f"could not write a tensor blob in {blobs.root}: {exc.strerror or exc}. Earlier checkpoints are unchanged.",
            path=blobs.root,
        ) from exc
    finally:
        for _blob, tmp, fd in staged:
            with contextlib.suppress(OSError):
                os.close(fd)
            # Never let the cleanup replace the error that brought us here.
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _write_all(fd: int | None, f: Any, data: memoryview) -> None:
    for i in range(0, data.nbytes, _CHUNK):
        chunk = data[i : i + _CHUNK]
        while chunk.nbytes:
            n = os.write(fd, chunk) if fd is not None else f.write(chunk)
            chunk = chunk[n:]


def _check_written(fd: int, blob: str, tmp: str, final: str) -> None:
    size = os.fstat(fd).st_size
    if size:
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as m:
            found = content_hash(m)
    else:
        found = content_hash(b"")
    if found != blob:
        raise CheckpointWriteError(
            f"{final}: the written bytes do not match what was saved (xxh3-128 {found}, expected {blob}); "
            "nothing was committed. Check the disk and memory of this machine.",
            path=final,
        )


def consolidate(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> _checkpoint.CheckpointInfo | None:
    """Write a file with external tensors as one standalone file (format 1: plain safetensors + torchkeep sections).

    Returns the checkpoint info when ``src`` is a training checkpoint, else None.

    Example:
        >>> import torch, tempfile, os
        >>> from torchkeep.io._storage import LocalStorage
        >>> from torchkeep.checkpoint.layouts import SaveRequest
        >>> d = tempfile.mkdtemp()
        >>> _ = DedupLayout().begin_save(LocalStorage(d), "s.safetensors", SaveRequest({"m": torch.nn.Linear(128, 128)}, step=1)).commit()
        >>> consolidate(os.path.join(d, "s.safetensors"), os.path.join(d, "full.safetensors")).step
        1
    """
    from ...io._storage import atomic_write

    reader = _format.open_file(src)
    reader.verify()
    tensors = {name: reader.tensor(name) for name in reader.names}
    sections: dict[str, Any] = {}
    for key in reader.metadata:
        if key.startswith(_format.META_PREFIX) and key not in (
            _format.META_FORMAT,
            _format.META_TENSORS,
            _format.META_TREE,
            "torchkeep.external",
        ):
            sections[key[len(_format.META_PREFIX) :]] = reader.section(key[len(_format.META_PREFIX) :])
    metadata = {k: v for k, v in reader.metadata.items() if not k.startswith(_format.META_PREFIX)}
    with atomic_write(dst) as f:
        size = _format.write(f, tensors, tree=reader.tree, sections=sections, metadata=metadata)
    section = sections.get(_checkpoint.SECTION)
    if section is None:
        return None
    return _checkpoint.info_from_section(os.fspath(dst), section, size)
