"""Dynamic batching: requests queue up and run together in one model call, off the event loop.

One worker thread owns the model. It takes the oldest request, then keeps taking requests whose
inputs have the same per-example shapes until the batch holds ``max_batch_size`` examples or
``max_wait_ms`` has passed since it started waiting; while the model runs, new requests queue,
so under load batches fill without waiting at all. The queue is bounded: a full queue is
refused at once (HTTP 503 + Retry-After) instead of letting latency grow without limit.

The model is read from a :class:`ModelSlot` at the start of each batch, so a hot reload swaps
the slot and the batch already running finishes on the old model.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import PredictorError
from ..runtime._base import Predictor, TensorSpec
from ._inputs import Reject
from ._metrics import Metrics

__all__ = ["Batcher", "ModelSlot", "normalize_outputs", "run_predictor"]

logger = logging.getLogger(__name__)


@dataclass
class ModelSlot:
    """The model being served and what /v1/metadata says about it.

    Example:
        >>> slot = ModelSlot(predictor=None, version="v1")  # doctest: +SKIP
    """

    predictor: Predictor
    version: str
    source: str = ""
    loaded_at: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The ``model`` object of /v1/predict and /v1/metadata answers."""
        return {
            "version": self.version,
            "backend": self.predictor.backend,
            "device": self.predictor.device,
            "source": self.source,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
            **self.extra,
        }


def normalize_outputs(raw: Any, specs: Sequence[TensorSpec]) -> list[np.ndarray[Any, Any]]:
    """A predictor's tensor / tuple / dict output as numpy arrays in ``specs`` order."""
    if isinstance(raw, dict):
        items = [raw[s.name] for s in specs] if all(s.name in raw for s in specs) else list(raw.values())
    elif isinstance(raw, (tuple, list)):
        items = list(raw)
    else:
        items = [raw]
    out = []
    for item in items:
        if isinstance(item, np.ndarray):
            out.append(item)
        elif hasattr(item, "detach"):
            t = item.detach().cpu()
            if str(t.dtype) == "torch.bfloat16":
                t = t.float()  # numpy has no bfloat16
            out.append(t.numpy())
        else:
            out.append(np.asarray(item))
    return out


