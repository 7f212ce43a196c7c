"""Saves that do not stall training: snapshot to host memory now, write in the background.

:func:`snapshot` copies every tensor of a state tree into host memory (a device→host copy into
pinned buffers on CUDA, issued on the current stream so it is ordered before any later in-place
update of the parameters; a plain copy on the CPU). Shared storage (tied weights, views) stays
shared in the copy. Buffers are reused from one save to the next when shapes match, so the steady
state allocates nothing and the host keeps one extra copy of the state alive.

:class:`BackgroundSaver` runs one save at a time on a worker thread. The next submit waits for
the previous one; an error in the worker is kept and raised by the next call (``submit`` or
``wait``). At interpreter exit every live saver is flushed.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch

from ..errors import CheckpointWriteError, TorchkeepError
from ..io import _codec

__all__ = ["BackgroundSaver", "snapshot"]

logger = logging.getLogger(__name__)


class _BufferPool:
    """Host buffers from the previous snapshot, reused when name, shape and dtype match."""

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, like: torch.Tensor, pinned: bool) -> torch.Tensor:
        buf = self._bufs.get(name)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype or buf.is_pinned() != pinned:
            buf = torch.empty(like.shape, dtype=like.dtype, pin_memory=pinned)
        return buf

    def replace(self, bufs: dict[str, torch.Tensor]) -> None:
        self._bufs = bufs


def snapshot(tree: Any, pool: _BufferPool | None = None) -> tuple[Any, Callable[[], None]]:
    """Copy a state tree's tensors to host memory; return ``(copied tree, wait_until_copied)``.

    Call ``wait_until_copied()`` before reading the copy from another thread (it waits for CUDA
    copies; on the CPU it returns at once). The copy is taken in the order of the current CUDA
    stream, so parameters may be changed in place right after this returns.

    Example:
        >>> w = torch.zeros(3)
        >>> copy, ready = snapshot({"w": w})
        >>> _ = w.add_(1); ready()
        >>> copy["w"].tolist()
        [0.0, 0.0, 0.0]
    """
    enc = _codec.encode(tree)
    pool = pool or _BufferPool()
    copies: dict[str, torch.Tensor] = {}
    cuda_devices: set[torch.device] = set()
    for name, t in enc.tensors.items():
        t = t.detach()
        if t.device.type == "cuda":
            buf = pool.get(name, t, pinned=True)
            buf.copy_(t, non_blocking=True)
            cuda_devices.add(t.device)
        else:
            buf = pool.get(name, t, pinned=False)
            buf.copy_(t)
        copies[name] = buf
    pool.replace(copies)
    events = []
    for device in cuda_devices:
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record(torch.cuda.current_stream(device))
        events.append(event)

    def ready() -> None:
        for e in events:
            e.synchronize()

    return _codec.decode(enc.tree, copies.__getitem__), ready


_live: weakref.WeakSet[BackgroundSaver] = weakref.WeakSet()
_atexit_registered = False
_registry_lock = threading.Lock()


def _flush_all() -> None:
    for saver in list(_live):
        try:
            saver.wait()
        except Exception as exc:  # at exit there is nobody left to raise to
            logger.error("a background checkpoint save failed at interpreter exit: %s", exc)


class BackgroundSaver:
    """At most one background job at a time; errors surface on the next call.

    Example:
        >>> saver = BackgroundSaver("demo")
        >>> saver.submit(lambda: None)
        >>> saver.wait()
    """

    def __init__(self, name: str) -> None:
        global _atexit_registered
        self.name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._what = ""
        with _registry_lock:
            _live.add(self)
            if not _atexit_registered:
                atexit.register(_flush_all)
                _atexit_registered = True

    @property
    def busy(self) -> bool:
        """Whether a job is running now."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, job: Callable[[], Any], what: str = "") -> None:
        """Wait for (and raise the error of) the previous job, then start ``job`` in the background."""
        self.wait()
        self._what = what

        def run() -> None:
            try:
                job()
            except BaseException as exc:
                self._error = exc

        self._thread = threading.Thread(target=run, name=f"torchkeep-save:{self.name}", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the running job (if any) is done; raise its error once."""
        thread = self._thread
        if thread is not None:
            thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is None:
            return
        if isinstance(error, TorchkeepError):
            raise error
        raise CheckpointWriteError(
            f"the background save of {self._what or self.name} failed: {type(error).__name__}: {error}. "
            "Earlier checkpoints are unchanged."
        ) from error
