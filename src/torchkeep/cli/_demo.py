"""``torchkeep demo``: every capability end to end on a built-in model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from . import _demo_steps as _demo

__all__ = ["register"]


def demo(
    workdir: Annotated[Path | None, typer.Option(help="Where to write demo files (default: a temp dir).")] = None,
) -> None:
    """Train, checkpoint, kill and resume, verify, export, benchmark — on a small model."""
    console = Console(soft_wrap=True)
    started = time.perf_counter()
    shown = 0

    def on_step(title: str, ctx: _demo.DemoContext) -> None:
        nonlocal shown
        for line in ctx.notes[shown:]:
            console.print(f"   [green]✓[/green] {line}")
        shown = len(ctx.notes)
        console.print(f"[bold cyan]▶ {title}[/bold cyan]")

    with console.status("running the torchkeep demo..."):
        ctx = _demo.run_demo(str(workdir) if workdir else None, on_step=on_step)
    for line in ctx.notes[shown:]:
        console.print(f"   [green]✓[/green] {line}")
    console.print(
        f"[bold green]demo finished in {time.perf_counter() - started:.1f}s[/bold green]; files in {ctx.workdir}"
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command()(demo)
