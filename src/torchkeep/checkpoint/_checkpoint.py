"""``save_checkpoint`` / ``load_checkpoint``: one file per step, or a sharded directory.

A checkpoint is one torchkeep file whose tree is ``{object name: state_dict, ...}`` plus the
reserved ``__extra__`` and ``__rng__`` entries, so tensor names read ``model/net.0.weight`` and
``optimizer/state/0/exp_avg``. Everything a listing needs (epoch, step, metrics, object kinds,
environment) sits in the ``torchkeep.checkpoint`` header section, readable without touching data
(see :mod:`._state`); restoring is :mod:`._restore`. Under several ranks the same calls write
and read a sharded directory (:mod:`.sharded`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..io import _format
from ..io._format import MapLocation
from ..io._storage import atomic_write
from . import sharded
from ._restore import StateDiff, compare_state, restore_state
from ._state import (
    EXTRA_KEY,
    RNG_KEY,
    SECTION,
    CheckpointInfo,
    add_save_check,
    checkpoint_section,
    collect_state,
    decode_subtrees,
    environment,
    info_from_section,
    read_info,
    unwrap_model,
    write_checkpoint,
)

# The checkpoint API in one import; each re-exported name is defined in _state or _restore.
__all__ = [
    "EXTRA_KEY",
    "RNG_KEY",
    "SECTION",
    "CheckpointInfo",
    "StateDiff",
    "add_save_check",
    "checkpoint_section",
    "collect_state",
    "compare_state",
    "environment",
    "load_checkpoint",
    "read_info",
    "restore_state",
    "save_checkpoint",
    "unwrap_model",
    "write_checkpoint",
]


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
    file at ``path`` intact.

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
    if sharded.is_sharded_context(objects):  # DCP itself is imported only for sharded saves
        return sharded.save_checkpoint(path, epoch=epoch, step=step, metrics=metrics, extra=extra, rng=rng, **objects)
    tree, section = collect_state(objects, epoch=epoch, step=step, metrics=metrics, extra=extra, rng=rng, strict=strict)
    with atomic_write(path) as f:
        size = write_checkpoint(f, tree, section)
    info = info_from_section(os.fspath(path), section, size)
    info.extra = extra
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

    Example:
        >>> import torch, torchkeep as tk, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "c.safetensors")
        >>> _ = tk.save_checkpoint(path, model=torch.nn.Linear(2, 2), epoch=1)
        >>> tk.load_checkpoint(path, model=torch.nn.Linear(2, 2), map_location="cpu").epoch
        1
    """
    if os.path.isdir(path):  # a sharded checkpoint (directory) or an error saying what it is
        return sharded.load_checkpoint(
            path, map_location=map_location, strict=strict, rng=rng, verify=verify, **objects
        )
    reader = _format.open_file(path)
    info = read_info(reader, extra=False)  # restore_state fills in extra from the verified tree
    wanted = [*objects, EXTRA_KEY] + ([RNG_KEY] if rng else [])
    tree = decode_subtrees(reader, wanted, map_location=map_location, verify=verify)
    restore_state(tree, objects, info, strict=strict, rng=rng)
    return info
