"""The ``torchkeep`` command line. One module per command group; this file wires them up.

Errors from torchkeep print one line that says what to do and exit 1 (``--debug`` shows the
traceback); usage errors exit 2. Conventions, as in git and docker: ``-h``/``--help`` everywhere,
``torchkeep --version``, value placeholders in capitals (``FILE``, ``DIR``, ``N``), and a short
flag means one thing in every command (``-o`` is an output directory, ``-m`` a module to import,
``-b`` a batch size).
"""

from __future__ import annotations

import importlib
import logging
import sys
import typing
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from ..errors import TorchkeepError
from ._output import clean

__all__ = ["app", "main"]


#: Placeholders by option name, where the type alone would say too little.
_METAVARS = {
    "output_dir": "DIR",
    "watch": "DIR",
    "path": "DIR",
    "plot": "FILE",
    "input_shape": "SHAPE",
    "dtype": "DTYPE",
    "device": "DEVICE",
    "backend": "BACKEND",
    "host": "HOST",
    "port": "PORT",
    "log_level": "LEVEL",
    "ray_address": "ADDRESS",
    "torchscript_method": "trace|script",
    "tensorrt_precision": "fp32|fp16",
}


def _metavar(param: Any) -> str:
    if isinstance(param, TyperOption) and param.is_flag:
        return ""  # a flag takes no value: show none
    name = param.name or ""
    if name in _METAVARS:
        return _METAVARS[name]
    annotation = param.type_descriptor.annotation
    args = typing.get_args(annotation)
    element = args[0] if typing.get_origin(annotation) is list and args else annotation
    if element is Path:
        return "DIR" if "dir" in name else "FILE"
    if element is int:
        return "N"
    if element is float:
        return "NUMBER"
    return name.upper() if isinstance(param, TyperArgument) else "TEXT"


def _no_type_column(ctx: Any) -> None:
    return None


class _ReadableCommand(TyperCommand):
    """A command whose help shows FILE / DIR / N placeholders instead of ``<list[Path]>`` tags."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.metavar is None:
                param.metavar = _metavar(param)
            if isinstance(param, TyperArgument):
                # The placeholder already says what an argument is; the type tag would repeat it.
                setattr(param, "display_type_rich", _no_type_column)  # noqa: B010

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class _ReadableGroup(TyperGroup):
    """The top-level group, with the same placeholders as its commands."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    def get_params(self, ctx: Any) -> Any:
        params = super().get_params(ctx)
        for param in params:
            if param.metavar is None:
                param.metavar = _metavar(param)
        return params


app = typer.Typer(
    name="torchkeep",
    help="Save, restore, export and serve PyTorch models — safely (no pickle), exactly, fast.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=_ReadableGroup,
)


def _version(value: bool) -> None:
    if value:
        from .._version import __version__

        typer.echo(f"torchkeep {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Save, restore, export and serve PyTorch models — safely (no pickle), exactly, fast."""


# One command module per line (keeps parallel work from colliding here); each has register(app).
_COMMAND_MODULES = (
    "_demo",
    "_files",
    "_diff",
    "_model",
    "_ls",
    "_steps",
    "_export",
    "_bench",
    "_serve",
)

for _name in _COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(app)
for _info in app.registered_commands:
    if _info.cls in (None, TyperCommand):
        _info.cls = _ReadableCommand


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; turn torchkeep errors into one readable line and exit code 1.

    Example:
        >>> main(["--help"])  # doctest: +SKIP
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(args=args, prog_name="torchkeep", standalone_mode=True)
    except TorchkeepError as exc:
        if debug:
            raise
        # Messages quote names read from files: print them with control characters escaped.
        # Library messages advise Python (import_module=True); some carry the CLI's own advice.
        message = getattr(exc, "cli_message", "") or str(exc)
        first, *rest = message.splitlines() or [type(exc).__name__]
        typer.secho(f"error: {clean(first)}", fg=typer.colors.RED, err=True)
        for line in rest:
            typer.echo(f"  {clean(line.strip())}", err=True)
        raise SystemExit(1) from None
