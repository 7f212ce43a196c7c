"""The JSON index of a sharded checkpoint: DCP's metadata without pickle.

``torch.distributed.checkpoint`` describes a checkpoint with a ``Metadata`` object (per state
dict key: dtype, global size and the chunks each rank wrote) and pickles it to ``.metadata``.
Here the same facts are written as JSON in ``index.json`` and rebuilt on load from plain
values only. Every field is treated as hostile: file names must be the shard names the index
itself lists, dtypes must name real torch dtypes, and every chunk must lie inside its tensor.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

from ...errors import CheckpointNotFoundError, CorruptCheckpointError, FormatVersionError
from ...io._dtypes import LOGICAL_DTYPES, dtype_name
from .. import _info

__all__ = [
    "INDEX_NAME",
    "INDEX_VERSION",
    "Index",
    "ItemRef",
    "build_index",
    "read_index",
    "shard_name",
]

INDEX_NAME = "index.json"
INDEX_FORMAT = "torchkeep.sharded"
INDEX_VERSION = 1
MAX_INDEX_BYTES = 256 * 1024 * 1024
_MAX_PATH_PARTS = 64
#: List slots a load may create beyond the entries the index lists (DCP writes one entry per
#: element of a list it walks into; an element that is an empty dict has none).
_LIST_SLACK = 1024
_SHARD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})\.safetensors$")


def shard_name(rank: int, world_size: int) -> str:
    """The file name of ``rank``'s shard: ``shard-00001-of-00002.safetensors``."""
    return f"shard-{rank:05d}-of-{world_size:05d}.safetensors"


@dataclass(frozen=True)
class ItemRef:
    """Where one DCP item lives: the writing rank's shard file and the tensor name in it."""

    rank: int
    tensor: str


@dataclass
class Index:
    """A parsed, validated ``index.json``.

    Attributes:
        path: the checkpoint directory.
        world_size: how many ranks wrote it (one shard file each).
        files: shard file names, by rank.
        checkpoint: the checkpoint section (epoch, step, metrics, objects, env, created_at).
        metadata: DCP ``Metadata`` rebuilt from JSON (``storage_data`` maps to :class:`ItemRef`).
    """

    path: str
    world_size: int
    files: list[str]
    checkpoint: dict[str, Any]
    metadata: Metadata

    def shard_path(self, rank: int) -> str:
        """The filesystem path of ``rank``'s shard file."""
        return os.path.join(self.path, self.files[rank])


def build_index(
    metadata: Metadata, refs: dict[MetadataIndex, ItemRef], world_size: int, checkpoint: dict[str, Any]
) -> bytes:
    """Serialize DCP ``metadata`` plus where each item lives as ``index.json`` bytes."""
    entries: dict[str, Any] = {}
    for fqn, md in metadata.state_dict_metadata.items():
        if isinstance(md, TensorStorageMetadata):
            entries[fqn] = {
                "kind": "tensor",
                "dtype": dtype_name(md.properties.dtype),
                "size": list(md.size),
                "requires_grad": bool(md.properties.requires_grad),
                "chunks": [[list(c.offsets), list(c.sizes)] for c in md.chunks],
            }
        elif isinstance(md, BytesStorageMetadata):
            entries[fqn] = {"kind": "bytes"}
        else:  # pragma: no cover - DCP has only these two kinds
            raise TypeError(f"unknown DCP storage metadata {type(md).__name__} for {fqn!r}")
    planner_data = metadata.planner_data if isinstance(metadata.planner_data, dict) else {}
    storage = [
        [idx.fqn, None if idx.offset is None else list(idx.offset), idx.index, ref.rank, ref.tensor]
        for idx, ref in refs.items()
    ]
    doc = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "world_size": world_size,
        "files": [shard_name(r, world_size) for r in range(world_size)],
        "checkpoint": checkpoint,
        "dcp": {
            "version": metadata.version,
            "state_dict": entries,
            "planner_data": {k: list(v) for k, v in planner_data.items()},
            "storage": storage,
        },
    }
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _bad(path: str, msg: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"{path}: {msg}", path=path, reason=msg)


def _ints(x: Any) -> bool:
    return isinstance(x, list) and len(x) <= 64 and all(type(v) is int and v >= 0 for v in x)


def _dtype(name: Any, where: str) -> torch.dtype:
    # A fixed table, never getattr(torch, name): torch imports submodules for some names
    # ("_inductor", "onnx"), and a file must not choose what gets imported.
    dt = LOGICAL_DTYPES.get(name) if isinstance(name, str) else None
    if dt is None:
        raise _bad(where, f"unknown dtype {str(name)[:40]!r}")
    return dt


