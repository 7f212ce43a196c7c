"""The FastAPI app: ``create_app(target_or_predictor, options=...)``.

Routes (SPEC §5): ``POST /predict`` (tutorial-compatible), ``POST /v1/predict`` (JSON batches or
an ``application/x-npy`` body), ``GET /healthz``, ``GET /readyz``, ``GET /v1/metadata``,
``GET /metrics``, OpenAPI at ``/docs``.

The two predict routes are the hot path. They are answered by a small pure-ASGI layer in front
of FastAPI's router (same app, same docs): it reads the body with a hard size limit, parses
it with :mod:`json` (no pydantic model per request), queues the arrays for the batcher and
writes the JSON answer itself. FastAPI's routes for them exist for the OpenAPI schema and call
the same code, so behaviour is identical either way.

No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations
at runtime, and those name classes imported inside :func:`create_app` (fastapi is optional).
"""

import asyncio
import contextlib
import functools
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .. import _version
from ..errors import missing_dependency
from ..runtime._base import Predictor
from ._batching import Batcher, ModelSlot
from ._core import ServingCore
from ._inputs import Reject, describe_inputs, dumps, outputs_to_json, parse_npy, predict_request, v1_request
from ._loading import import_modules, load_kwargs
from ._options import ServeOptions
from ._reload import Watcher
from ._v2 import HEADER_LENGTH, handle_v2

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["Server", "create_app"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = (b"content-type", b"application/json")
_ROUTES = {"/predict", "/v1/predict", "/healthz", "/readyz", "/v1/metadata", "/metrics", "/docs", "/openapi.json"}


def _error_body(type_: str, message: str, **extra: Any) -> bytes:
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
            headers = [_JSON, *((k.lower().encode(), v.encode()) for k, v in rej.headers.items())]
            return rej.status, headers, _error_body(rej.type, rej.message)
        except Exception as exc:
            request_id = uuid.uuid4().hex[:16]
            logger.error("request %s: the model failed: %s: %s", request_id, type(exc).__name__, exc, exc_info=exc)
            msg = f"the model failed on this request ({type(exc).__name__}); quote request id {request_id} to the operator"
            return (
                500,
                [_JSON, (b"x-request-id", request_id.encode())],
                _error_body("internal", msg, request_id=request_id),
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
        return 200, [_JSON], dumps(payload)

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


class _FastPath:
    """Pure-ASGI layer: answers the predict and ``/v2`` routes directly, times every request for /metrics."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], server: Server) -> None:
        self.app = app
        self.server = server
        # Body-read deadlines: one sweeper task for all requests instead of a timer per request.
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        server.on_stop.append(self.close)

    def close(self) -> None:
        """Stop the sweeper (server shutdown)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def _sweep(self) -> None:
        period = min(1.0, self.server.options.body_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for task, deadline in list(self._reading.items()):
                if deadline < now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        t0 = time.perf_counter()
        method = scope["method"]
        if method == "POST" and (path == "/predict" or path == "/v1/predict"):
            route = path
            status = await self._predict(scope, receive, send, path)
        elif path == "/v2" or path.startswith("/v2/"):
            route = _v2_route(path)
            status = await self._v2(scope, receive, send, method, path)
        else:
            route = path if path in _ROUTES else "other"
            box = [500]

            async def send_wrapper(message: Message) -> None:
                if message["type"] == "http.response.start":
                    box[0] = message["status"]
                await send(message)

            await self.app(scope, receive, send_wrapper)
            status = box[0]
        self.server.metrics.observe_request(route, status, time.perf_counter() - t0)

    async def _read(self, scope: Scope, receive: Receive) -> tuple[bytes | None, int, bytes]:
        """The whole body, or ``(None, status, error body)`` (too large, too slow, client gone)."""
        limit = self.server.options.max_body_bytes
        declared = -1
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
        if declared > limit:
            return None, 413, _too_large(declared, limit)
        chunks: list[bytes] = []
        size = 0
        more = True
        task = asyncio.current_task()
        assert task is not None  # ASGI apps run in a task
        self._reading[task] = time.monotonic() + self.server.options.body_timeout_s
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        try:
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None, 499, b""
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    # Stop reading: the rest of the body is never buffered.
                    return None, 413, _too_large(size, limit)
                chunks.append(chunk)
                more = message.get("more_body", False)
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            self._expired.discard(task)
            task.uncancel()
            timeout = self.server.options.body_timeout_s
            return None, 408, _error_body("timeout", f"the request body did not arrive within {timeout:g} s")
        finally:
            self._reading.pop(task, None)
        return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), 200, b""

    async def _predict(self, scope: Scope, receive: Receive, send: Send, path: str) -> int:
        body, status, error = await self._read(scope, receive)
        if body is None:
            return status if status == 499 else await _respond(send, status, [_JSON, _CLOSE], error)
        content_type = accept = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value.decode("latin-1")
            elif key == b"accept":
                accept = value.decode("latin-1")
        status, headers, payload = await self.server.predict(path, body, content_type, accept)
        return await _respond(send, status, headers, payload)

    async def _v2(self, scope: Scope, receive: Receive, send: Send, method: str, path: str) -> int:
        body = b""
        if method == "POST":
            read, status, error = await self._read(scope, receive)
            if read is None:
                if status == 499:
                    return status
                message = json.loads(error)["error"]["message"]
                return await _respond(send, status, [_JSON, _CLOSE], json.dumps({"error": message}).encode())
            body = read
        header_length = None
        for key, value in scope["headers"]:
            if key == _HEADER_LENGTH:
                header_length = value.decode("latin-1")
        status, headers, payload = await handle_v2(self.server.core, method, path, header_length, body)
        return await _respond(send, status, headers, payload)


_HEADER_LENGTH = HEADER_LENGTH.encode()
_CLOSE = (b"connection", b"close")


def _v2_route(path: str) -> str:
    # Bounded metric labels: the model name is not part of the route label.
    if path.endswith("/infer"):
        return "/v2/infer"
    if path.startswith("/v2/repository"):
        return "/v2/repository"
    if path.startswith("/v2/health"):
        return "/v2/health"
    return "/v2/metadata"


def _too_large(size: int, limit: int) -> bytes:
    return _error_body(
        "payload_too_large",
        f"the body has at least {size} bytes; the limit is {limit} (--max-body-bytes); send smaller batches",
    )


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
    return status


_PREDICT_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"values": {"type": "array", "items": {}}},
                    "required": ["values"],
                },
                "example": {"values": [0.1, 0.2, 0.3]},
            }
        },
    }
}
_V1_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"inputs": {"oneOf": [{"type": "object"}, {"type": "array"}]}},
                    "required": ["inputs"],
                },
                "example": {"inputs": {"x": [[0.1, 0.2, 0.3]]}},
            },
            "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def create_app(target: "str | Predictor | ServingCore", *, options: ServeOptions | None = None) -> "FastAPI":
    """Build the FastAPI app serving ``target`` (a path, a Predictor, or a :class:`ServingCore` already built).

    The model is loaded here (errors surface at once); warm-up, the batcher and the watcher
    start with the app's lifespan, and /readyz answers 200 only after warm-up.

    Args:
        target: a model file, a checkpoint directory (its newest checkpoint), an export
            directory (backend: the fastest in its benchmark), a single artifact, a model
            repository (``name/version/`` folders), any object satisfying
            :class:`torchkeep.runtime.Predictor`, or a :class:`ServingCore` (another process
            host, such as a Ray Serve replica, builds the core and mounts this app on it).
        options: batching, limits and reload settings.

    Example:
        >>> import uvicorn  # doctest: +SKIP
        >>> app = create_app("export/", options=ServeOptions(max_batch_size=32))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, PlainTextResponse, Response
        from starlette.exceptions import HTTPException as StarletteHTTPException
    except ImportError:
        raise missing_dependency("fastapi", "serve", "torchkeep serve") from None

    opts = options if options is not None else ServeOptions()
    if isinstance(target, ServingCore):
        core = target
    else:
        import_modules(opts.imports)
        core = ServingCore.from_target(target, opts)
    server = Server(core, opts)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app: FastAPI = _fast_class(FastAPI)(
        title="torchkeep serve",
        version=_version.__version__,
        description="Dynamic-batching inference server. Input specs: GET /v1/metadata.",
        lifespan=lifespan,
    )
    app.state.server = server

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            {"error": {"type": kind, "message": str(exc.detail)}}, status_code=exc.status_code, headers=exc.headers
        )

    async def _route(request: Request) -> Response:
        body = await request.body()
        status, headers, payload = await server.predict(
            request.url.path, body, request.headers.get("content-type"), request.headers.get("accept")
        )
        extra = {k.decode(): v.decode() for k, v in headers if k != b"content-type"}
        media = dict(headers).get(b"content-type", b"application/json").decode()
        return Response(payload, status_code=status, media_type=media, headers=extra)

    app.add_api_route(
        "/predict",
        _route,
        methods=["POST"],
        summary="Predict one example (tutorial-compatible)",
        openapi_extra=_PREDICT_DOC,
    )
    app.add_api_route(
        "/v1/predict", _route, methods=["POST"], summary="Predict a batch (JSON or .npy)", openapi_extra=_V1_DOC
    )

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: model loaded and warmed up")
    async def readyz() -> JSONResponse:
        if server.ready and server.core.models:
            try:
                return JSONResponse({"status": "ready", "version": server.slot.version})
            except Reject:  # the default model was unloaded; others may still serve
                return JSONResponse({"status": "ready", "version": None})
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})

    @app.get("/v1/metadata", summary="Input/output specs, backend and the version being served")
    async def metadata() -> JSONResponse:
        try:
            return JSONResponse(server.metadata())
        except Reject as rej:
            return JSONResponse({"error": {"type": rej.type, "message": rej.message}}, status_code=rej.status)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # In front of FastAPI's own middleware stack: the hot routes skip its per-request layers.
    app.fast = _FastPath(functools.partial(FastAPI.__call__, app), server)  # type: ignore[attr-defined]
    return app


@functools.cache
def _fast_class(base: type[_T]) -> type[_T]:
    """``base`` (FastAPI) whose ``__call__`` goes through :class:`_FastPath` first."""

    async def __call__(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
        await self.fast(scope, receive, send)

    return type("TorchkeepServeApp", (base,), {"__call__": __call__})  # type: ignore[return-value]
