"""``torchkeep consolidate`` and ``torchkeep gc``: maintenance of checkpoint steps and directories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._text import human_size

__all__ = ["consolidate", "gc", "register"]


def consolidate(
    step: Annotated[Path, typer.Argument(help="A deduplicated step file, or a sharded step directory.")],
    out: Annotated[Path, typer.Argument(help="The standalone .safetensors file to write.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
) -> None:
    """Write one step as a standalone plain safetensors file (any safetensors tool reads it)."""
    import torchkeep as tk

    if out.exists() and not overwrite:
        raise typer.BadParameter(f"{out} exists; pass --overwrite to replace it", param_hint="OUT")
    info = tk.consolidate(step, out)
    what = f"step {info.step}" if info is not None and info.step is not None else str(step)
    typer.echo(f"wrote {out} ({human_size(out.stat().st_size)}): {what}, standalone")


def gc(
    directory: Annotated[str, typer.Argument(help="A checkpoint directory (local path or s3://bucket/prefix).")],
    min_age: Annotated[
        float,
        typer.Option(
            help="Object stores (no lock): keep blobs younger than this many seconds, so a save in flight elsewhere keeps them."
        ),
    ] = 3600.0,
) -> None:
    """Remove leftovers of interrupted saves and tensor blobs that no step refers to (takes the write lock)."""
    from ..manager import collect_garbage

    removed = collect_garbage(directory, min_age_s=min_age)
    typer.echo(f"{directory}: removed {len(removed)} item(s)" + (": " + ", ".join(removed[:10]) if removed else ""))
    if len(removed) > 10:
        typer.echo(f"... and {len(removed) - 10} more")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command()(consolidate)
    app.command()(gc)
