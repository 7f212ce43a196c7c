"""A sharded checkpoint's full (unsharded) state on one process: ``tk.load(DIR)`` and ``consolidate``."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from ...errors import CheckpointWriteError, CorruptCheckpointError, DistributedCheckpointError
from ...io import _format
from ...io._format import MapLocation
from ...io._storage import atomic_write
from .. import _info, _state
from .._state import CheckpointInfo
from ._api import rank_tree
from ._dcp import ShardReader, decode_bytes
from ._index import Index, read_index

__all__ = ["consolidate", "load_full"]


def _optimizer_to_ids(state: Any) -> Any:
    """FQN-keyed optimizer state (DCP's form) -> the integer-keyed form ``Optimizer.load_state_dict`` wants."""
    if not (isinstance(state, dict) and isinstance(state.get("param_groups"), list)):
        return state
    ids: dict[Any, int] = {}
    groups = []
    for group in state["param_groups"]:
        if not isinstance(group, dict):
            return state
        params = [ids.setdefault(p, len(ids)) for p in group.get("params", [])]
        groups.append({**group, "params": params})
    per_param = state.get("state", {})
    return {"state": {ids.get(k, k): v for k, v in per_param.items()}, "param_groups": groups}


def load_full(path: str | os.PathLike[str], *, map_location: MapLocation = None, verify: bool = True) -> dict[str, Any]:
    """Read a sharded checkpoint on one process into a full, unsharded tree (no process group needed).

    The result has the shape of a single-file checkpoint tree: ``{"model": state_dict,
    "optimizer": state_dict, ..., "__extra__": ..., "__rng__": ...}`` (rank 0's extra and RNG).
    Sharded tensors are assembled whole; optimizer state is keyed by parameter index, as
    ``torch.optim.Optimizer.state_dict()`` does. ``tk.load(DIR)`` calls this.

    Example:
        >>> import torch, tempfile, os
        >>> from torchkeep import distributed
        >>> path = os.path.join(tempfile.mkdtemp(), "step-1")
        >>> _ = distributed.save_checkpoint(path, model=torch.nn.Linear(2, 2))
        >>> sorted(distributed.load_full(path)["model"])
        ['bias', 'weight']
    """
    index = read_index(path)
    reader = ShardReader(index, verify=verify)
    md = index.metadata
    refs = md.storage_data
    by_fqn: dict[str, list[Any]] = {}
    for idx, ref in refs.items():
        by_fqn.setdefault(idx.fqn, []).append((idx, ref))
    tree: dict[str, Any] = {}
    for fqn, entry in md.state_dict_metadata.items():
        stored = by_fqn.get(fqn, [])
        if isinstance(entry, TensorStorageMetadata):
            value: Any = _assemble(index, reader, fqn, entry, stored, map_location)
        else:
            if len(stored) != 1:
                raise DistributedCheckpointError(f"{index.path}: {fqn!r} is stored {len(stored)} times, expected once")
            value = decode_bytes(reader._tensor(stored[0][1]).numpy().tobytes(), fqn)
        set_element(tree, md.planner_data.get(fqn, (fqn,)), value)
    for name, kind in index.checkpoint.get("objects", {}).items():
        if kind == "optimizer" and name in tree:
            tree[name] = _optimizer_to_ids(tree[name])
    rank0 = rank_tree(reader, 0, map_location)
    for key in (_state.EXTRA_KEY, _state.RNG_KEY):
        if key in rank0:
            tree[key] = rank0[key]
    return tree


def _assemble(
    index: Index,
    reader: ShardReader,
    fqn: str,
    entry: TensorStorageMetadata,
    stored: list[Any],
    map_location: MapLocation,
) -> torch.Tensor:
    size = tuple(entry.size)
    if len(stored) == 1 and tuple(reader._tensor(stored[0][1]).shape) == size:
        t = reader._tensor(stored[0][1])
    else:
        # sizes come from the index: check the shards hold that many elements before allocating
        held = sum(_numel(reader.shard(ref.rank).info(ref.tensor).shape) for _idx, ref in stored)
        if held != _numel(size):
            raise CorruptCheckpointError(
                f"{index.path}: the shards hold {held} elements of {fqn!r}, but the index says it has "
                f"{_numel(size)} ({list(size)}); a shard is missing or the index does not belong to them",
                path=index.path,
                tensor=fqn,
                reason="chunks do not cover the tensor",
            )
        t = torch.empty(size, dtype=entry.properties.dtype)
        covered = 0
        for idx, ref in stored:
            chunk = reader._tensor(ref)
            offsets = tuple(idx.offset) if idx.offset is not None else (0,) * len(size)
            dst = t
            try:
                for dim, (o, n) in enumerate(zip(offsets, chunk.shape, strict=True)):
                    dst = dst.narrow(dim, o, n)
                dst.copy_(chunk)
            except (RuntimeError, ValueError, IndexError) as exc:
                raise CorruptCheckpointError(
                    f"{index.path}: a chunk of {fqn!r} of shape {list(chunk.shape)} at {list(offsets)} does not "
                    f"fit the tensor's shape {list(size)} ({exc})",
                    path=index.path,
                    tensor=fqn,
                    reason="chunk outside tensor",
                ) from None
            covered += chunk.numel()
        if covered != t.numel():
            raise DistributedCheckpointError(
                f"{index.path}: the shards cover {covered} of the {t.numel()} elements of {fqn!r}; a shard is missing"
            )
    device = _format.resolve_device(map_location, "cpu")
    return t if device is None or device.type == "cpu" else t.to(device)


def _numel(shape: Any) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def consolidate(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> CheckpointInfo:
    """Write a sharded checkpoint directory as one single-file torchkeep checkpoint.

    The file loads with :func:`torchkeep.load_checkpoint` into plain (unsharded) objects, and
    with :func:`torchkeep.load` or any safetensors reader. Runs on one process.

    Example:
        >>> import torch, tempfile, os, torchkeep as tk
        >>> from torchkeep import distributed
        >>> d = tempfile.mkdtemp()
        >>> _ = distributed.save_checkpoint(os.path.join(d, "step-1"), model=torch.nn.Linear(2, 2), step=1)
        >>> info = distributed.consolidate(os.path.join(d, "step-1"), os.path.join(d, "full.safetensors"))
        >>> tk.load_checkpoint(info.path, model=torch.nn.Linear(2, 2)).step
        1
    """
    index = read_index(src)
    tree = load_full(src)
    section = {k: v for k, v in index.checkpoint.items() if k != "sharded"}
    section["consolidated_from"] = {"path": index.path, "world_size": index.world_size}
    try:
        with atomic_write(dst) as f:
            size = _state.write_checkpoint(f, tree, section)
    except OSError as exc:
        if isinstance(exc, CheckpointWriteError):
            raise
        raise CheckpointWriteError(f"could not write {dst}: {exc}", path=os.fspath(dst)) from exc
    info = _info.info_from_section(os.fspath(dst), section, size)
    info.extra = tree.get(_state.EXTRA_KEY)
    return info