def run_predictor(predictor: Predictor, arrays: Sequence[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
    """Call a predictor positionally on numpy batches; outputs as numpy arrays."""
    return normalize_outputs(predictor(*arrays), predictor.outputs)


class _Item:
    __slots__ = ("arrays", "future", "key", "loop", "n", "tail")

    def __init__(
        self,
        arrays: list[np.ndarray[Any, Any]],
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
        tail: bool = True,
    ) -> None:
        self.arrays = arrays
        self.tail = tail  # the last (or only) queue item of its request
        self.n = int(arrays[0].shape[0])
        self.key = tuple(a.shape[1:] for a in arrays)
        self.future = future
        self.loop = loop


def _deliver(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in results:
        if fut.done():  # timed out and abandoned by its request
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


class Batcher:
    """Queue + one inference thread. :meth:`submit` is called on the event loop.

    Example:
        >>> batcher = Batcher(slot, max_batch_size=32, max_wait_ms=2, max_queue=1024)  # doctest: +SKIP
        >>> outputs = await batcher.submit([np.ones((1, 10), np.float32)])  # doctest: +SKIP
    """

    def __init__(
        self,
        slot_getter: Callable[[], ModelSlot],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        metrics: Metrics | None = None,
    ) -> None:
        self._slot_getter = slot_getter
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._running = False
        self._busy = False
        self._waiting = False
        self._scheduled = False
        self.inline = False
        self._requests = 0
        self._thread: threading.Thread | None = None

    @property
    def depth(self) -> int:
        """Requests waiting for the model (not counting the batch that is running).

        A request larger than ``max_batch_size`` waits as several queue items but counts once:
        ``max_queue`` bounds requests, whatever their size.
        """
        return self._requests

    @property
    def busy(self) -> bool:
        """True while a batch is running."""
        return self._busy

    def _pop(self) -> _Item:
        item = self._queue.popleft()
        if item.tail:
            self._requests -= 1
        return item

    def start(self, *, inline: bool = False) -> None:
        """Start the inference thread (idempotent); ``inline``: run batches on the event loop instead.

        Inline suits models whose batch takes well under a millisecond: handing work to a
        thread and back (two GIL hand-offs, a cross-thread wake-up) then costs more than the
        model itself. Requests that arrive in the same event-loop iteration batch together.
        """
        with self._cond:
            if self._running:
                return
            self._running = True
            self.inline = inline
        if inline:
            return
        self._thread = threading.Thread(target=self._loop, name="torchkeep-serve-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the running batch; requests still queued fail with 503."""
        with self._cond:
            self._running = False
            pending = list(self._queue)
            self._queue.clear()
            self._requests = 0
            self._cond.notify_all()
        for item in pending:
            err = Reject(503, "shutting_down", "the server is shutting down; retry on another replica")
            item.loop.call_soon_threadsafe(_deliver, [(item.future, False, err)])
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(
        self, arrays: list[np.ndarray[Any, Any]], *, first: bool = True, last: bool = True
    ) -> asyncio.Future[list[np.ndarray[Any, Any]]]:
        """Queue one model call's input batches; the future resolves to its output arrays.

        A request cut into several calls passes ``first`` on its first chunk (only that one is
        checked against ``max_queue`` and counted) and ``last`` on its last one (popping it
        releases the request's place); call :meth:`release` if it gives up in between.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[np.ndarray[Any, Any]]] = loop.create_future()
        item = _Item(arrays, fut, loop, tail=last)
        with self._cond:
            if not self._running:
                raise Reject(
                    503,
                    "not_ready",
                    "the model is not loaded yet; retry after /readyz answers 200",
                    {"Retry-After": "1"},
                )
            if first:
                if self._requests >= self.max_queue:
                    raise Reject(
                        503,
                        "queue_full",
                        f"{self._requests} requests are already waiting (--max-queue {self.max_queue}); retry shortly",
                        {"Retry-After": "1"},
                    )
                self._requests += 1
            self._queue.append(item)
            if self.inline:
                if not self._scheduled:
                    self._scheduled = True
                    loop.call_soon(self._flush)
            elif self._waiting:  # a notify costs a lock round trip: only when the thread sleeps
                self._cond.notify()
        return fut

    def release(self) -> None:
        """Give back the queue place of a chunked request that stopped before queuing its last chunk."""
        with self._cond:
            self._requests = max(0, self._requests - 1)

    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while self._running:
                # A request that timed out or whose client went away is skipped, not run.
                while self._queue and self._queue[0].future.done():
                    self._pop()
                if self._queue:
                    break
                self._waiting = True
                self._cond.wait()
                self._waiting = False
            if not self._running:
                return None
            first = self._pop()
            batch, n = [first], first.n
            deadline = time.monotonic() + self.max_wait_s
            while n < self.max_batch_size:
                if self._queue:
                    head = self._queue[0]
                    if head.future.done():
                        self._pop()
                        continue
                    if head.key != first.key or n + head.n > self.max_batch_size:
                        break
                    batch.append(self._pop())
                    n += head.n
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._running:
                    break
                self._waiting = True
                self._cond.wait(remaining)
                self._waiting = False
            self._busy = True  # under the lock: a drain never sees "empty and idle" mid-handoff
            return batch

    def _flush(self) -> None:
        """Inline mode: run one batch on the event loop, then yield so new requests can join the next."""
        self._scheduled = False
        with self._cond:
            while self._queue and self._queue[0].future.done():
                self._pop()
            if not self._queue or not self._running:
                return
            first = self._pop()
            batch, n = [first], first.n
            while n < self.max_batch_size and self._queue:
                head = self._queue[0]
                if head.future.done():
                    self._pop()
                    continue
                if head.key != first.key or n + head.n > self.max_batch_size:
                    break
                batch.append(self._pop())
                n += head.n
        self._busy = True
        try:
            self._run(batch)
        except BaseException:
            logger.exception("batch of %d requests failed outside the model", len(batch))
        finally:
            self._busy = False
        if self._queue and self._running and not self._scheduled:
            self._scheduled = True
            batch[0].loop.call_soon(self._flush)

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException:  # never let the inference thread die: log, fail the batch
                logger.exception("batch of %d requests failed outside the model", len(batch))
            finally:
                self._busy = False

    def _run(self, batch: list[_Item]) -> None:
        slot = self._slot_getter()
        predictor = slot.predictor
        t0 = time.perf_counter()
        try:
            if len(batch) == 1:
                outputs = run_predictor(predictor, batch[0].arrays)
            else:
                joined = [np.concatenate([it.arrays[i] for it in batch]) for i in range(len(batch[0].arrays))]
                outputs = run_predictor(predictor, joined)
            total = sum(it.n for it in batch)
            for o in outputs:
                if o.ndim == 0 or o.shape[0] != total:
                    raise PredictorError(
                        f"the model returned an output of shape {list(o.shape)} for a batch of {total}; "
                        "outputs must keep the batch dimension first"
                    )
        except Exception as exc:
            if len(batch) > 1:
                # One bad request must not fail its neighbours: retry each alone.
                for it in batch:
                    self._run([it])
                return
            self._finish(batch, [(batch[0].future, False, exc)])
            return
        if self.metrics is not None:
            self.metrics.observe_batch(sum(it.n for it in batch), time.perf_counter() - t0)
        results: list[tuple[asyncio.Future[Any], bool, Any]] = []
        start = 0
        for it in batch:
            stop = start + it.n
            results.append((it.future, True, [o[start:stop] for o in outputs] if len(batch) > 1 else outputs))
            start = stop
        self._finish(batch, results)

    def _finish(self, batch: list[_Item], results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
        loop = batch[0].loop
        if self.inline:  # already on the event loop
            _deliver(results)
        elif all(it.loop is loop for it in batch):
            loop.call_soon_threadsafe(_deliver, results)
        else:  # pragma: no cover - one app serves from one loop
            for it, res in zip(batch, results, strict=True):
                it.loop.call_soon_threadsafe(_deliver, [res])
