"""One servable model version (:class:`LoadedModel`): its predictor slot, batcher, handler and specs.

:meth:`LoadedModel.infer` is the one entry every front end calls: handler pre-processing, the
dynamic batcher (a request larger than ``max_batch_size`` is split into chunks), the per-request
timeout, handler post-processing. :class:`torchkeep.serve.ServingCore` keeps the registry of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ServeError, TorchkeepError, UsageError
from ..runtime._base import Predictor, TensorSpec
from ._batching import Batcher, ModelSlot
from ._handlers import Handler
from ._inputs import Reject, check_array
from ._loading import time_batch, warm_up
from ._metrics import Metrics
from ._options import ServeOptions

__all__ = ["LoadedModel"]


def _expire(fut: asyncio.Future[Any], timeout_ms: float) -> None:
    if not fut.done():
        fut.set_exception(
            Reject(
                504,
                "timeout",
                f"no answer within {timeout_ms:g} ms (--timeout-ms); the server is overloaded, retry later",
            )
        )


class LoadedModel:
    """One servable model version: its slot (predictor), batcher, handler and client-facing specs.

    Example:
        >>> entry = core.get("bert", "1")  # doctest: +SKIP
        >>> outputs = await entry.infer([np.array([b"a sentence"], dtype=object)])  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        version: str,
        slot: ModelSlot,
        options: ServeOptions,
        *,
        metrics: Metrics | None,
        handler: Handler | None = None,
        directory: str | None = None,
        memory_bytes: int = 0,
    ) -> None:
        self.name = name
        self.version = version
        self.slot = slot
        self.options = options
        self.handler = handler
        self.directory = directory
        self.memory_bytes = memory_bytes
        self.ready = False
        self.refused: dict[str, str] = {}  # hot-reload candidates that failed their checks
        self.batcher = Batcher(
            lambda: self.slot,
            max_batch_size=options.max_batch_size,
            max_wait_ms=options.max_wait_ms,
            max_queue=options.max_queue,
            metrics=metrics,
        )
        self.inputs, self._outputs = self._client_specs(slot.predictor)

    def _client_specs(self, predictor: Predictor) -> tuple[list[TensorSpec], list[TensorSpec] | None]:
        if self.handler is None:
            return list(predictor.inputs), None
        try:
            inputs, outputs = self.handler.setup(predictor.inputs, predictor.outputs)
        except TorchkeepError:
            raise
        except Exception as exc:
            raise ServeError(f"model {self.name!r}: the handler's setup failed ({type(exc).__name__}: {exc})") from exc
        return list(inputs), list(outputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        """Output specs clients receive (the handler's, or the model's)."""
        return self._outputs if self._outputs is not None else self.slot.predictor.outputs

    def swap(self, slot: ModelSlot) -> None:
        """Serve ``slot`` from the next batch on (hot reload); the running batch finishes on the old one."""
        self.slot = slot

    def describe(self) -> dict[str, Any]:
        """Name, version, backend, source and memory, for metadata answers."""
        return {"name": self.name, **self.slot.describe(), "repository_version": self.version}

    def check(self, values: Sequence[Any], *, batched: bool = True) -> list[np.ndarray[Any, Any]]:
        """Validate client values (arrays or nested lists, in input-spec order) against the input specs.

        Raises:
            Reject: 422 naming the input and the expected dtype/shape.
        """
        allow = self.options.allow_non_finite
        arrays = [
            check_array(v, s, batched=batched, allow_non_finite=allow, where=s.name)
            for v, s in zip(values, self.inputs, strict=True)
        ]
        sizes = {a.shape[0] for a in arrays}
        if len(sizes) > 1:
            found = {s.name: a.shape[0] for a, s in zip(arrays, self.inputs, strict=True)}
            raise Reject(422, "invalid_input", f"inputs have different batch sizes {found}; give every input the same")
        return arrays

    async def infer(self, arrays: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        """Run checked client inputs through handler, batcher and model; outputs in :attr:`outputs` order.

        Raises:
            Reject: 400 (handler refused the input), 503 (queue full, not ready), 504 (timeout).
        """
        handler = self.handler
        if handler is not None:
            try:
                arrays = handler.preprocess(arrays)
            except UsageError as exc:
                raise Reject(400, "invalid_input", f"model {self.name!r}: {exc}") from None
        outputs = await self._batched(arrays)
        if handler is not None:
            try:
                outputs = handler.postprocess(outputs)
            except UsageError as exc:
                raise Reject(400, "invalid_input", f"model {self.name!r}: {exc}") from None
        return outputs

    async def _batched(self, arrays: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        loop = asyncio.get_running_loop()
        timeout_ms = self.options.timeout_ms
        n, limit = int(arrays[0].shape[0]), self.options.max_batch_size
        if n <= limit:
            fut = self.batcher.submit(arrays)
            timer = loop.call_later(timeout_ms / 1000.0, _expire, fut, timeout_ms)
            try:
                return await fut
            finally:
                timer.cancel()
        # A batch larger than --max-batch-size runs as several model calls, never one oversized
        # one. Chunks are queued two at a time: requests that arrive meanwhile are served between
        # them instead of waiting behind the whole request. It takes one place of the queue.
        chunks = [[a[s : s + limit] for a in arrays] for s in range(0, n, limit)]
        futs: list[asyncio.Future[list[np.ndarray[Any, Any]]]] = []
        queued_last = False
        try:
            async with asyncio.timeout(timeout_ms / 1000.0):
                for i, chunk in enumerate(chunks):
                    last = i == len(chunks) - 1
                    futs.append(self.batcher.submit(chunk, first=i == 0, last=last))
                    queued_last = last
                    if len(futs) >= 2:
                        await futs[-2]
                parts = await asyncio.gather(*futs)
        except TimeoutError:
            raise Reject(
                504, "timeout", f"no answer within {timeout_ms:g} ms (--timeout-ms); the server is overloaded"
            ) from None
        finally:
            for f in futs:
                if not f.done():
                    f.cancel()  # queued chunks of an abandoned request are skipped, not run
            if futs and not queued_last:
                self.batcher.release()
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]

    def start(self) -> None:
        """Warm the model up (blocking) and start its batcher; then it is ready."""
        if self.options.warmup:
            warm_up(self.slot.predictor, (1, self.options.max_batch_size))
        inline = False
        if self.options.inline_below_ms > 0 and self.handler is None:
            seconds = time_batch(self.slot.predictor, self.options.max_batch_size)
            inline = seconds * 1000 < self.options.inline_below_ms
        self.batcher.start(inline=inline)
        self.ready = True

    def stop(self, drain_s: float = 10.0) -> None:
        """Stop taking requests; finish the queued ones (up to ``drain_s``), then stop the batcher."""
        self.ready = False
        deadline = time.monotonic() + drain_s
        while (self.batcher.depth or self.batcher.busy) and time.monotonic() < deadline:
            time.sleep(0.005)
        self.batcher.stop()