def read_index(directory: str | os.PathLike[str]) -> Index:
    """Read and validate the index of the sharded checkpoint in ``directory``.

    Raises:
        CheckpointNotFoundError: no directory, or no ``index.json`` in it (a save that never
            committed: a rank died mid-write). Such a directory is never restored.
        CorruptCheckpointError: the index is malformed; the message says which field.
        FormatVersionError: written by a newer torchkeep.

    Example:
        >>> import tempfile
        >>> try:
        ...     read_index(tempfile.mkdtemp())
        ... except CheckpointNotFoundError as exc:
        ...     print("not committed")
        not committed
    """
    root = os.fspath(directory)
    path = os.path.join(root, INDEX_NAME)
    if not os.path.isdir(root):
        raise CheckpointNotFoundError(f"{root}: no such sharded checkpoint directory", path=root)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_INDEX_BYTES + 1)
    except FileNotFoundError:
        if not any(_SHARD_RE.match(n.lstrip(".").split(".tmp-")[0]) for n in os.listdir(root)):
            raise CheckpointNotFoundError(
                f"{root}: is a directory with no {INDEX_NAME} and no shard files, so it is not a torchkeep "
                "sharded checkpoint; pass a checkpoint file or a sharded checkpoint directory",
                path=root,
            ) from None
        raise CheckpointNotFoundError(
            f"{root}: no {INDEX_NAME}, so this sharded checkpoint was never committed (a rank stopped "
            "before the save finished); it is ignored. Restore an earlier step, or delete the directory.",
            path=root,
        ) from None
    if len(raw) > MAX_INDEX_BYTES:
        raise _bad(path, f"index is over the {MAX_INDEX_BYTES}-byte limit")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _bad(path, f"index is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise _bad(path, f"not a torchkeep sharded-checkpoint index (format must be {INDEX_FORMAT!r})")
    version = doc.get("version")
    if version != INDEX_VERSION:
        if type(version) is int and version > INDEX_VERSION:
            raise FormatVersionError(
                f"{path}: sharded index version {version}, but this torchkeep reads version {INDEX_VERSION}; "
                "upgrade with `pip install -U torchkeep`",
                path=path,
                found=str(version),
                supported=str(INDEX_VERSION),
            )
        raise _bad(path, f"unknown index version {version!r}")
    world = doc.get("world_size")
    files = doc.get("files")
    if type(world) is not int or not 1 <= world <= 99999:
        raise _bad(path, f"world_size {world!r} is not a positive int")
    if not isinstance(files, list) or files != [shard_name(r, world) for r in range(world)]:
        raise _bad(path, f"files must be exactly the {world} shard names shard-NNNNN-of-{world:05d}.safetensors")
    checkpoint = doc.get("checkpoint")
    if not isinstance(checkpoint, dict):
        raise _bad(path, "checkpoint section is not an object")
    _info.info_from_section(path, checkpoint, None)  # the same field checks as a single file's header
    dcp = doc.get("dcp")
    if not isinstance(dcp, dict):
        raise _bad(path, "dcp section is not an object")
    metadata = _parse_metadata(dcp, world, path, root)
    return Index(root, world, files, checkpoint, metadata)


def _parse_metadata(dcp: dict[str, Any], world: int, path: str, root: str) -> Metadata:
    entries = dcp.get("state_dict")
    if not isinstance(entries, dict):
        raise _bad(path, "dcp.state_dict is not an object")
    sd_meta: dict[str, TensorStorageMetadata | BytesStorageMetadata] = {}
    for fqn, e in entries.items():
        where = f"{path}: entry {fqn!r}"
        if not isinstance(e, dict):
            raise _bad(where, "is not an object")
        if e.get("kind") == "bytes":
            sd_meta[fqn] = BytesStorageMetadata()
            continue
        if e.get("kind") != "tensor":
            raise _bad(where, f"kind must be 'tensor' or 'bytes', got {e.get('kind')!r}")
        size: Any = e.get("size")
        chunks: Any = e.get("chunks")
        if not _ints(size) or not isinstance(chunks, list):
            raise _bad(where, "size must be a list of ints and chunks a list")
        parsed = []
        for c in chunks:
            if not (isinstance(c, list) and len(c) == 2 and _ints(c[0]) and _ints(c[1])):
                raise _bad(where, f"chunk {c!r} is not [offsets, sizes]")
            off, sz = c
            if (
                len(off) != len(size)
                or len(sz) != len(size)
                or any(o + s > d for o, s, d in zip(off, sz, size, strict=True))
            ):
                raise _bad(where, f"chunk offsets {off} sizes {sz} fall outside the tensor size {size}")
            parsed.append(ChunkStorageMetadata(offsets=torch.Size(off), sizes=torch.Size(sz)))
        props = TensorProperties(dtype=_dtype(e.get("dtype"), where), requires_grad=bool(e.get("requires_grad")))
        sd_meta[fqn] = TensorStorageMetadata(properties=props, size=torch.Size(size), chunks=parsed)
    planner_data = dcp.get("planner_data")
    if not isinstance(planner_data, dict):
        raise _bad(path, "dcp.planner_data is not an object")
    mappings: dict[str, tuple[str | int, ...]] = {}
    # Loading rebuilds each list up to its largest index: bound the slots by what the index holds.
    max_slots = len(planner_data) + _LIST_SLACK
    lists: dict[tuple[Any, ...], int] = {}
    for fqn, parts in planner_data.items():
        if not (
            isinstance(parts, list)
            and 0 < len(parts) <= _MAX_PATH_PARTS
            and isinstance(parts[0], str)
            and all(isinstance(p, str) or (type(p) is int and 0 <= p < max_slots) for p in parts)
        ):
            raise _bad(
                path,
                f"dcp.planner_data[{fqn!r}] must be a list of at most {_MAX_PATH_PARTS} path parts "
                f"(strings, or list indices below {max_slots}) starting with a name",
            )
        for i, p in enumerate(parts):
            if type(p) is int:
                lists[tuple(parts[:i])] = max(lists.get(tuple(parts[:i]), 0), p + 1)
        mappings[fqn] = tuple(parts)
    # DCP rebuilds the tree by walking these paths: a container both indexed (list) and keyed
    # (dict), or a value that is also a container, would fail inside torch with a raw error.
    child_kind: dict[tuple[Any, ...], type] = {}
    for parts in mappings.values():
        for i in range(1, len(parts)):
            prefix = parts[:i]
            if child_kind.setdefault(prefix, type(parts[i])) is not type(parts[i]):
                raise _bad(
                    path, f"dcp.planner_data uses {list(prefix)} both as a list and as a dict; the index is damaged"
                )
    both = set(mappings.values()) & child_kind.keys()
    if both:
        raise _bad(
            path,
            f"dcp.planner_data uses {list(sorted(both, key=lambda parts: len(parts))[0])} both as a value and as a container",
        )
    if sum(lists.values()) > max_slots:
        raise _bad(
            path,
            f"dcp.planner_data's list indices make {sum(lists.values())} list slots for {len(planner_data)} entries "
            f"(at most {max_slots}); the index is damaged",
        )
    storage = dcp.get("storage")
    if not isinstance(storage, list):
        raise _bad(path, "dcp.storage is not a list")
    refs: dict[MetadataIndex, ItemRef] = {}
    used: set[ItemRef] = set()
    for s in storage:
        ok = (
            isinstance(s, list)
            and len(s) == 5
            and isinstance(s[0], str)
            and (s[1] is None or _ints(s[1]))
            and (s[2] is None or type(s[2]) is int)
            and type(s[3]) is int
            and 0 <= s[3] < world
            and isinstance(s[4], str)
        )
        if not ok or s[0] not in sd_meta:
            raise _bad(path, f"dcp.storage entry {str(s)[:200]} is malformed or names an unknown key")
        md = sd_meta[s[0]]
        offsets = [list(c.offsets) for c in md.chunks] if isinstance(md, TensorStorageMetadata) else [None]
        if s[1] not in offsets and not (s[1] is None and offsets == [[0] * len(offsets[0] or [])]):
            raise _bad(path, f"dcp.storage entry for {s[0]!r} has offsets {s[1]} that match none of its chunks")
        idx = MetadataIndex(fqn=s[0], offset=None if s[1] is None else torch.Size(s[1]), index=s[2])
        ref = ItemRef(rank=s[3], tensor=s[4])
        # DCP writes each chunk once, to its own tensor: one stored tensor behind several chunks
        # or keys would let a small shard fill a tensor many times its size.
        if ref in used:
            raise _bad(path, f"dcp.storage uses tensor {s[4][:80]!r} of shard {s[3]} more than once")
        used.add(ref)
        refs[idx] = ref
    version = dcp.get("version")
    return Metadata(
        state_dict_metadata=dict(sd_meta),
        planner_data=mappings,
        storage_data=refs,
        storage_meta=StorageMeta(checkpoint_id=root),
        version=version if isinstance(version, str) else None,
    )
