"""Small text helpers shared by the CLI commands."""

from __future__ import annotations

__all__ = ["human_size"]


def human_size(n: int | None) -> str:
    """A byte count for people: ``"512 B"``, ``"1.5 KiB"``, ... ``"?"`` when unknown.

    Example:
        >>> human_size(512), human_size(1536), human_size(None)
        ('512 B', '1.5 KiB', '?')
    """
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover
