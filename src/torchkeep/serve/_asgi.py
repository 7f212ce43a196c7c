"""The pure-ASGI layer in front of FastAPI's router: the predict and ``/v2`` routes, and request metrics.

It reads the body with a hard size limit and a deadline, hands it to :meth:`Server.predict` or
the Open Inference Protocol handler, and writes the answer itself (no per-request pydantic or
middleware layers). Every other route goes on to FastAPI; all of them are timed for /metrics.
"""

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

from ._server import JSON_HEADER, Server, error_body
from ._v2 import HEADER_LENGTH, handle_v2

__all__ = ["FastPath", "fast_class"]

_T = TypeVar("_T")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_ROUTES = {"/predict", "/v1/predict", "/healthz", "/readyz", "/v1/metadata", "/metrics", "/docs", "/openapi.json"}


class FastPath:
    """Pure-ASGI layer: answers the predict and ``/v2`` routes directly, times every request for /metrics.

    Example:
        >>> app.fast = FastPath(functools.partial(FastAPI.__call__, app), server)  # doctest: +SKIP
    """

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
            return None, 408, error_body("timeout", f"the request body did not arrive within {timeout:g} s")
        finally:
            self._reading.pop(task, None)
        return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), 200, b""

    async def _predict(self, scope: Scope, receive: Receive, send: Send, path: str) -> int:
        body, status, error = await self._read(scope, receive)
        if body is None:
            return status if status == 499 else await _respond(send, status, [JSON_HEADER, _CLOSE], error)
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
                return await _respond(send, status, [JSON_HEADER, _CLOSE], json.dumps({"error": message}).encode())
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
    return error_body(
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


@functools.cache
def fast_class(base: type[_T]) -> type[_T]:
    """``base`` (FastAPI) whose ``__call__`` goes through :class:`FastPath` (``self.fast``) first.

    Example:
        >>> app = fast_class(FastAPI)(title="torchkeep serve")  # doctest: +SKIP
    """

    async def __call__(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
        await self.fast(scope, receive, send)

    return type("TorchkeepServeApp", (base,), {"__call__": __call__})  # type: ignore[return-value]
