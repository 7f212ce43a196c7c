"""The path-based entry points: ``tk.save`` / ``tk.load`` and ``save_checkpoint`` / ``load_checkpoint``.

Each goes through the checkpoint layouts (:mod:`torchkeep.checkpoint.layouts`): which layout a path has or a
save needs is decided there, in one place.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import IO, Any

from ..errors import UsageError
from ..io import _codec, _format
from ..io._format import MapLocation
from ..io._storage import atomic_write
from ._checkpoint import CheckpointInfo
from .layouts import SaveRequest, layout_at, layout_for_save, local_target

__all__ = ["consolidate", "load", "load_bytes", "load_checkpoint", "save", "save_bytes", "save_checkpoint"]

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
    storage, name = local_target(path)
    return layout_at(path).load_tree(storage, name, map_location=map_location, verify=verify, mmap=mmap)


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    epoch: int | None = None,
    step: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Any = None,
    rng: bool = True,
    strict: bool = False,
    **objects: Any,
) -> CheckpointInfo:
    """Save a training checkpoint: every named stateful object, progress, RNG and environment.

    ``objects`` are things with ``state_dict()``/``load_state_dict()`` (``model=``,
    ``optimizer=``, ``scheduler=``, ``scaler=``, your own classes). Wrapped models (DataParallel,
    DDP, ``torch.compile``) are saved unwrapped. The write is atomic: a crash leaves the previous
    file at ``path`` intact. Under a multi-rank process group the checkpoint is a sharded
    directory (a collective: call it on every rank).

    Every model is audited first (:func:`torchkeep.audit`'s attribute checks): a tensor kept
    outside its state dict (``self.t = torch.randn(...)`` instead of ``register_buffer``) would
    be lost, so it is a ``UserWarning`` naming it, or with ``strict=True`` an
    :class:`UnsupportedValueError` and nothing is written.

    Example:
        >>> import torch, torchkeep as tk, tempfile, os
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = torch.optim.Adam(model.parameters())
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.safetensors")
        >>> info = tk.save_checkpoint(path, model=model, optimizer=opt, epoch=5, extra={"update_steps": 7})
        >>> tk.load_checkpoint(path, model=model, optimizer=opt).extra["update_steps"]
        7
    """
    storage, name = local_target(path)
    request = SaveRequest(objects, epoch=epoch, step=step, metrics=metrics, extra=extra, rng=rng, strict=strict)
    info = layout_for_save(objects).begin_save(storage, name, request).commit()
    if not os.path.isdir(path):
        info.path = os.fspath(path)
    return info


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    map_location: MapLocation = None,
    strict: bool = True,
    rng: bool = True,
    verify: bool = True,
    **objects: Any,
) -> CheckpointInfo:
    """Restore named objects (and RNG state) from a checkpoint; return its :class:`CheckpointInfo`.

    Each keyword object gets ``load_state_dict`` with the state saved under the same name. With
    ``strict=True`` a model whose keys or shapes differ raises :class:`StateMismatchError`
    listing missing, unexpected and mis-shaped keys; ``strict=False`` loads what fits and reports
    the rest in the returned info. ``map_location`` applies to tensors handed to objects (models
    copy into their own parameters, so a CPU checkpoint loads into a GPU model and back).
    ``path`` may be a file (single or deduplicated step) or a sharded checkpoint directory.

    Example:
        >>> import torch, torchkeep as tk, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "c.safetensors")
        >>> _ = tk.save_checkpoint(path, model=torch.nn.Linear(2, 2), epoch=1)
        >>> tk.load_checkpoint(path, model=torch.nn.Linear(2, 2), map_location="cpu").epoch
        1
    """
    storage, name = local_target(path)
    layout = layout_at(path)
    info = layout.load(storage, name, objects, map_location=map_location, strict=strict, rng=rng, verify=verify)
    if layout.kind != "sharded":
        info.path = os.fspath(path)
    return info


def consolidate(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> CheckpointInfo | None:
    """Write a deduplicated step or a sharded directory as one standalone file.

    The result is a plain safetensors file (any safetensors tool reads it) that is also a
    torchkeep file: ``load_checkpoint``/``tk.load``/``load_model`` read it as they read ``src``.
    Returns its checkpoint info (None when ``src`` is not a training checkpoint).

    Example:
        >>> import torch, torchkeep as tk, tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> _ = tk.save_checkpoint(os.path.join(d, "a.safetensors"), model=torch.nn.Linear(2, 2), step=3)
        >>> tk.consolidate(os.path.join(d, "a.safetensors"), os.path.join(d, "b.safetensors")).step
        3
    """
    from .layouts import consolidate as consolidate_file

    if layout_at(src).kind == "sharded":
        from . import sharded

        return sharded.consolidate(src, dst)
    return consolidate_file(src, dst)


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
