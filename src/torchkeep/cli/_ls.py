"""``torchkeep ls DIR``: the checkpoints of a manager directory, newest last, latest/best marked."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from ..manager._listing import CheckpointEntry, best_first, list_checkpoints
from ._output import clean, esc, make_console, print_table
from ._text import human_size

__all__ = ["ls", "register"]


def _options(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--storage-option")
        out[key] = value
    return out


def _metric(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def ls(
    directory: Annotated[
        str, typer.Argument(help="A checkpoint directory (local path or s3://bucket/prefix).", metavar="DIR")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Also check every tensor checksum (reads all data).")
    ] = False,
    monitor: Annotated[
        str | None,
        typer.Option(help="Metric that defines 'best' (default: the one the manager recorded).", metavar="METRIC"),
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="'min' or 'max' for --monitor (default: recorded, else min).", metavar="min|max")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--storage-option",
            "--option",
            metavar="KEY=VALUE",
            help="fsspec storage option, e.g. --storage-option endpoint_url=http://... (repeatable).",
        ),
    ] = None,
) -> None:
    """List the checkpoints in a CheckpointManager directory (step, epoch, time, metrics, size, status)."""
    if mode is not None and mode not in ("min", "max"):
        raise typer.BadParameter(f"expected 'min' or 'max', got {mode!r}", param_hint="--mode")
    entries = list_checkpoints(directory, storage_options=_options(option or []) or None, verify=verify)
    recorded = next((e.manager for e in reversed(entries) if e.manager), None) or {}
    monitor = monitor or recorded.get("monitor")
    mode = mode or recorded.get("mode") or "min"
    ok = [e for e in entries if e.ok]
    latest = ok[-1] if ok else None
    ranked = best_first(entries, monitor, mode)
    best = ranked[0] if ranked else None

    def marks(e: CheckpointEntry) -> list[str]:
        return [m for m, hit in (("latest", e is latest), ("best", e is best)) if hit]

    if as_json:
        rows = [{**e.to_json(), "marks": marks(e)} for e in entries]
        typer.echo(
            json.dumps({"directory": directory, "monitor": monitor, "mode": mode, "checkpoints": rows}, indent=2)
        )
        return
    console = make_console()
    if not entries:
        console.print(f"{esc(directory)}: no checkpoints")
        return
    table = Table("step", "epoch", "saved (UTC)", "metrics", "size", "status", "", header_style="bold")
    for e in entries:
        info = e.info
        metrics = ", ".join(f"{esc(k)}={esc(_metric(v))}" for k, v in (info.metrics if info else {}).items())
        status = f"[green]{'verified' if verify else 'ok'}[/green]" if e.ok else "[red]corrupt[/red]"
        table.add_row(
            esc(e.step),
            "" if info is None or info.epoch is None else esc(info.epoch),
            e.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            metrics,
            human_size(info.size_bytes if info else None),
            status,
            " ".join(f"[bold cyan]{m}[/bold cyan]" for m in marks(e)),
        )
    print_table(console, table)
    console.print(
        f"{len(entries)} checkpoint(s) in {esc(directory)}" + (f"; best by {esc(monitor)} ({mode})" if best else "")
    )
    for e in entries:
        if not e.ok:
            # The error names the path itself: print it once, in full, never as markup.
            first = (e.error or "").splitlines()[0] if e.error else "corrupt"
            console.print(f"[red]{esc(e.name)}[/red]: ", end="")
            console.print(clean(_without_prefix(first, e)), markup=False, highlight=False)


def _without_prefix(message: str, e: CheckpointEntry) -> str:
    for prefix in (f"{e.path}: ", f"{e.name}: "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def register(app: typer.Typer) -> None:
    """Add ``ls`` to the CLI."""
    app.command("ls")(ls)
