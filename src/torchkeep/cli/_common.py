"""Options shared by several commands, so each is spelled the same everywhere."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Annotated

import torch
import typer

__all__ = ["DTYPES", "ImportModules", "example_inputs", "import_user_modules", "parse_shape"]

#: ``--import/-m MODULE`` (repeatable): the module(s) where the user's ``@tk.register`` classes
#: live. torchkeep never imports a module named by a file on its own; this is the user asking.
ImportModules = Annotated[
    list[str] | None,
    typer.Option(
        "--import",
        "-m",
        help="Import this Python module first (where your @tk.register classes live); repeatable.",
        metavar="MODULE",
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


DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,10"`` (or ``"1x10"``) → ``(1, 10)``.

    Example:
        >>> parse_shape("1,3,224,224")
        (1, 3, 224, 224)
    """
    parts = [p.strip() for p in re.split(r"[,x]", text)]
    shape = tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else ()
    if not shape or any(d < 1 for d in shape):
        raise typer.BadParameter(f"{text!r} is not a shape; expected positive ints separated by commas, e.g. 1,10")
    return shape


def example_inputs(shapes: list[str], dtypes: list[str], int_high: int = 10) -> tuple[torch.Tensor, ...]:
    """Example tensors from ``--input-shape`` / ``--dtype`` values (random floats, ints below ``int_high``).

    Example:
        >>> [tuple(t.shape) for t in example_inputs(["1,10"], [])]
        [(1, 10)]
    """
    parsed = [parse_shape(s) for s in shapes]
    if len(dtypes) not in (0, 1, len(parsed)):
        raise typer.BadParameter(f"give one --dtype for all inputs or one per --input-shape ({len(parsed)})")
    names = dtypes if len(dtypes) == len(parsed) else [dtypes[0] if dtypes else "float32"] * len(parsed)
    out = []
    for shape, name in zip(parsed, names, strict=True):
        if name not in DTYPES:
            raise typer.BadParameter(f"--dtype {name!r} is not one of {', '.join(DTYPES)}")
        dtype = DTYPES[name]
        if dtype.is_floating_point:
            out.append(torch.randn(shape).to(dtype))
        elif dtype == torch.bool:
            out.append(torch.ones(shape, dtype=torch.bool))
        else:
            out.append(torch.randint(0, int_high, shape, dtype=dtype))
    return tuple(out)
