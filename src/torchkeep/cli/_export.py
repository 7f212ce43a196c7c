"""``torchkeep export MODEL_FILE``: a torchkeep model file to deployment formats, verified.

The tutorials' ``export_model.py --weights model_weights.pth --torchscript --onnx``, done
safely: the model is rebuilt with :func:`torchkeep.load_model` (no pickle, no model code in the
file), every artifact is checked against eager PyTorch at several batch sizes, and a table shows
the parity numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ._common import ImportModules, example_inputs, import_user_modules
from ._output import esc, make_console, print_table

__all__ = ["parse_dynamic", "register"]


def parse_dynamic(values: list[str]) -> Any:
    """``--dynamic`` values → ``tk.export(dynamic_shapes=...)``'s simple form.

    ``batch,seq`` names the dims of every batched input; ``NAME=batch,seq`` (repeatable) names
    the dims of input NAME; ``_`` keeps a dim static.

    Example:
        >>> parse_dynamic(["batch,seq"])
        'batch,seq'
        >>> parse_dynamic(["input_ids=batch,seq", "pixels=batch,_,h,w"])
        {'input_ids': 'batch,seq', 'pixels': 'batch,_,h,w'}
    """
    per_input = [v for v in values if "=" in v]
    if per_input and len(per_input) != len(values):
        raise typer.BadParameter("--dynamic: give either one 'batch,seq' for all inputs or NAME=dims per input")
    if not per_input:
        if len(values) != 1:
            raise typer.BadParameter("--dynamic: give one 'batch,seq' list (or NAME=batch,seq per input)")
        return values[0]
    out: dict[str, str] = {}
    for v in per_input:
        name, _, dims = v.partition("=")
        if not name or not dims:
            raise typer.BadParameter(f"--dynamic {v!r}: expected NAME=batch,seq")
        out[name.strip()] = dims.strip()
    return out


def export(
    model_file: Annotated[
        Path | None,
        typer.Argument(help="A torchkeep model file (tk.save_model) or a checkpoint with a registered model."),
    ] = None,
    weights: Annotated[Path | None, typer.Option("--weights", help="Alias for FILE (the tutorials' flag).")] = None,
    pt2: Annotated[bool, typer.Option("--pt2", help="torch.export program (model.pt2).")] = False,
    onnx: Annotated[bool, typer.Option("--onnx", help="ONNX (model.onnx).")] = False,
    torchscript: Annotated[
        bool, typer.Option("--torchscript", help="TorchScript, legacy (model.torchscript.pt).")
    ] = False,
    aoti: Annotated[
        bool, typer.Option("--aoti", help="AOTInductor package (model.aoti.pt2); slow to compile.")
    ] = False,
    tensorrt: Annotated[bool, typer.Option("--tensorrt", help="TensorRT engine (model.engine); needs CUDA.")] = False,
    fmt: Annotated[
        list[str] | None,
        typer.Option("--format", "-f", help="Any export format by name (e.g. openvino, onnx-int8); repeatable."),
    ] = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where to write the artifacts.")] = Path(
        "exported"
    ),
    input_shape: Annotated[
        list[str] | None, typer.Option("--input-shape", help="Example input shape, e.g. 1,10; repeat for each input.")
    ] = None,
    dtype: Annotated[
        list[str] | None, typer.Option("--dtype", help="Input dtype (one for all inputs, or one per --input-shape).")
    ] = None,
    int_high: Annotated[int, typer.Option(help="Integer example inputs are drawn from [0, INT_HIGH).")] = 10,
    opset: Annotated[int | None, typer.Option(help="ONNX opset version.")] = None,
    dynamic_batch: Annotated[
        bool, typer.Option("--dynamic-batch/--static", help="Keep dim 0 dynamic (default) or bake the shape in.")
    ] = True,
    dynamic: Annotated[
        list[str] | None,
        typer.Option(
            "--dynamic",
            help="Dynamic dims by name: 'batch,seq' for every input, or NAME=batch,seq per input ('_' = static).",
        ),
    ] = None,
    torchscript_method: Annotated[str, typer.Option(help="trace or script.")] = "trace",
    tensorrt_precision: Annotated[str, typer.Option(help="fp32 or fp16.")] = "fp32",
    module: ImportModules = None,
    import_module: Annotated[
        bool, typer.Option(help="Import the module recorded in the file (runs its code: trusted files only).")
    ] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check every artifact against eager.")] = True,
    continue_on_error: Annotated[bool, typer.Option(help="Write the formats that work; report the others.")] = False,
    rtol: Annotated[float | None, typer.Option(help="Relative tolerance for the parity check.")] = None,
    atol: Annotated[float | None, typer.Option(help="Absolute tolerance for the parity check.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print export.json instead of a table.")] = False,
) -> None:
    """Export a torchkeep model file to pt2 / ONNX / TorchScript / AOTInductor / TensorRT, verified."""
    from .. import export as tk_export
    from .. import load_model

    if model_file is not None and weights is not None and model_file != weights:
        raise typer.BadParameter("give the model file once: as MODEL_FILE or as --weights")
    source = model_file or weights
    if source is None:
        raise typer.BadParameter("missing MODEL_FILE (or --weights FILE)")
    chosen = [
        name
        for name, on in (
            ("pt2", pt2),
            ("onnx", onnx),
            ("torchscript", torchscript),
            ("aoti", aoti),
            ("tensorrt", tensorrt),
        )
        if on
    ]
    chosen += [f for f in fmt or [] if f not in chosen]
    chosen = chosen or ["pt2", "onnx"]
    examples: Any
    if input_shape:
        examples = example_inputs(input_shape, dtype or [], int_high)
    else:
        from ..models._examples import example_inputs_of

        examples = example_inputs_of(source) if source.is_file() else None
        if examples is None:
            raise typer.BadParameter(
                "give the example input shape, e.g. --input-shape 1,10 (repeat for several inputs), or save the "
                "model with tk.save_model(model, path, example_inputs=...)"
            )
    import_user_modules(module)
    model = load_model(source, import_module=import_module)
    console = make_console(stderr=as_json)
    options: dict[str, Any] = {"source_file": str(source), "torchscript_method": torchscript_method}
    options["tensorrt_precision"] = tensorrt_precision
    if opset is not None:
        options["opset"] = opset
    stages = {"export": "exporting", "verify": "verifying", "ok": "done", "failed": "failed"}
    status = console.status("loading...")

    def progress(fmt: str, stage: str) -> None:
        if stage == "ok":
            console.print(f"[green]✓[/green] {esc(fmt)}")
        elif stage == "failed":
            console.print(f"[red]✗[/red] {esc(fmt)}")
        else:
            status.update(f"{esc(fmt)}: {stages[stage]}...")

    with status:
        report = tk_export(
            model,
            examples,
            output_dir,
            formats=chosen,
            dynamic_batch=dynamic_batch,
            dynamic_shapes=parse_dynamic(dynamic) if dynamic else None,
            verify=verify,
            rtol=rtol,
            atol=atol,
            continue_on_error=continue_on_error,
            progress=progress,
            **options,
        )
    if as_json:
        typer.echo(json.dumps(report.manifest, indent=2))  # ASCII JSON: escapes are inert
    else:
        for note in report.notes:
            console.print(f"[yellow]note:[/yellow] {esc(note)}")
        table = Table(
            "format", "status", "file", "verified at", "max abs err", "max rel err", "seconds", header_style="bold"
        )
        for r in report:
            table.add_row(
                esc(r.format),
                "[green]ok[/green]" if r.ok else f"[red]failed ({esc(r.step)})[/red]",
                esc(", ".join(f.name for f in r.files) or "-"),
                ", ".join(str(b) for b in r.parity) or "-",
                f"{r.max_abs_error:.2e}",
                f"{r.max_rel_error:.2e}",
                f"{r.export_seconds + r.verify_seconds:.1f}",
            )
        print_table(console, table)
        for r in report.failed.values():
            console.print(f"[red]{esc(r.format)}:[/red] {esc(r.error)}")
        console.print(f"wrote {esc(report.manifest_path)}")
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command()(export)
