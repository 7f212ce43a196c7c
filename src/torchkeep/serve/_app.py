"""The FastAPI app: ``create_app(target_or_predictor, options=...)``.

Routes (SPEC §5): ``POST /predict`` (tutorial-compatible), ``POST /v1/predict`` (JSON batches or
an ``application/x-npy`` body), ``GET /healthz``, ``GET /readyz``, ``GET /v1/metadata``,
``GET /metrics``, OpenAPI at ``/docs``.

The two predict routes are the hot path. They are answered by a small pure-ASGI layer in front
of FastAPI's router (:mod:`._asgi`; same app, same docs): it reads the body with a hard size limit, parses
it with :mod:`json` (no pydantic model per request), queues the arrays for the batcher and
writes the JSON answer itself. FastAPI's routes for them exist for the OpenAPI schema and call
the same code, so behaviour is identical either way.

No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations
at runtime, and those name classes imported inside :func:`create_app` (fastapi is optional).
"""

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .. import _version
from ..errors import missing_dependency
from ..runtime._base import Predictor
from ._asgi import FastPath, fast_class
from ._core import ServingCore
from ._inputs import Reject
from ._loading import import_modules
from ._options import ServeOptions
from ._server import Server

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["create_app"]


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

    app: FastAPI = fast_class(FastAPI)(
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
    app.fast = FastPath(functools.partial(FastAPI.__call__, app), server)  # type: ignore[attr-defined]
    return app
