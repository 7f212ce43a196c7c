"""``tk.save`` / ``tk.load``: the safe, drop-in replacement for torch.save / torch.load."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..io import _codec, _format
from ..io._format import MapLocation
from ..io._storage import atomic_write
from . import sharded

__all__ = ["load", "save"]


def save(obj: Any, path: str | os.PathLike[str], *, metadata: Mapping[str, str] | None = None) -> None:
    """Save a tree of tensors and plain values to ``path``, atomically and without pickle.

    ``obj`` may nest dict / OrderedDict / list / tuple holding None, bool, int, float (nan/inf
    too), str, bytes, tensors (any dtype or device, views, tied weights), torch.dtype /
    torch.device / torch.Size, numpy arrays and scalars, dataclasses and enums. The file is a
    valid safetensors file whose tensor names are paths in the tree. ``metadata`` is free
    str → str metadata stored in the safetensors header.

    Raises:
        UnsupportedValueError: a value cannot be stored; the message names its path in the tree.
        CheckpointWriteError: the write failed; any previous file at ``path`` is unchanged.

    Example:
        >>> import torch, torchkeep as tk, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "state.safetensors")
        >>> tk.save({"weights": torch.ones(2, 2), "epoch": 3, "betas": (0.9, 0.999)}, path)
        >>> tk.load(path)["betas"]
        (0.9, 0.999)
    """
    enc = _codec.encode(obj)
    with atomic_write(path) as f:
        _format.write(f, enc.tensors, tree=enc.tree, metadata=metadata)


def load(
    path: str | os.PathLike[str],
    *,
    map_location: MapLocation = None,
    mmap: bool = True,
    verify: bool = True,
) -> Any:
    """Load what :func:`save` wrote: the same tree, with the same types. Never unpickles.

    Tensors land on the CPU unless ``map_location`` says otherwise (a device string, a
    ``torch.device``, a dict mapping saved devices to new ones, or a callable
    ``f(tensor, saved_device) -> tensor``). With ``mmap=True`` the file is mapped and tensors are
    views of it (nothing is copied until used). ``verify=True`` checks every tensor's checksum
    first. A plain safetensors file from another tool loads as a flat dict of tensors.

    Raises:
        CheckpointNotFoundError: no file at ``path``.
        CorruptCheckpointError: the file is damaged or not a safetensors file; names the tensor.
        FormatVersionError: the file comes from a newer torchkeep.

    Example:
        >>> import torch, torchkeep as tk, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "sd.safetensors")
        >>> tk.save({"w": torch.arange(3)}, path)
        >>> tk.load(path, map_location="cpu")["w"].tolist()
        [0, 1, 2]
    """
    if os.path.isdir(path):  # a sharded checkpoint directory (its full state), or an error saying what it is
        return sharded.load_full(path, map_location=map_location, verify=verify)
    reader = _format.open_file(path, mmap=mmap)
    if verify:
        reader.verify()
    return _format.load_tree(reader, map_location=map_location)
