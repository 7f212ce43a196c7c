"""``torchkeep serve TARGET``: the inference server (see ``torchkeep.serve``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from ..errors import missing_dependency
from ._common import ImportModules
from ._output import esc, make_console

__all__ = ["register"]


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise typer.BadParameter(f"--input-shape {text!r}: expected sizes separated by commas, e.g. 1,10") from None


def serve(
    target: Annotated[
        Path, typer.Argument(help="Model file, checkpoint directory (newest), export directory, or artifact.")
    ],
    host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 inside a container.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes (each loads the model and batches on its own).")] = 1,
    max_batch_size: Annotated[int, typer.Option(help="Most examples per model call.")] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="How long a request waits for others to batch with.")] = 2.0,
    max_queue: Annotated[int, typer.Option(help="Most waiting requests; beyond it: 503 + Retry-After.")] = 1024,
    timeout_ms: Annotated[float, typer.Option(help="Answer 504 after this long.")] = 30000.0,
    max_body_bytes: Annotated[int, typer.Option(help="Refuse larger bodies with 413.")] = 8 * 1024 * 1024,
    watch: Annotated[Path | None, typer.Option(help="Directory to watch for new versions (hot reload).")] = None,
    poll_s: Annotated[float, typer.Option(help="How often --watch scans, in seconds.")] = 1.0,
    backend: Annotated[str | None, typer.Option(help="Runtime backend (default: fastest in export.json).")] = None,
    device: Annotated[str, typer.Option(help="Inference device, e.g. cpu or cuda:0.")] = "cpu",
    threads: Annotated[int, typer.Option(help="torch threads for inference.")] = 1,
    imports: ImportModules = None,
    input_shape: Annotated[
        list[str] | None,
        typer.Option("--input-shape", help="Eager model files: example input shape, e.g. 1,10; repeat per input."),
    ] = None,
    dtype: Annotated[
        list[str] | None, typer.Option("--dtype", help="Input dtype (one for all inputs, or one per --input-shape).")
    ] = None,
    allow_non_finite: Annotated[bool, typer.Option(help="Accept NaN/Infinity in float inputs.")] = False,
    log_level: Annotated[str, typer.Option(help="Server log level.")] = "warning",
    access_log: Annotated[bool, typer.Option(help="Log one line per request.")] = False,
) -> None:
    """Serve a model over HTTP with dynamic batching, /healthz, /readyz, /metrics and hot reload."""
    from ..serve import ServeOptions, create_app
    from ..serve import serve as run

    logging.getLogger("torchkeep").setLevel(getattr(logging, log_level.upper(), logging.WARNING))
    options = ServeOptions(
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        timeout_ms=timeout_ms,
        max_body_bytes=max_body_bytes,
        allow_non_finite=allow_non_finite,
        threads=threads,
        backend=backend,
        device=device,
        watch=str(watch) if watch is not None else None,
        poll_s=poll_s,
        imports=tuple(imports or ()),
        input_shapes=tuple(_shape(s) for s in input_shape or ()),
        input_dtypes=tuple(dtype or ()),
    )
    console = make_console(stderr=True)
    url = f"http://{host}:{port}"
    if workers != 1:
        # Each worker process loads the model itself; their errors appear in the log below.
        console.print(f"[bold]torchkeep serve[/bold] {esc(target)}: starting {workers} workers on {url}")
        run(str(target), host=host, port=port, workers=workers, options=options, log_level=log_level)
        return
    try:
        import uvicorn
    except ImportError:
        raise missing_dependency("uvicorn", "serve", "torchkeep serve") from None
    app = create_app(str(target), options=options)  # loads the model: a bad target fails before the banner
    console.print(f"[bold]torchkeep serve[/bold] {esc(target)} loaded; serving on {url} (Ctrl+C stops)")
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log, timeout_graceful_shutdown=10)


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the CLI."""
    app.command()(serve)
