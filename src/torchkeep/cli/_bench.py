"""``torchkeep bench``: measure every backend of an export, print a table, save a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ._common import ImportModules, example_inputs, import_user_modules
from ._output import esc, make_console, print_table

__all__ = ["bench", "register"]


def bench(
    targets: Annotated[
        list[Path],
        typer.Argument(
            help="Export directories (export.json) and/or artifact files; a torchkeep model file times the "
            "eager model (pass --import MODULE for its @tk.register class).",
            metavar="TARGET",
        ),
    ],
    batch_size: Annotated[
        list[int] | None, typer.Option("--batch-size", "-b", help="Batch size to measure (repeat for several).")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads for every backend.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Save a PNG chart here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of the table.")] = False,
    min_time: Annotated[float, typer.Option(help="Seconds of timed calls per backend and batch size.")] = 1.0,
    max_iters: Annotated[int, typer.Option(help="At most this many timed calls per backend and batch size.")] = 1000,
    warmup: Annotated[int, typer.Option(help="Untimed calls before timing.")] = 10,
    device: Annotated[str, typer.Option(help="cpu or cuda[:N].")] = "cpu",
    record: Annotated[
        bool, typer.Option("--record/--no-record", help="Write results into export.json (picks the fastest backend).")
    ] = True,
    modules: ImportModules = None,
    input_shape: Annotated[
        list[str] | None,
        typer.Option("--input-shape", help="Model files: example input shape, e.g. 1,10; repeat per input."),
    ] = None,
    dtype: Annotated[
        list[str] | None, typer.Option("--dtype", help="Input dtype (one for all inputs, or one per --input-shape).")
    ] = None,
) -> None:
    """Benchmark each backend: p50/p90/p99 latency, throughput, speedup vs eager, peak memory."""
    from ..bench import benchmark

    import_user_modules(modules)
    console = make_console(stderr=as_json)
    # A live progress line on a terminal only; a log or a pipe gets just the table.
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed} measured"),
        TimeElapsedColumn(),
        console=make_console(stderr=True),
        transient=True,
        disable=not console.is_terminal,
    )
    with bar:
        task = bar.add_task("benchmarking…", total=None)

        def progress(label: str, bs: int) -> None:
            bar.update(task, description=f"benchmarking {esc(label)} at batch size {bs}…", advance=1)

        report = benchmark(
            [str(t) for t in targets],
            batch_sizes=tuple(batch_size or (1, 32)),
            threads=threads,
            min_time=min_time,
            max_iters=max_iters,
            warmup=warmup,
            device=device,
            record=record,
            example_inputs=example_inputs(input_shape, dtype or []) if input_shape else None,
            title=", ".join(t.name or str(t) for t in targets),
            progress=progress,
        )
    if plot is not None:
        report.plot(plot)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))  # ASCII JSON: escapes are inert
        return
    print_table(console, report.table())
    fastest = ", ".join(f"batch {bs}: [bold]{esc(b)}[/bold]" for bs, b in report.fastest().items())
    console.print(f"fastest — {fastest}")
    if plot is not None:
        console.print(f"plot saved to {esc(plot)}")
    if record and any(t.is_dir() for t in targets):
        console.print("recorded in export.json: tk.load_predictor(dir) and `torchkeep serve` now pick the fastest")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command()(bench)
