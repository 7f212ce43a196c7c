"""What the CLI prints: text from files made safe for a terminal, and tables that never cut names.

Two rules for every command:

- **Text read from a file is hostile.** Tensor names, paths, metric keys, metadata and error
  messages quoting them may hold ANSI escape sequences (which can rewrite the screen or the
  window title), rich markup (``[red]...``, which the console would interpret) or lone
  surrogates (which cannot be encoded and would crash the print). :func:`clean` shows every
  non-printable character as a Python-style escape (``\\x1b``, ``\\ud800``); :func:`esc` also
  escapes rich markup, for text embedded in a markup string.
- **Off a terminal (CI logs, ``| tee``, ``| grep``), output is plain.** No colour, no line
  wrapping at 80 columns, and tables are aligned text with every cell in full. On a terminal a
  table folds a long cell onto several lines instead of cutting it with an ellipsis.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape as _markup_escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

__all__ = ["clean", "esc", "make_console", "print_table", "progress"]

T = TypeVar("T")


def clean(text: object) -> str:
    """``text`` as a string safe to print: every non-printable character becomes an escape.

    Control characters (ESC, CR, BEL, C1 codes such as CSI ``\\x9b``), bidirectional overrides,
    and lone surrogates are shown as ``\\x..`` / ``\\u....``; everything printable (any script,
    emoji) is kept as is.

    Example:
        >>> clean("w\\x1b[2Jx"), clean("ok name"), clean("bad\\ud800")
        ('w\\\\x1b[2Jx', 'ok name', 'bad\\\\ud800')
    """
    s = text if isinstance(text, str) else str(text)
    if s.isprintable():
        return s
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode() for ch in s)


def esc(text: object) -> str:
    """:func:`clean`, then rich markup escaped: for file-derived text inside a markup string.

    Example:
        >>> esc("[red]x[/red]")
        '\\\\[red]x\\\\[/red]'
    """
    return _markup_escape(clean(text))


def make_console(*, stderr: bool = False) -> Console:
    """A console: rich on a terminal; off one, plain text that is never wrapped or coloured.

    Example:
        >>> make_console().is_terminal in (True, False)
        True
    """
    probe = Console(stderr=stderr)
    if probe.is_terminal:
        return probe
    # soft_wrap: a long line stays one line (grep-able); no_color + no highlight: no escapes.
    return Console(stderr=stderr, soft_wrap=True, no_color=True, highlight=False, emoji=False, width=100_000)


def _plain(cell: Any) -> str:
    if isinstance(cell, Text):
        return cell.plain
    if isinstance(cell, str):
        return Text.from_markup(cell).plain
    return str(cell)


def print_table(console: Console, table: Table) -> None:
    """Print ``table``: on a terminal folded (never cut); off one, as aligned plain text.

    Cells are markup strings (escape file-derived text with :func:`esc`) or ``rich.text.Text``.

    Example:
        >>> import io
        >>> t = Table("name", "size"); t.add_row("a" * 120, "1 B")
        >>> c = Console(file=io.StringIO(), width=40)
        >>> print_table(c, t); "a" * 120 in c.file.getvalue()
        True
    """
    if console.is_terminal and not console.no_color:
        for column in table.columns:
            column.overflow = "fold"
            column.no_wrap = False
        console.print(table)
        return
    headers = [_plain(c.header) for c in table.columns]
    columns = [[_plain(cell) for cell in c.cells] for c in table.columns]
    rows = list(zip(*columns, strict=True)) if columns else []
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    right = [c.justify == "right" for c in table.columns]

    def line(cells: Iterable[str]) -> str:
        parts = [cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(cells, widths, right, strict=True)]
        return "  ".join(parts).rstrip()

    out = console.file
    if table.title:
        out.write(_plain(table.title) + "\n")
    if table.show_header:
        out.write(line(headers) + "\n")
    for row in rows:
        out.write(line(row) + "\n")
    if table.caption:
        out.write(_plain(table.caption) + "\n")
    out.flush()


def progress(items: Iterable[T], *, total: int, label: str, console: Console | None = None) -> Iterator[T]:
    """Yield ``items``, with a rich progress bar on a terminal (nothing at all off one).

    Example:
        >>> list(progress([1, 2], total=2, label="x", console=Console(file=__import__("io").StringIO())))
        [1, 2]
    """
    console = console or Console(stderr=True)
    if not console.is_terminal or total < 2:
        yield from items
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with bar:
        task = bar.add_task(label, total=total)
        for item in items:
            yield item
            bar.advance(task)
