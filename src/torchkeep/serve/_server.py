"""One serving process: :class:`Server` (the core plus the HTTP front ends' state) and repository polling.

:meth:`Server.predict` answers ``POST /predict`` and ``POST /v1/predict`` as ``(status,
headers, body)``; both the fast ASGI layer (:mod:`._asgi`) and FastAPI's routes call it, so the
two answer identically.
"""

import asyncio
import io
import json
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _version
from ._batching import Batcher, ModelSlot
from ._core import ServingCore
from ._inputs import Reject, describe_inputs, dumps, outputs_to_json, parse_npy, predict_request, v1_request
from ._loading import load_kwargs
from ._options import ServeOptions
from ._reload import Watcher

__all__ = ["JSON_HEADER", "Server", "error_body"]

logger = logging.getLogger(__name__)

#: The ``content-type: application/json`` response header, as ASGI bytes.
JSON_HEADER = (b"content-type", b"application/json")


def error_body(type_: str, message: str, **extra: Any) -> bytes:
    """The JSON error body every HTTP front end answers with.

    Example:
        >>> error_body("not_found", "unknown model")
        b'{"error": {"type": "not_found", "message": "unknown model"}}'
    """
    return json.dumps({"error": {"type": type_, "message": message, **extra}}).encode()


class Server:
    """One serving process: the :class:`ServingCore` (models, batchers) plus the HTTP front ends' state.

    ``slot``, ``batcher`` and ``watcher`` are the default model's, for the single-model API.

    Example:
        >>> server = Server(ServingCore.from_target("model.onnx", ServeOptions()), ServeOptions())  # doctest: +SKIP
        >>> status, headers, body = await server.predict("/predict", b'{"values": [1, 2]}', "application/json")  # doctest: +SKIP
    """

    def __init__(self, core: ServingCore, options: ServeOptions) -> None:
        self.core = core
        self.options = options
        self.metrics = core.metrics
        self.watcher: Watcher | None = None
        self.poller: _Poller | None = None
        self.grpc: Any = None
        self.on_stop: list[Callable[[], None]] = []
        if options.watch is not None and core.repository is None:
            self.watcher = Watcher(
                options.watch,
                get_slot=lambda: self.slot,
                set_slot=self._swap,
                load_kwargs=load_kwargs(options),
                poll_s=options.poll_s,
                metrics=self.metrics,
            )
        elif options.watch is not None:
            self.poller = _Poller(core, options.poll_s)

    @property
    def ready(self) -> bool:
        """True once every model is warmed up, until shutdown."""
        return self.core.ready

    @property
    def slot(self) -> ModelSlot:
        """The default model's slot (what /predict serves)."""
        return self.core.get().slot

    @property
    def batcher(self) -> Batcher:
        """The default model's batcher."""
        return self.core.get().batcher

    def _swap(self, slot: ModelSlot) -> None:
        # One attribute store: the batcher reads the slot once per batch.
        self.core.get().swap(slot)

    async def start(self) -> None:
        """Warm the models up (off the event loop), start batchers, watcher and gRPC; then ready."""
        await self.core.start()
        if self.watcher is not None:
            self.watcher.start()
        if self.poller is not None:
            self.poller.start()
        if self.options.grpc_port is not None:
            from ._grpc import start_grpc

            self.grpc = await start_grpc(self.core, self.options.grpc_port, self.options.grpc_host)
        if self.core.models:
            default = self.core.get()
            logger.info("serving %s (backend %s)", default.slot.version, default.slot.predictor.backend)

    async def stop(self) -> None:
        """Stop accepting work; the running batches finish."""
        for hook in self.on_stop:
            hook()
        if self.grpc is not None:
            await self.grpc.stop(grace=2.0)
        if self.watcher is not None:
            await asyncio.to_thread(self.watcher.stop)
        if self.poller is not None:
            await asyncio.to_thread(self.poller.stop)
        await self.core.stop()

    async def predict(
        self, route: str, body: bytes, content_type: str | None, accept: str | None = None
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Answer one predict request: ``(status, headers, body)``. Never raises."""
        try:
            return await self._predict(route, body, content_type, accept)
        except Reject as rej:
            headers = [JSON_HEADER, *((k.lower().encode(), v.encode()) for k, v in rej.headers.items())]
            return rej.status, headers, error_body(rej.type, rej.message)
        except Exception as exc:
            request_id = uuid.uuid4().hex[:16]
            logger.error("request %s: the model failed: %s: %s", request_id, type(exc).__name__, exc, exc_info=exc)
            msg = f"the model failed on this request ({type(exc).__name__}); quote request id {request_id} to the operator"
            return (
                500,
                [JSON_HEADER, (b"x-request-id", request_id.encode())],
                error_body("internal", msg, request_id=request_id),
            )

    async def _predict(
        self, route: str, body: bytes, content_type: str | None, accept: str | None
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        entry = self.core.get()
        slot = entry.slot
        specs = entry.inputs
        ctype = (content_type or "application/json").split(";", 1)[0].strip().lower()
        allow = self.options.allow_non_finite
        if ctype in ("application/json", "text/json", ""):
            arrays = (
                predict_request(body, specs, allow_non_finite=allow)
                if route == "/predict"
                else v1_request(body, specs, allow_non_finite=allow)
            )
        elif ctype == "application/x-npy" and route == "/v1/predict":
            arrays = parse_npy(body, specs, allow_non_finite=allow)
        else:
            accepted = "application/json" + (" or application/x-npy" if route == "/v1/predict" else "")
            raise Reject(415, "unsupported_media_type", f"Content-Type {ctype!r} is not accepted; send {accepted}")
        if not self.ready or not entry.ready:
            raise Reject(
                503, "not_ready", "the model is still warming up; retry after /readyz answers 200", {"Retry-After": "1"}
            )
        outputs = await entry.infer(arrays)
        served = entry.slot if entry.slot.predictor is slot.predictor else slot
        names = entry.outputs
        if accept is not None and "application/x-npy" in accept and route == "/v1/predict" and len(outputs) == 1:
            buf = io.BytesIO()
            np.save(buf, outputs[0], allow_pickle=False)
            version = served.version.encode("latin-1", "replace")
            return 200, [(b"content-type", b"application/x-npy"), (b"x-model-version", version)], buf.getvalue()
        if route == "/predict":
            named = outputs_to_json(outputs, names)
            payload: Any = {"prediction": next(iter(named.values())) if len(named) == 1 else named}
        else:
            payload = {
                "outputs": outputs_to_json(outputs, names),
                "model": {"version": served.version, "backend": served.predictor.backend},
            }
        return 200, [JSON_HEADER], dumps(payload)

    def metadata(self) -> dict[str, Any]:
        """The /v1/metadata answer (the default model)."""
        entry = self.core.get()
        slot = entry.slot
        o = self.options
        return {
            "model": slot.describe(),
            "inputs": [s.to_json() for s in entry.inputs],
            "outputs": [s.to_json() for s in entry.outputs],
            "input_help": describe_inputs(entry.inputs),
            "ready": self.ready,
            "batching": {"max_batch_size": o.max_batch_size, "max_wait_ms": o.max_wait_ms, "max_queue": o.max_queue},
            "limits": {
                "timeout_ms": o.timeout_ms,
                "max_body_bytes": o.max_body_bytes,
                "body_timeout_s": o.body_timeout_s,
                "allow_non_finite": o.allow_non_finite,
            },
            "watch": o.watch,
            "refused_versions": dict(self.watcher.refused) if self.watcher else dict(entry.refused),
            "models": [{"name": e.name, "version": e.version} for e in self.core.entries()],
            "torchkeep": _version.__version__,
        }


class _Poller:
    """Repository hot reload: every ``poll_s`` seconds, :meth:`ServingCore.poll_once` in a thread."""

    def __init__(self, core: ServingCore, poll_s: float) -> None:
        self.core = core
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="torchkeep-serve-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.core.poll_once()
            except Exception:  # a broken repository must never stop the server
                logger.exception("hot reload: scanning the repository failed; still serving")
