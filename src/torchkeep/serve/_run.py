"""Run the app with uvicorn, in one process or ``workers`` processes.

uvicorn starts worker processes by importing the app, so with ``workers > 1`` the target and
options travel through two environment variables and every worker builds its own app with
:func:`app_from_env` (each loads the model and runs its own batcher; the OS spreads
connections over them).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ServeError, missing_dependency
from ._app import create_app
from ._options import ServeOptions

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["ENV_OPTIONS", "ENV_TARGET", "app_from_env", "serve"]

ENV_TARGET = "TORCHKEEP_SERVE_TARGET"
ENV_OPTIONS = "TORCHKEEP_SERVE_OPTIONS"
logger = logging.getLogger(__name__)


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: the app for ``$TORCHKEEP_SERVE_TARGET``.

    Example:
        >>> # uvicorn --factory torchkeep.serve:app_from_env  (with the two variables set)
    """
    target = os.environ.get(ENV_TARGET)
    if not target:
        raise ServeError(f"${ENV_TARGET} is not set; start workers with `torchkeep serve TARGET --workers N`")
    raw = os.environ.get(ENV_OPTIONS)
    return create_app(target, options=ServeOptions.from_json(raw) if raw else ServeOptions())


def serve(
    target: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    options: ServeOptions | None = None,
    log_level: str = "warning",
    access_log: bool = False,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve ``target`` over HTTP until interrupted (what ``torchkeep serve`` runs).

    Args:
        target: model file, checkpoint directory, export directory or artifact.
        host: interface to bind (``0.0.0.0`` inside a container).
        port: TCP port.
        workers: server processes; each loads the model and batches on its own.
        options: batching, limits and reload settings.
        log_level: uvicorn log level.
        access_log: log one line per request (costs throughput; off by default).
        on_ready: with one worker, called once the model has loaded, before the server starts
            (the CLI prints its banner there, so a target that fails to load prints none).

    Example:
        >>> serve("model.safetensors", port=8000)  # doctest: +SKIP
    """
    try:
        import uvicorn
    except ImportError:
        raise missing_dependency("uvicorn", "serve", "torchkeep serve") from None
    opts = options if options is not None else ServeOptions()
    if opts.grpc_port is not None:
        if workers > 1:
            raise ServeError("--grpc-port works with --workers 1 (one process owns the port)", option="grpc_port")
        opts = dataclasses.replace(opts, grpc_host=host)
    if workers < 1 or workers > 256:
        raise ServeError(f"--workers {workers}: expected 1 to 256 processes", option="workers")
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "access_log": access_log,
        "timeout_graceful_shutdown": 10,
    }
    if workers == 1:
        app = create_app(target, options=opts)
        if on_ready is not None:
            on_ready()
        uvicorn.run(app, **common)
        return
    os.environ[ENV_TARGET] = os.path.abspath(target)
    os.environ[ENV_OPTIONS] = opts.to_json()
    uvicorn.run("torchkeep.serve._run:app_from_env", factory=True, workers=workers, **common)
