"""``torchkeep audit`` and ``torchkeep convert``: check model files, bring legacy files over."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ._common import ImportModules, import_user_modules
from ._output import esc, make_console
from ._text import human_size

__all__ = ["register"]


def audit(
    file: Annotated[
        Path, typer.Argument(help="A model file (tk.save_model) or a checkpoint holding a registered model.")
    ],
    import_module: Annotated[
        bool,
        typer.Option(
            "--import-module", help="Import the module recorded in the file (runs its code; trusted files only)."
        ),
    ] = False,
    path: Annotated[
        list[Path] | None, typer.Option("--path", help="Add a directory to sys.path first (repeatable).")
    ] = None,
    modules: ImportModules = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Rebuild the model in FILE and list the state a saved file would lose. Exit 1 on errors found.

    FILE must hold a registry entry (written by tk.save_model, or a checkpoint of a registered
    model). The class comes from the registry, so its module must be imported: pass
    --import MODULE (or --import-module to import the module recorded in the file), and
    --path DIR if it is not installed.
    """
    from ..models._audit import audit as run_audit
    from ..models._modelfile import load_model

    for p in path or []:
        sys.path.insert(0, str(p.resolve()))
    import_user_modules(modules)
    model = load_model(file, import_module=import_module)
    findings = run_audit(model)
    errors = [f for f in findings if f.severity == "error"]
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "path": str(file),
                    "model": type(model).__qualname__,
                    "findings": [dataclasses.asdict(f) for f in findings],
                },
                indent=2,
            )
        )
    else:
        console = make_console()
        if not findings:
            console.print(
                f"[green]ok[/green]  {esc(file)}: {esc(type(model).__name__)} keeps all its state in its state_dict"
            )
        for f in findings:
            color = "red" if f.severity == "error" else "yellow"
            console.print(
                f"[{color}]{f.severity}[/{color}] [bold]{esc(f.path)}[/bold] ({esc(f.kind)}): {esc(f.detail)}"
            )
            console.print(f"    fix: {esc(f.fix)}")
    if errors:
        raise typer.Exit(1)


def convert(
    src: Annotated[
        Path,
        typer.Argument(
            help="A torch.save file (.pt/.pth/.bin/.ckpt), .safetensors file, or a model directory.", metavar="SRC"
        ),
    ],
    dst: Annotated[Path, typer.Argument(help="The torchkeep file to write.", metavar="DST")],
    trust_pickle: Annotated[
        bool,
        typer.Option("--trust-pickle", help="Allow full unpickling (runs code named by SRC; trusted files only)."),
    ] = False,
    drop_unsupported: Annotated[
        bool, typer.Option("--drop-unsupported", help="Leave out values torchkeep cannot store (they are listed).")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace DST if it exists.")] = False,
    as_checkpoint: Annotated[
        bool,
        typer.Option(
            "--as-checkpoint",
            help="Write a training checkpoint (tk.load_checkpoint) from a tutorial-style dict: "
            "model_state_dict, optimizer_state_dict, scheduler_state_dict, epoch, step; the rest goes to extra.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Convert a legacy checkpoint or weights file/directory to a torchkeep file (no pickle unless asked)."""
    from ..convert import convert as run_convert

    err = make_console(stderr=True)
    with err.status(f"converting {esc(src)}…") if err.is_terminal and not as_json else contextlib.nullcontext():
        report = run_convert(
            src,
            dst,
            trust_pickle=trust_pickle,
            drop_unsupported=drop_unsupported,
            overwrite=force,
            as_checkpoint=as_checkpoint,
        )
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(report), indent=2))  # ASCII JSON: escapes are inert
        return
    console = make_console()
    console.print(
        f"[green]converted[/green] {esc(report.src)} ({esc(report.kind)}) -> {esc(report.dst)}: "
        f"{report.tensors} tensors, {human_size(report.tensor_bytes)}"
    )
    for note in report.notes:
        console.print(f"  note: {esc(note)}")
    for dropped in report.dropped:
        console.print(f"  [yellow]dropped[/yellow] {esc(dropped)}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command()(audit)
    app.command()(convert)
