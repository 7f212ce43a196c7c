"""Reading a checkpoint back without restoring anything: its info, and selected entries of its tree.

The header section is hostile input like the rest of a file: every field is checked against
what it may hold before it becomes a :class:`CheckpointInfo`.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import CorruptCheckpointError
from ..io import _codec, _format
from ..io._format import MapLocation
from ._state import EXTRA_KEY, INT64_MAX, INT64_MIN, SECTION, CheckpointInfo
from ._state_io import aligned

__all__ = ["decode_subtrees", "info_from_section", "read_info"]


def _is_int(v: Any) -> bool:
    return type(v) is int and INT64_MIN <= v <= INT64_MAX


#: Each field of the checkpoint section, what it may hold, and how to say so.
_SECTION_FIELDS: dict[str, tuple[Any, str]] = {
    "epoch": (lambda v: v is None or _is_int(v), "an int or null"),
    "step": (lambda v: v is None or _is_int(v), "an int or null"),
    "metrics": (
        lambda v: (
            isinstance(v, dict)
            and all(x is None or isinstance(x, (str, bool, float)) or _is_int(x) for x in v.values())
        ),
        "an object of numbers (64-bit ints, floats), strings, booleans or nulls",
    ),
    "objects": (
        lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        "an object of object names to kinds",
    ),
    "env": (lambda v: isinstance(v, dict), "an object"),
    "created_at": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "model": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "rng": (lambda v: isinstance(v, bool), "true or false"),
    "extra": (lambda v: isinstance(v, bool), "true or false"),
}


def info_from_section(path: str | None, section: Any, size: int | None) -> CheckpointInfo:
    """Build a :class:`CheckpointInfo` from a checkpoint's header section (hostile input).

    Every field is checked first.

    Raises:
        CorruptCheckpointError: the section is not a JSON object, or a field holds the wrong type.

    Example:
        >>> info_from_section("c.safetensors", {"epoch": 2, "objects": {"model": "module"}}, 10).epoch
        2
    """
    if not isinstance(section, dict):
        raise CorruptCheckpointError(f"{path}: checkpoint section is not an object", path=path)
    for key, (valid, expected) in _SECTION_FIELDS.items():
        if key in section and not valid(section[key]):
            raise CorruptCheckpointError(
                f"{path}: the checkpoint section's {key!r} is {str(section[key])[:60]!r}, expected {expected}; "
                "the header is damaged or was not written by torchkeep",
                path=path,
                reason=f"bad {key} field",
            )
    return CheckpointInfo(
        path=path,
        epoch=section.get("epoch"),
        step=section.get("step"),
        metrics=dict(section.get("metrics") or {}),
        created_at=section.get("created_at"),
        env=dict(section.get("env") or {}),
        model=section.get("model"),
        size_bytes=size,
        objects=dict(section.get("objects") or {}),
        rng=bool(section.get("rng")),
    )


def read_info(path: str | os.PathLike[str] | _format.Reader, *, extra: bool = True) -> CheckpointInfo:
    """Read a checkpoint's info without restoring anything (and without verifying checksums).

    Epoch, step, metrics, objects and environment come from the header. ``extra`` (what
    ``save_checkpoint(extra=...)`` stored) is decoded too, unless ``extra=False``: it is part of
    the object tree, so tensors inside it are read (memory-mapped, not verified); pass
    ``extra=False`` to read the header alone (listings do).

    Example:
        >>> import torch, torchkeep as tk, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "c.safetensors")
        >>> _ = tk.save_checkpoint(path, model=torch.nn.Linear(1, 1), step=10, extra={"lr": 0.1})
        >>> read_info(path).step, read_info(path).extra
        (10, {'lr': 0.1})
    """
    reader = path if isinstance(path, _format.Reader) else _format.open_file(path)
    section = reader.section(SECTION)
    if section is None:
        hint = (
            "; it was converted from a torch.save file: to restore it with load_checkpoint, convert it again with "
            "`torchkeep convert SRC DST --as-checkpoint` (maps model_state_dict, optimizer_state_dict, epoch, ...)"
            if "converted_from" in reader.metadata
            else ""
        )
        raise CorruptCheckpointError(
            f"{reader.path}: not a training checkpoint (no {SECTION} section); load it with tk.load(){hint}",
            path=reader.path,
            reason="not a checkpoint",
        )
    info = info_from_section(reader.path, section, reader.size)
    if extra and isinstance(section, dict) and section.get("extra"):
        info.extra = decode_subtrees(reader, [EXTRA_KEY], map_location=None, verify=False).get(EXTRA_KEY)
    return info


def decode_subtrees(
    reader: _format.Reader, names: list[str], *, map_location: MapLocation, verify: bool
) -> dict[str, Any]:
    """Decode (and verify) only the named top-level entries of a checkpoint tree.

    Loading just the model of a checkpoint then neither checks nor moves the optimizer state.
    Names the file does not hold are simply absent from the result.

    Raises:
        CorruptCheckpointError: the tree is not a dict of named objects, or a checksum fails.

    Example:
        >>> import io
        >>> tree, section = collect_state({"model": torch.nn.Linear(2, 1)}, rng=False)
        >>> buf = io.BytesIO()
        >>> _ = write_checkpoint(buf, tree, section)
        >>> reader = _format.open_file(buf.getvalue())
        >>> sorted(decode_subtrees(reader, ["model"], map_location=None, verify=True)["model"])
        ['bias', 'weight']
    """
    root = reader.tree
    items = root.get("items") if isinstance(root, dict) and root.get("t") in ("dict", "odict") else None
    if not isinstance(items, dict):
        raise CorruptCheckpointError(
            f"{reader.path}: a checkpoint's object tree must be a dict of named objects", path=reader.path
        )
    selected = {k: v for k, v in items.items() if k in names}
    if verify:
        try:
            refs = _codec.tensor_names(selected)
        except CorruptCheckpointError as exc:
            raise CorruptCheckpointError(f"{reader.path}: {exc}", path=reader.path, reason=exc.reason) from None
        reader.verify([n for n in reader.names if n in refs])
    tree: dict[str, Any] = _codec.decode(
        {"t": "dict", "items": selected}, lambda n: aligned(reader.tensor(n, map_location))
    )
    return tree
