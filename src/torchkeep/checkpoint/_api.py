"""``tk.save`` / ``tk.load``: the safe, drop-in replacement for torch.save / torch.load."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import IO, Any

from ..errors import UsageError
from ..io import _codec, _format
from ..io._format import MapLocation
from ..io._storage import atomic_write
from . import sharded

__all__ = ["load", "load_bytes", "save", "save_bytes"]

#: What ``save`` and ``load`` take as their file: a path, or an open binary file object.
FileLike = str | os.PathLike[str] | IO[bytes]


def _is_file_object(f: Any) -> bool:
    return not isinstance(f, (str, os.PathLike, bytes, bytearray, memoryview)) and (
        hasattr(f, "write") or hasattr(f, "read")
    )


def save(obj: Any, path: FileLike, *, metadata: Mapping[str, str] | None = None) -> None:
    """Save a tree of tensors and plain values to ``path``, atomically and without pickle.

    ``obj`` may nest dict / OrderedDict / list / tuple holding None, bool, int, float (nan/inf
    too), str, bytes, tensors (any dtype or device, views, tied weights), torch.dtype /
    torch.device / torch.Size, numpy arrays and scalars, dataclasses and enums. The file is a
    valid safetensors file whose tensor names are paths in the tree. ``metadata`` is free
    str → str metadata stored in the safetensors header.

    ``path`` may also be an open binary file object (``io.BytesIO``, ``open(..., "wb")``), as
    with ``torch.save``: the bytes are written to it at its current position, and the atomic
    commit is then the caller's business. :func:`save_bytes` returns the bytes instead.

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
    if _is_file_object(path):
        try:
            _format.write(path, enc.tensors, tree=enc.tree, metadata=metadata)  # type: ignore[arg-type]
        except (io.UnsupportedOperation, AttributeError) as exc:
            raise UsageError(
                f"tk.save: cannot write to {type(path).__name__} ({exc}); pass a path or a file opened with 'wb'"
            ) from exc
        return
    if not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"tk.save: expected a path or a binary file object, got {type(path).__name__}")
    with atomic_write(path) as f:
        _format.write(f, enc.tensors, tree=enc.tree, metadata=metadata)


def save_bytes(obj: Any, *, metadata: Mapping[str, str] | None = None) -> bytes:
    """What :func:`save` would write, as bytes (like ``safetensors.torch.save``).

    Raises:
        UnsupportedValueError: a value cannot be stored; the message names its path in the tree.

    Example:
        >>> import torch, torchkeep as tk
        >>> data = tk.save_bytes({"w": torch.ones(2), "step": 3})
        >>> tk.load_bytes(data)["step"]
        3
    """
    buf = io.BytesIO()
    save(obj, buf, metadata=metadata)
    return buf.getvalue()


def load(
    path: FileLike,
    *,
    map_location: MapLocation = None,
    mmap: bool = True,
    verify: bool = True,
    weights_only: bool | None = None,
) -> Any:
    """Load what :func:`save` wrote: the same tree, with the same types. Never unpickles.

    Tensors land on the CPU unless ``map_location`` says otherwise (a device string, a
    ``torch.device``, a dict mapping saved devices to new ones, or a callable
    ``f(tensor, saved_device) -> tensor``). With ``mmap=True`` the file is mapped and tensors are
    views of it (nothing is copied until used). ``verify=True`` checks every tensor's checksum
    first. A plain safetensors file from another tool loads as a flat dict of tensors.

    ``path`` may also be an open binary file object (read from its current position to the end)
    or, with :func:`load_bytes`, the bytes themselves. ``weights_only`` is accepted so that
    ``torch.load(f, weights_only=True)`` calls keep working after a rename; it changes nothing:
    torchkeep never unpickles, so every load is already as safe as ``weights_only=True``, and
    ``weights_only=False`` does not enable pickle (``torchkeep convert --trust-pickle`` is the
    one pickle path, for legacy files).

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
    del weights_only  # moot: nothing is ever unpickled (see the docstring)
    if _is_file_object(path):
        try:
            data = path.read()  # type: ignore[union-attr]
        except (io.UnsupportedOperation, AttributeError) as exc:
            raise UsageError(
                f"tk.load: cannot read from {type(path).__name__} ({exc}); pass a path or a file opened with 'rb'"
            ) from exc
        if not isinstance(data, (bytes, bytearray)):
            raise UsageError(f"tk.load: {type(path).__name__} is a text file; open it with 'rb'")
        return load_bytes(data, map_location=map_location, verify=verify)
    if isinstance(path, (bytes, bytearray, memoryview)):
        raise UsageError("tk.load takes a path or a file object; for bytes use tk.load_bytes(data)")
    if not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"tk.load: expected a path or a binary file object, got {type(path).__name__}")
    if os.path.isdir(path):  # a sharded checkpoint directory: the full state
        return sharded.load_full(path, map_location=map_location, verify=verify)
    reader = _format.open_file(path, mmap=mmap)
    if verify:
        reader.verify()
    return _format.load_tree(reader, map_location=map_location)


def load_bytes(data: bytes | bytearray | memoryview, *, map_location: MapLocation = None, verify: bool = True) -> Any:
    """Load a tree from the bytes :func:`save_bytes` (or any safetensors writer) produced.

    Raises:
        CorruptCheckpointError: the bytes are not a valid file; names the damaged tensor.
        FormatVersionError: the bytes come from a newer torchkeep.

    Example:
        >>> import torch, torchkeep as tk
        >>> tk.load_bytes(tk.save_bytes({"w": torch.arange(3)}))["w"].tolist()
        [0, 1, 2]
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UsageError(f"tk.load_bytes takes bytes, got {type(data).__name__}; for a path use tk.load(path)")
    reader = _format.open_file(data)
    if verify:
        reader.verify()
    return _format.load_tree(reader, map_location=map_location)
