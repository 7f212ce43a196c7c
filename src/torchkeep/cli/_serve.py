"""``torchkeep serve TARGET``: the inference server (see ``torchkeep.serve``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ._common import ImportModules
from ._output import esc, make_console

if TYPE_CHECKING:
    from ..serve import ServeOptions

__all__ = ["register"]


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise typer.BadParameter(f"--input-shape {text!r}: expected sizes separated by commas, e.g. 1,10") from None


def serve(
    target: Annotated[
        Path,
        typer.Argument(
            help="Model file, checkpoint directory (newest), export directory, artifact, or a model repository "
            "(name/version/ folders)."
        ),
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
    grpc_port: Annotated[
        int | None, typer.Option(help="Also serve the Open Inference Protocol over gRPC on this port.")
    ] = None,
    version_policy: Annotated[
        str, typer.Option(help="Repository versions to load: latest, latest:N, all, specific:1,3.")
    ] = "latest:1",
    default_model: Annotated[
        str | None, typer.Option(help="Repository model that /predict and /v1/predict serve (default: first).")
    ] = None,
    model_name: Annotated[str, typer.Option(help="Name of a single model in /v2 URLs.")] = "model",
    handler: Annotated[
        list[str] | None,
        typer.Option(
            "--handler",
            help="Request handler class to import: module:Class (all models) or MODEL=module:Class; repeatable.",
        ),
    ] = None,
    body_timeout_s: Annotated[
        float, typer.Option(help="Answer 408 when a request body has not arrived after this many seconds.")
    ] = 30.0,
    inline_below_ms: Annotated[
        float,
        typer.Option(help="Run a model whose full batch takes less than this many ms on the event loop (0: never)."),
    ] = 0.5,
    log_level: Annotated[str, typer.Option(help="Server log level.")] = "warning",
    access_log: Annotated[bool, typer.Option(help="Log one line per request.")] = False,
    ray: Annotated[bool, typer.Option("--ray", help="Serve with Ray Serve replicas (the `ray` extra).")] = False,
    replicas: Annotated[int, typer.Option(help="With --ray: number of replicas.")] = 1,
    ray_address: Annotated[
        str | None, typer.Option(help="With --ray: join this cluster (e.g. auto, ray://head:10001); default: local.")
    ] = None,
) -> None:
    """Serve a model (or a repository of models) over HTTP and gRPC: /predict, /v1, Open Inference Protocol /v2."""
    from ..serve import ServeOptions
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
        grpc_port=grpc_port,
        version_policy=version_policy,
        default_model=default_model,
        model_name=model_name,
        handlers=tuple(handler or ()),
        body_timeout_s=body_timeout_s,
        inline_below_ms=inline_below_ms,
    )
    if ray or ray_address is not None:
        _serve_on_ray(
            str(target), options, host=host, port=port, workers=workers, replicas=replicas, address=ray_address
        )
        return
    console = make_console(stderr=True)
    url = f"http://{host}:{port}"
    if workers != 1:  # each worker process loads the model itself; their errors appear in the log
        console.print(f"[bold]torchkeep serve[/bold] {esc(target)}: starting {workers} workers on {url}")

    def ready() -> None:  # called once the model loaded: a bad target fails before any banner
        console.print(f"[bold]torchkeep serve[/bold] {esc(target)} loaded; serving on {url} (Ctrl+C stops)")

    run(
        str(target),
        host=host,
        port=port,
        workers=workers,
        options=options,
        log_level=log_level,
        access_log=access_log,
        on_ready=ready if workers == 1 else None,
    )


def _serve_on_ray(
    target: str, options: ServeOptions, *, host: str, port: int, workers: int, replicas: int, address: str | None
) -> None:
    from ..serve.ray import RayOptions, run

    if workers != 1:
        raise typer.BadParameter(f"--workers {workers} with --ray: use --replicas N (Ray runs the processes)")
    make_console(stderr=True).print(
        f"[bold]torchkeep serve[/bold] {esc(target)} on Ray Serve: http://{host}:{port} "
        f"(replicas={replicas}, cluster={address or 'local'})"
    )
    run(target, options=options, ray_options=RayOptions(num_replicas=replicas), address=address, host=host, port=port)


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the CLI."""
    app.command()(serve)
