"""``torchkeep inspect`` and ``torchkeep verify``: look inside files without loading them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..checkpoint import _checkpoint
from ..errors import TorchkeepError, UsageError
from ..io import _format
from ._output import clean, esc, make_console, print_table, progress
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
        >>> from torchkeep.io import _codec
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


def _collapse_state_dicts(node: Any) -> Any:
    """A dict whose values are all tensors (a state dict) becomes one line: the table lists them."""
    if isinstance(node, dict):
        values = list(node.values())
        if values and all(isinstance(v, str) and v.startswith(("<tensor ", "<parameter ")) for v in values):
            return f"<{len(values)} tensors: listed below>"
        return {k: _collapse_state_dicts(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_collapse_state_dicts(v) for v in node]
    return node


def _compact(node: Any, indent: int = 0) -> list[str]:
    """JSON lines, but a container of scalars that fits on one line stays on one line."""
    one = json.dumps(node, ensure_ascii=False)
    if len(one) + indent <= 100 or not isinstance(node, (dict, list)) or not node:
        return [" " * indent + one]
    pad = " " * (indent + 2)
    lines = ["{" if isinstance(node, dict) else "["]
    items = list(node.items()) if isinstance(node, dict) else [(None, v) for v in node]
    for i, (k, v) in enumerate(items):
        sub = _compact(v, indent + 2)
        head = sub[0].lstrip()
        prefix = f"{pad}{json.dumps(k, ensure_ascii=False)}: " if k is not None else pad
        sub[0] = prefix + head
        if i < len(items) - 1:
            sub[-1] += ","
        lines.extend(sub)
    lines.append(" " * indent + ("}" if isinstance(node, dict) else "]"))
    lines[0] = " " * indent + lines[0]
    return lines


def _torch_save_file(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def describe(path: str, *, verify: bool = False) -> dict[str, Any]:
    """A JSON-able description of a file: kind, checkpoint/model info, tensors, metadata.

    Raises:
        UsageError: ``path`` is a ``torch.save`` file; the message says to convert it first.
    """
    if _torch_save_file(path):
        raise UsageError(
            f"{path}: this is a torch.save file (zip/pickle), not a torchkeep or safetensors file; "
            f"torchkeep never unpickles it. Convert it once: torchkeep convert {path} "
            f"{os.path.splitext(path)[0]}.safetensors"
        )
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
        if isinstance(model, dict) and "arguments" in model:
            out["model_arguments"] = preview_tree(model["arguments"], reader)
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
                **({"file": ti.file} if ti.file is not None else {}),
            }
        )
    out["tensors"] = tensors
    if reader.tree is not None:
        tree = preview_tree(reader.tree, reader)
        if section is not None and isinstance(tree, dict) and _checkpoint.RNG_KEY in tree:
            rng = tree[_checkpoint.RNG_KEY]
            tree[_checkpoint.RNG_KEY] = f"<RNG state: {', '.join(rng) if isinstance(rng, dict) else '?'}>"
        out["tree"] = tree
    out["tensor_bytes"] = sum(t["bytes"] for t in tensors)
    out["metadata"] = {k: v for k, v in reader.metadata.items() if not k.startswith(_format.META_PREFIX)}
    if verify:
        reader.verify()
        out["verified"] = True
    return out


def inspect(
    file: Annotated[Path, typer.Argument(help="A torchkeep or safetensors file.", metavar="FILE")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Also check every tensor's checksum.")] = False,
    limit: Annotated[int, typer.Option(help="Show at most this many tensors (0: all).", metavar="N")] = 50,
) -> None:
    """Show what a file holds: checkpoint info, model entry and arguments, values, tensors, metadata."""
    desc = describe(str(file), verify=verify)
    if as_json:
        typer.echo(json.dumps(desc, indent=2, default=str))  # ASCII JSON: escapes are inert
        return
    console = make_console()
    console.print(
        f"[bold]{esc(file)}[/bold]  {desc['format']} file, {human_size(desc['size_bytes'])}, "
        f"{len(desc['tensors'])} tensors"
    )
    ckpt = desc.get("checkpoint")
    if ckpt:
        console.print(
            f"[bold]checkpoint[/bold]  epoch={esc(ckpt['epoch'])} step={esc(ckpt['step'])} "
            f"created={esc(ckpt['created_at'])} rng={'yes' if ckpt['rng'] else 'no'}"
        )
        if ckpt["metrics"]:
            console.print("  metrics: " + ", ".join(f"{esc(k)}={esc(v)}" for k, v in ckpt["metrics"].items()))
        console.print("  objects: " + ", ".join(f"{esc(k)} ({esc(v)})" for k, v in ckpt["objects"].items()))
        env = ckpt["env"] if isinstance(ckpt["env"], dict) else {}
        console.print(
            "  env: "
            + ", ".join(
                f"{k} {esc(env[k])}"
                for k in ("python", "torch", "numpy", "torchkeep", "cuda", "cudnn", "platform")
                if env.get(k)
            )
        )
    if desc.get("model"):
        m = desc["model"]
        get = m.get if isinstance(m, dict) else {}.get
        console.print(f"[bold]model[/bold]  {esc(get('name'))} v{esc(get('version'))} ({esc(get('target'))})")
        if "model_arguments" in desc:
            args = desc["model_arguments"]
            shown = (
                ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items())
                if isinstance(args, dict)
                else json.dumps(args, ensure_ascii=False)
            )
            console.print(f"  arguments: {esc(shown) or '(none)'}")
    if "tree" in desc:
        lines = _compact(_collapse_state_dicts(desc["tree"]))
        cut = lines if limit <= 0 else lines[: max(limit, 10)]
        console.print("[bold]values[/bold]")
        for line in cut:
            console.print(clean(line), markup=False, highlight=False)
        if len(cut) < len(lines):
            console.print(f"... {len(lines) - len(cut)} more lines (use --limit 0 or --json)")
    table = Table("tensor", "dtype", "shape", "size", "device", "xxh3", box=None, header_style="bold")
    shown_tensors = desc["tensors"] if limit <= 0 else desc["tensors"][:limit]
    for t in shown_tensors:
        table.add_row(
            esc(t["name"]),
            esc(t["dtype"]),
            esc(tuple(t["shape"])),
            human_size(t["bytes"]),
            esc(t["device"]),
            esc(t["xxh3"] or "-"),
        )
    print_table(console, table)
    if len(shown_tensors) < len(desc["tensors"]):
        console.print(f"... {len(desc['tensors']) - len(shown_tensors)} more (use --limit 0 to show all)")
    console.print(f"tensor data: {human_size(desc['tensor_bytes'])}")
    if desc["metadata"]:
        console.print("metadata: " + clean(json.dumps(desc["metadata"], ensure_ascii=False)), markup=False)
    if verify:
        console.print("[green]all checksums match[/green]")


def verify(
    files: Annotated[list[Path], typer.Argument(help="Files to check.", metavar="FILE")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    allow_unverified: Annotated[
        bool,
        typer.Option(
            "--allow-unverified",
            help="Accept tensors that carry no checksum (plain safetensors files from other tools) "
            "instead of exiting 1.",
        ),
    ] = False,
) -> None:
    """Check every tensor's checksum. Exit 1 if a file is damaged, or holds tensors with no checksum.

    A plain safetensors file from another tool has no checksums, so nothing in it can be verified:
    that is reported as "unverified" and exits 1 too, unless --allow-unverified is given.
    """
    results: list[dict[str, Any]] = []
    console = make_console(stderr=True)
    for f in progress(files, total=len(files), label="verifying", console=console):
        try:
            reader = _format.open_file(f)
            reader.verify()
            checked = sum(reader.info(n).checksum is not None for n in reader.names)
            unchecked = len(reader.names) - checked
            results.append(
                {
                    "path": str(f),
                    "ok": unchecked == 0 or allow_unverified,
                    "tensors": len(reader.names),
                    "checksums": checked,
                    "unverified": unchecked,
                }
            )
        except TorchkeepError as exc:
            results.append({"path": str(f), "ok": False, "error": str(exc).splitlines()[0]})
    if as_json:
        typer.echo(json.dumps(results, indent=2))  # ASCII JSON: escapes are inert
    else:
        for r in results:
            path = clean(r["path"])
            if "error" in r:
                typer.secho(f"BAD  {clean(r['error'])}", fg=typer.colors.RED, err=True)
            elif r["unverified"] == 0:
                typer.secho(f"ok   {path} ({r['tensors']} tensors)", fg=typer.colors.GREEN)
            elif r["ok"]:
                typer.secho(
                    f"ok   {path} ({r['tensors']} tensors, {r['unverified']} with no checksum: accepted)",
                    fg=typer.colors.YELLOW,
                )
            else:
                typer.secho(
                    f"UNVERIFIED  {path}: {r['unverified']} of {r['tensors']} tensors carry no checksum "
                    "(a plain safetensors file?); nothing proves they are intact. Re-save it with "
                    "tk.save to add checksums, or pass --allow-unverified to accept it",
                    fg=typer.colors.RED,
                    err=True,
                )
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command()(inspect)
    app.command()(verify)
