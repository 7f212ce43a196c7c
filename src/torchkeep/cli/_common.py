"""Options shared by several commands, so each is spelled the same everywhere."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["ImportModules", "import_user_modules"]

#: ``--import/-m MODULE`` (repeatable): the module(s) where the user's ``@tk.register`` classes
#: live. torchkeep never imports a module named by a file on its own; this is the user asking.
ImportModules = Annotated[
    list[str] | None,
    typer.Option(
        "--import",
        "-m",
        help="Import this Python module first (where your @tk.register classes live); repeatable.",
    ),
]


def import_user_modules(names: list[str] | None) -> None:
    """Import ``names`` the way ``python -m`` would find them (the current directory first).

    Raises:
        typer.BadParameter: a module cannot be imported; the message says which and why.
    """
    if not names:
        return
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise typer.BadParameter(f"--import {name}: cannot import it ({exc})") from exc
