"""``torchkeep inspect`` and ``torchkeep verify``: look inside files without loading them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .. import _checkpoint, _format
from ..errors import TorchkeepError
from ._text import human_size

__all__ = ["describe", "preview_tree", "register"]


_MAX_ITEMS = 50
_MAX_DEPTH = 16


def preview_tree(node: Any, reader: _format.Reader, depth: int = 0) -> Any:
    """The stored object tree as plain JSON for display: tensors as ``<tensor name dtype shape>``.

    Reads only the header (no tensor data, no classes resolved), so it works on any file and on
    trees whose dataclasses are not importable here.

    Example:
        >>> import io, torch
        >>> from torchkeep import _codec
        >>> enc = _codec.encode({"w": torch.zeros(2), "step": (1, 2)})
        >>> buf = io.BytesIO(); _ = _format.write(buf, enc.tensors, tree=enc.tree)
        >>> preview_tree(enc.tree, _format.open_file(buf.getvalue()))
        {'w': '<tensor w float32 (2,)>', 'step': [1, 2]}
    """
    if depth > _MAX_DEPTH:
        return "..."
    if node is None or isinstance(node, (bool, int, float)):
        return node
    if isinstance(node, str):
        return node if len(node) <= 80 else node[:77] + "..."
    if isinstance(node, list):
        items = [preview_tree(v, reader, depth + 1) for v in node[:_MAX_ITEMS]]
        return items + ([f"... {len(node) - _MAX_ITEMS} more"] if len(node) > _MAX_ITEMS else [])
    if not isinstance(node, dict):
        return "<?>"
    tag, v = node.get("t"), node.get("v")
    if tag in ("dict", "odict"):
        if isinstance(node.get("items"), dict):
            pairs = list(node["items"].items())
        else:
            keys, values = node.get("keys"), node.get("values")
            pairs = list(zip(keys, values, strict=False)) if isinstance(keys, list) and isinstance(values, list) else []
            pairs = [(k if isinstance(k, str) else json.dumps(preview_tree(k, reader, depth + 1)), v) for k, v in pairs]
        out = {str(k): preview_tree(v, reader, depth + 1) for k, v in pairs[:_MAX_ITEMS]}
        if len(pairs) > _MAX_ITEMS:
            out["..."] = f"{len(pairs) - _MAX_ITEMS} more"
        return out
    if tag == "tuple":
        return preview_tree(node.get("items"), reader, depth)
    if tag in ("tensor", "ndarray"):
        ref = node.get("ref")
        try:
            info = reader.info(str(ref))
        except TorchkeepError:
            return f"<{tag} {ref!r}: missing>"
        view = node.get("view")
        shape = (
            tuple(view[1]) if isinstance(view, list) and len(view) == 3 and isinstance(view[1], list) else info.shape
        )
        kind = "parameter" if node.get("param") else tag
        return f"<{kind} {ref} {str(info.dtype).removeprefix('torch.')} {shape}>"
    if tag in ("int", "float"):
        return v
    if tag == "bytes":
        return f"<{len(v) * 3 // 4 if isinstance(v, str) else '?'} bytes>"
    if tag in ("dtype", "device", "size"):
        return {"dtype": f"torch.{v}", "device": f"device({v!r})", "size": f"Size({v})"}[tag]
    if tag == "npscalar":
        return f"<numpy {node.get('dtype')} scalar>"
    if tag == "enum":
        return f"<{node.get('cls')} {json.dumps(preview_tree(v, reader, depth + 1))}>"
    if tag == "dataclass":
        fields = node.get("fields")
        return {f"<{node.get('cls')}>": preview_tree(fields, reader, depth + 1)}
    return f"<unknown tag {tag!r}>"


def describe(path: str, *, verify: bool = False) -> dict[str, Any]:
    """A JSON-able description of a file: kind, checkpoint/model info, tensors, metadata."""
    reader = _format.open_file(path)
    out: dict[str, Any] = {
        "path": path,
        "size_bytes": reader.size,
        "format": "torchkeep" if reader.is_torchkeep else "safetensors",
    }
    section = reader.section(_checkpoint.SECTION)
    if section is not None:
        info = _checkpoint.read_info(reader, extra=False)
        out["checkpoint"] = {
            "epoch": info.epoch,
            "step": info.step,
            "metrics": info.metrics,
            "objects": info.objects,
            "created_at": info.created_at,
            "rng": info.rng,
            "env": info.env,
        }
    model = reader.section("model")
    if model is not None:
        out["model"] = model
    tensors = []
    for name in reader.names:
        ti = reader.info(name)
        tensors.append(
            {
                "name": name,
                "dtype": str(ti.dtype).removeprefix("torch."),
                "shape": list(ti.shape),
                "bytes": ti.nbytes,
                "device": ti.device,
                "xxh3": ti.checksum,
            }
        )
    out["tensors"] = tensors
    if reader.tree is not None:
        out["tree"] = preview_tree(reader.tree, reader)
    out["tensor_bytes"] = sum(t["bytes"] for t in tensors)
    out["metadata"] = {k: v for k, v in reader.metadata.items() if not k.startswith(_format.META_PREFIX)}
    if verify:
        reader.verify()
        out["verified"] = True
    return out


def inspect(
    file: Annotated[Path, typer.Argument(help="A torchkeep or safetensors file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Also check every tensor's checksum.")] = False,
    limit: Annotated[int, typer.Option(help="Show at most this many tensors (0: all).")] = 50,
) -> None:
    """Show what a file holds: checkpoint info, model entry, tensors, metadata."""
    desc = describe(str(file), verify=verify)
    if as_json:
        typer.echo(json.dumps(desc, indent=2, default=str))
        return
    console = Console()
    console.print(
        f"[bold]{file}[/bold]  {desc['format']} file, {human_size(desc['size_bytes'])}, {len(desc['tensors'])} tensors"
    )
    ckpt = desc.get("checkpoint")
    if ckpt:
        console.print(
            f"[bold]checkpoint[/bold]  epoch={ckpt['epoch']} step={ckpt['step']} created={ckpt['created_at']} "
            f"rng={'yes' if ckpt['rng'] else 'no'}"
        )
        if ckpt["metrics"]:
            console.print("  metrics: " + ", ".join(f"{k}={v}" for k, v in ckpt["metrics"].items()))
        console.print("  objects: " + ", ".join(f"{k} ({v})" for k, v in ckpt["objects"].items()))
        env = ckpt["env"]
        console.print(
            "  env: "
            + ", ".join(
                f"{k} {env[k]}"
                for k in ("python", "torch", "numpy", "torchkeep", "cuda", "cudnn", "platform")
                if env.get(k)
            )
        )
    if desc.get("model"):
        m = desc["model"]
        console.print(f"[bold]model[/bold]  {m.get('name')} v{m.get('version')} ({m.get('target')})")
    if "tree" in desc:
        lines = json.dumps(desc["tree"], indent=2, ensure_ascii=False).splitlines()
        cut = lines if limit <= 0 else lines[: max(limit, 10)]
        console.print("[bold]tree[/bold]", highlight=False)
        console.print("\n".join(cut), markup=False, highlight=False)
        if len(cut) < len(lines):
            console.print(f"... {len(lines) - len(cut)} more lines (use --limit 0 or --json)")
    table = Table("tensor", "dtype", "shape", "size", "device", "xxh3", box=None, header_style="bold")
    shown = desc["tensors"] if limit <= 0 else desc["tensors"][:limit]
    for t in shown:
        table.add_row(
            t["name"], t["dtype"], str(tuple(t["shape"])), human_size(t["bytes"]), t["device"], t["xxh3"] or "-"
        )
    console.print(table)
    if len(shown) < len(desc["tensors"]):
        console.print(f"... {len(desc['tensors']) - len(shown)} more (use --limit 0 to show all)")
    console.print(f"tensor data: {human_size(desc['tensor_bytes'])}")
    if desc["metadata"]:
        console.print("metadata: " + json.dumps(desc["metadata"]))
    if verify:
        console.print("[green]all checksums match[/green]")


def verify(
    files: Annotated[list[Path], typer.Argument(help="Files to check.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Check every tensor's checksum. Exit 1, one line per bad file, if any fails."""
    results: list[dict[str, Any]] = []
    for f in files:
        try:
            reader = _format.open_file(f)
            reader.verify()
            checked = sum(reader.info(n).checksum is not None for n in reader.names)
            results.append({"path": str(f), "ok": True, "tensors": len(reader.names), "checksums": checked})
        except TorchkeepError as exc:
            results.append({"path": str(f), "ok": False, "error": str(exc).splitlines()[0]})
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        for r in results:
            if r["ok"]:
                # A plain safetensors file from another tool has no checksums: say so, not "ok".
                note = "" if r["checksums"] == r["tensors"] else f", {r['tensors'] - r['checksums']} with no checksums"
                typer.secho(f"ok   {r['path']} ({r['tensors']} tensors{note})", fg=typer.colors.GREEN)
            else:
                typer.secho(f"BAD  {r['error']}", fg=typer.colors.RED, err=True)
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command()(inspect)
    app.command()(verify)
