"""``torchkeep diff A B``: what changed between two files (tensors by max abs diff, values, info).

Tensors whose dtype, shape and checksum match are identical without reading their data; the rest
are compared element-wise. Non-tensor values (step counters, learning rates, betas, epoch,
metrics) are compared by their path in the tree, e.g. ``optimizer/param_groups/0/lr``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.table import Table

from ..checkpoint import _checkpoint
from ..io import _format
from ..io._dtypes import OPAQUE_DTYPES
from ._output import esc, make_console, print_table

__all__ = ["diff_files", "register"]

_MISSING = object()


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    """Leaf non-tensor values by path; tensors are compared by name elsewhere."""
    if isinstance(value, torch.Tensor):
        return
    if isinstance(value, dict):
        if not value and prefix:
            out[prefix] = {}
        for k, v in value.items():
            _flatten(v, f"{prefix}/{k}" if prefix else str(k), out)
    elif isinstance(value, (list, tuple)):
        if not value and prefix:
            out[prefix] = type(value)()
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}/{i}" if prefix else str(i), out)
    else:
        out[prefix or "<root>"] = value


def _jsonable(v: Any) -> Any:
    if v is _MISSING:
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (str, int, bool)) or v is None or isinstance(v, float):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return repr(v)


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):  # numpy arrays and the like
        return repr(a) == repr(b)


def _same_tree(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_tree(x, y) for x, y in zip(a, b, strict=True))
    if hasattr(a, "shape") or hasattr(b, "shape"):  # numpy arrays (numpy's RNG state)
        return repr(a) == repr(b) if not (hasattr(a, "tolist") and hasattr(b, "tolist")) else a.tolist() == b.tolist()
    return _same(a, b)


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.dtype in OPAQUE_DTYPES or a.dtype in (torch.complex32, torch.float8_e8m0fnu):
        # No arithmetic (bits8, float4 pairs) or no comparisons in torch: compare the byte codes.
        a, b = a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)
    if a.dtype == torch.bool:
        return float((a != b).any())
    if a.is_complex():
        return float((a.to(torch.complex128) - b.to(torch.complex128)).abs().max())
    if a.dtype.itemsize == 1 and a.dtype.is_floating_point:  # float8: upcast first
        a, b = a.float(), b.float()
    da, db = a.double(), b.double()
    both_nan = torch.isnan(da) & torch.isnan(db)
    d = (da - db).abs().masked_fill(both_nan, 0.0)
    return float(d.max()) if d.numel() else 0.0


def diff_files(path_a: str, path_b: str) -> dict[str, Any]:
    """Compare two torchkeep/safetensors files; a JSON-able report of what differs.

    Example:
        >>> import torch, torchkeep as tk, tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> tk.save({"w": torch.zeros(2), "lr": 0.1}, os.path.join(d, "a"))
        >>> tk.save({"w": torch.ones(2), "lr": 0.2}, os.path.join(d, "b"))
        >>> r = diff_files(os.path.join(d, "a"), os.path.join(d, "b"))
        >>> r["tensors"]["changed"][0]["max_abs_diff"], r["values"]["changed"][0]["path"]
        (1.0, 'lr')
    """
    ra, rb = _format.open_file(path_a), _format.open_file(path_b)
    # RNG states always differ between two points of a run and mean nothing element by element:
    # they are reported as one line per generator instead.
    # Alignment padding is not data.
    skip = (_checkpoint.RNG_KEY + "/",)
    names_a = {n for n in ra.names if not n.startswith(skip)}
    names_b = {n for n in rb.names if not n.startswith(skip)}
    changed: list[dict[str, Any]] = []
    identical = 0
    for name in sorted(names_a & names_b):
        ia, ib = ra.info(name), rb.info(name)
        entry: dict[str, Any] = {"name": name}
        if ia.dtype != ib.dtype or ia.shape != ib.shape:
            entry.update(
                dtype=[str(ia.dtype).removeprefix("torch."), str(ib.dtype).removeprefix("torch.")],
                shape=[list(ia.shape), list(ib.shape)],
                max_abs_diff=None,
            )
            changed.append(entry)
            continue
        if ia.checksum is not None and ia.checksum == ib.checksum:
            identical += 1
            continue
        diff = _max_abs_diff(ra.tensor(name), rb.tensor(name))
        if diff == 0.0 and torch.equal(ra.tensor(name).view(torch.uint8), rb.tensor(name).view(torch.uint8)):
            identical += 1
            continue
        entry.update(dtype=str(ia.dtype).removeprefix("torch."), shape=list(ia.shape), max_abs_diff=diff)
        changed.append(entry)
    changed.sort(key=lambda e: -(e["max_abs_diff"] if e["max_abs_diff"] is not None else math.inf))

    values_a: dict[str, Any] = {}
    values_b: dict[str, Any] = {}
    tree_a, tree_b = _format.load_tree(ra), _format.load_tree(rb)
    rng_a = tree_a.pop(_checkpoint.RNG_KEY, None) if isinstance(tree_a, dict) else None
    rng_b = tree_b.pop(_checkpoint.RNG_KEY, None) if isinstance(tree_b, dict) else None
    _flatten(tree_a, "", values_a)
    _flatten(tree_b, "", values_b)
    value_changes = [
        {"path": p, "a": _jsonable(values_a[p]), "b": _jsonable(values_b[p])}
        for p in sorted(values_a.keys() & values_b.keys())
        if not _same(values_a[p], values_b[p])
    ]
    report: dict[str, Any] = {
        "a": path_a,
        "b": path_b,
        "tensors": {
            "added": sorted(names_b - names_a),
            "removed": sorted(names_a - names_b),
            "changed": changed,
            "identical": identical,
        },
        "values": {
            "added": {p: _jsonable(values_b[p]) for p in sorted(values_b.keys() - values_a.keys())},
            "removed": {p: _jsonable(values_a[p]) for p in sorted(values_a.keys() - values_b.keys())},
            "changed": value_changes,
        },
    }
    if rng_a is not None or rng_b is not None:
        gens = sorted(set(rng_a or {}) | set(rng_b or {}))
        report["rng_changed"] = [g for g in gens if not _same_tree((rng_a or {}).get(g), (rng_b or {}).get(g))]
    ca, cb = ra.section(_checkpoint.SECTION), rb.section(_checkpoint.SECTION)
    if ca is not None or cb is not None:
        info_a = _checkpoint.read_info(ra, extra=False) if ca is not None else None
        info_b = _checkpoint.read_info(rb, extra=False) if cb is not None else None
        fields: dict[str, Any] = {}
        for key in ("epoch", "step", "metrics", "objects"):
            va = getattr(info_a, key) if info_a else None
            vb = getattr(info_b, key) if info_b else None
            if va != vb:
                fields[key] = [va, vb]
        env_a = info_a.env if info_a else {}
        env_b = info_b.env if info_b else {}
        env = {k: [env_a.get(k), env_b.get(k)] for k in sorted(set(env_a) | set(env_b)) if env_a.get(k) != env_b.get(k)}
        if env:
            fields["env"] = env
        report["checkpoint"] = fields
    report["identical"] = not (
        report["tensors"]["added"]
        or report["tensors"]["removed"]
        or changed
        or value_changes
        or report["values"]["added"]
        or report["values"]["removed"]
    )
    return report


def _short(v: Any) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def diff(
    a: Annotated[Path, typer.Argument(help="The first (older) file.", metavar="A")],
    b: Annotated[Path, typer.Argument(help="The second (newer) file.", metavar="B")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    limit: Annotated[int, typer.Option(help="Show at most this many rows per list (0: all).")] = 50,
    exit_code: Annotated[
        bool, typer.Option("--exit-code", help="Exit 1 when the files differ (like git diff --exit-code).")
    ] = False,
) -> None:
    """Show what changed from A to B: tensors added, removed, changed (max abs diff), values, info."""
    report = diff_files(str(a), str(b))
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))  # ASCII JSON: escapes are inert
    else:
        _render(report, limit)
    if exit_code and not report["identical"]:
        raise typer.Exit(1)


def _render(report: dict[str, Any], limit: int) -> None:
    console = make_console()

    def cut(xs: list[Any]) -> list[Any]:
        return xs if limit <= 0 else xs[:limit]

    console.print(f"[bold]{esc(report['a'])}[/bold] → [bold]{esc(report['b'])}[/bold]")
    ckpt = report.get("checkpoint") or {}
    for key in ("epoch", "step"):
        if key in ckpt:
            console.print(f"{key}: {esc(ckpt[key][0])} → {esc(ckpt[key][1])}")
    if "metrics" in ckpt:
        ma, mb = ckpt["metrics"][0] or {}, ckpt["metrics"][1] or {}
        parts = [
            f"{esc(k)} {esc(ma.get(k))} → {esc(mb.get(k))}" for k in sorted(set(ma) | set(mb)) if ma.get(k) != mb.get(k)
        ]
        console.print("metrics: " + ", ".join(parts))
    if "objects" in ckpt:
        console.print(f"objects: {esc(ckpt['objects'][0])} → {esc(ckpt['objects'][1])}")
    if report.get("rng_changed"):
        console.print("random generators changed: " + ", ".join(esc(r) for r in report["rng_changed"]))
    for k, (va, vb) in (ckpt.get("env") or {}).items():
        console.print(f"env {esc(k)}: {esc(va)} → {esc(vb)}")
    t = report["tensors"]
    console.print(
        f"tensors: {len(t['added'])} added, {len(t['removed'])} removed, {len(t['changed'])} changed, "
        f"{t['identical']} identical"
    )
    if t["added"] or t["removed"] or t["changed"]:
        table = Table("", "tensor", "dtype", "shape", "max abs diff", box=None, header_style="bold")
        for name in cut(t["added"]):
            table.add_row("[green]+[/green]", esc(name), "", "", "")
        for name in cut(t["removed"]):
            table.add_row("[red]-[/red]", esc(name), "", "", "")
        for e in cut(t["changed"]):
            if e["max_abs_diff"] is None:
                table.add_row(
                    "[yellow]~[/yellow]",
                    esc(e["name"]),
                    f"{esc(e['dtype'][0])} → {esc(e['dtype'][1])}",
                    f"{esc(tuple(e['shape'][0]))} → {esc(tuple(e['shape'][1]))}",
                    "",
                )
            else:
                table.add_row(
                    "[yellow]~[/yellow]",
                    esc(e["name"]),
                    esc(e["dtype"]),
                    esc(tuple(e["shape"])),
                    f"{e['max_abs_diff']:.6g}",
                )
        print_table(console, table)
    v = report["values"]
    if v["added"] or v["removed"] or v["changed"]:
        table = Table("", "value", "A", "B", box=None, header_style="bold")
        for p, val in cut(list(v["added"].items())):
            table.add_row("[green]+[/green]", esc(p), "", esc(_short(val)))
        for p, val in cut(list(v["removed"].items())):
            table.add_row("[red]-[/red]", esc(p), esc(_short(val)), "")
        for c in cut(v["changed"]):
            table.add_row("[yellow]~[/yellow]", esc(c["path"]), esc(_short(c["a"])), esc(_short(c["b"])))
        print_table(console, table)
    console.print("[green]identical[/green]" if report["identical"] else "[yellow]files differ[/yellow]")


def register(app: typer.Typer) -> None:
    """Add ``torchkeep diff`` to the CLI."""
    app.command()(diff)
