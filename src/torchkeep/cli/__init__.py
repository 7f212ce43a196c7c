"""The ``torchkeep`` command line. One module per command group; this file wires them up.

Errors from torchkeep print one line that says what to do and exit 1 (``--debug`` shows the
traceback); usage errors exit 2.
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from ..errors import TorchkeepError

__all__ = ["app", "main"]

app = typer.Typer(
    name="torchkeep",
    help="Save, restore, export and serve PyTorch models — safely (no pickle), exactly, fast.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

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
        first, *rest = str(exc).splitlines() or [type(exc).__name__]
        typer.secho(f"error: {first}", fg=typer.colors.RED, err=True)
        for line in rest:
            typer.echo(f"  {line.strip()}", err=True)
        raise SystemExit(1) from None
