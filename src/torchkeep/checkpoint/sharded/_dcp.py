"""DCP storage layer and planners that keep pickle out: safetensors shards + a JSON index.

Atomic commit, the same rule as single files (see :mod:`torchkeep.io._storage`):

1. The coordinator (rank 0) creates a temporary sibling directory ``.NAME.tmp-<12 hex>`` while
   DCP builds the global plan, and sends its name to every rank inside the plan.
2. Each rank streams its shard (``shard-RRRRR-of-WWWWW.safetensors``, a torchkeep file with a
   checksum per tensor) into it with the usual temporary-file + fsync + rename.
3. Only after DCP has gathered every rank's write results (so every shard is durable) does the
   coordinator write ``index.json`` — the commit marker — and rename the directory to ``NAME``.

A rank killed at any point before step 3 leaves only the temporary directory, which no reader
picks (its name is a temporary name) and :func:`torchkeep.distributed.sweep` removes. A directory without
``index.json`` is refused on load.

Non-tensor values (``param_groups``, scheduler counters, ...) are DCP "bytes" items. DCP's default
planners ``torch.save`` them and ``torch.load`` them back (pickle); here they are torchkeep files
in memory (the codec's typed JSON tree + tensors), stored as ``uint8`` tensors in the shard.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import shutil
from collections.abc import Mapping
from typing import Any

import torch
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from ...errors import CheckpointWriteError, CorruptCheckpointError, StateMismatchError
from ...io import _codec, _format
from ...io._storage import atomic_write, fsync_dir, temporary_name
from .. import _api
from ._index import INDEX_NAME, Index, ItemRef, build_index, shard_name

__all__ = [
    "RANK_KEY",
    "LoadPlanner_",
    "Opaque",
    "SavePlanner_",
    "ShardReader",
    "ShardWriter",
    "decode_bytes",
    "encode_bytes",
]

logger = logging.getLogger(__name__)

#: Per-rank state (RNG, extra) sits in each shard's tree under this key; tensor names start with it.
RANK_KEY = "__rank__"


def encode_bytes(obj: Any) -> bytes:
    """A non-tensor state value as a small in-memory torchkeep file (no pickle)."""
    enc = _codec.encode({"value": obj})  # wrapped: a bare None would read back as "no tree"
    buf = io.BytesIO()
    _format.write(buf, enc.tensors, tree=enc.tree)
    return buf.getvalue()


def decode_bytes(data: bytes, where: str) -> Any:
    """Inverse of :func:`encode_bytes`; checks the embedded checksums first."""
    try:
        reader = _format.open_file(data)
        reader.verify()
        tree = _api.load_tree(reader)
        if not isinstance(tree, dict) or "value" not in tree:
            raise CorruptCheckpointError("not an encoded state value", reason="bad value")
        return tree["value"]
    except CorruptCheckpointError as exc:
        raise CorruptCheckpointError(f"{where}: {exc}", path=where, reason=exc.reason) from None


class Opaque:
    """A value DCP must store whole, not walk into.

    DCP flattens nested dicts into ``a.b.c`` keys and turns every key into a string, so a
    scheduler's ``{3: 1}`` milestones would come back as ``{"3": 1}``. The state of objects other
    than modules and optimizers is wrapped in this, stored as one item, and comes back exact.
    """

    def __init__(self, value: Any) -> None:
        self.value = value


class SavePlanner_(DefaultSavePlanner):
    """DCP's default save planner (dedup, flattening, resharding metadata) minus ``torch.save``."""

    def transform_object(self, write_item: WriteItem, object: Any) -> Any:
        if write_item.type == WriteItemType.BYTE_IO:
            return io.BytesIO(encode_bytes(object.value if isinstance(object, Opaque) else object))
        return object


class LoadPlanner_(DefaultLoadPlanner):
    """DCP's default load planner minus ``torch.load``: bytes items are torchkeep-decoded."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        obj = decode_bytes(value.getvalue(), read_item.dest_index.fqn)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


@dataclasses.dataclass(frozen=True)
class _PlanData:
    """What the coordinator tells each rank: the shared temporary directory and the world size."""

    tmp_dir: str
    rank: int
    world_size: int
    final: str  # rank 0's target path: the one every rank reports


def _item_name(index: MetadataIndex, taken: Mapping[str, Any]) -> str:
    name = index.fqn
    if index.offset is not None and any(index.offset):
        name = f"{name}@{','.join(str(o) for o in index.offset)}"
    base, n = name, 1
    while name in taken or name == "__metadata__":
        name, n = f"{base}#{n}", n + 1
    return name


class ShardWriter(StorageWriter):
    """Writes one torchkeep shard per rank and, on the coordinator, the JSON index last.

    ``rank_tree`` is this rank's own state (RNG, extra) stored in its shard; ``section`` is the
    checkpoint section (epoch, step, metrics, ...) the coordinator puts in the index.
    """

    def __init__(self, path: str | os.PathLike[str], *, rank_tree: Any, section: dict[str, Any]) -> None:
        super().__init__()
        self.path = os.path.abspath(os.fspath(path))
        self.parent, self.name = os.path.split(self.path)
        self._rank_state = _codec.encode({RANK_KEY: rank_tree})
        self.section = section
        self.is_coordinator = False
        self.tmp_dir: str | None = None
        self.size_bytes: int | None = None

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        return None

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=self.path)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        if not os.path.isdir(self.parent):
            raise CheckpointWriteError(
                f"cannot write {self.path}: directory {self.parent} does not exist; create it first",
                path=self.path,
            )
        tmp = os.path.join(self.parent, temporary_name(self.name))
        os.mkdir(tmp)
        self.tmp_dir = tmp
        world = len(plans)
        return [dataclasses.replace(p, storage_data=_PlanData(tmp, r, world, self.path)) for r, p in enumerate(plans)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        data = plan.storage_data
        if not isinstance(data, _PlanData):  # pragma: no cover - plans come from prepare_global_plan
            raise CheckpointWriteError(f"{self.path}: the save plan carries no shard assignment", path=self.path)
        self.tmp_dir = data.tmp_dir
        self.path = data.final
        tensors: dict[str, torch.Tensor] = dict(self._rank_state.tensors)
        results: list[WriteResult] = []
        for item in plan.items:
            obj = planner.resolve_data(item)
            name = _item_name(item.index, tensors)
            if isinstance(obj, io.BytesIO):
                t = torch.frombuffer(bytearray(obj.getvalue()), dtype=torch.uint8)
            elif isinstance(obj, torch.Tensor):
                t = obj.detach()
            else:  # pragma: no cover - our planner resolves to tensors and BytesIO only
                raise CheckpointWriteError(f"{self.path}: cannot store {type(obj).__name__} for {item.index.fqn!r}")
            tensors[name] = t
            results.append(WriteResult(index=item.index, size_in_bytes=t.nbytes, storage_data=ItemRef(data.rank, name)))
        target = os.path.join(data.tmp_dir, shard_name(data.rank, data.world_size))
        with atomic_write(target) as f:
            _format.write(
                f,
                tensors,
                tree=self._rank_state.tree,
                sections={"shard": {"rank": data.rank, "world_size": data.world_size}},
            )
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        if self.tmp_dir is None:  # pragma: no cover - DCP always plans before finishing
            raise CheckpointWriteError(f"{self.path}: finish() before any data was written", path=self.path)
        refs: dict[MetadataIndex, ItemRef] = {}
        for rank_results in results:
            for r in rank_results:
                refs[r.index] = r.storage_data
        index = build_index(metadata, refs, len(results), self.section)
        with atomic_write(os.path.join(self.tmp_dir, INDEX_NAME)) as f:
            f.write(index)
        self._commit()

    def _commit(self) -> None:
        """Move the complete temporary directory to its name, replacing an older one last."""
        assert self.tmp_dir is not None
        old = None
        if os.path.lexists(self.path):
            old = os.path.join(self.parent, temporary_name(self.name))
            os.rename(self.path, old)
        os.rename(self.tmp_dir, self.path)
        fsync_dir(self.parent)
        if old is not None:  # what was there: an older sharded step, or a single-file checkpoint
            if os.path.isdir(old):
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.unlink(old)
        self.size_bytes = sum(e.stat().st_size for e in os.scandir(self.path) if e.is_file())
        self.tmp_dir = None

    def abort(self) -> None:
        """Remove this save's temporary directory (after a failure); the previous step is untouched."""
        if self.is_coordinator and self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.tmp_dir = None

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return True


def _narrow(t: torch.Tensor, offsets: torch.Size, lengths: torch.Size) -> torch.Tensor:
    for dim, (o, n) in enumerate(zip(offsets, lengths, strict=True)):
        if o != 0 or n != t.size(dim):
            t = t.narrow(dim, o, n)
    return t


class ShardReader(StorageReader):
    """Reads the items a rank needs from the shard files named by a validated :class:`Index`.

    Each shard is mapped, not read; only the tensors a rank's plan touches are checksummed
    (``verify=True``) and copied into its (possibly resharded) destination.
    """

    def __init__(self, index: Index, *, verify: bool = True) -> None:
        super().__init__()
        self.index = index
        self.verify = verify
        self._readers: dict[int, _format.Reader] = {}
        self._verified: set[tuple[int, str]] = set()

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        return None

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return self.index.metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        return None

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def shard(self, rank: int) -> _format.Reader:
        """The opened shard file of ``rank``."""
        if rank not in self._readers:
            path = self.index.shard_path(rank)
            reader = _format.open_file(path)
            if reader.section("shard") != {"rank": rank, "world_size": self.index.world_size}:
                raise CorruptCheckpointError(
                    f"{path}: this file is not shard {rank} of {self.index.world_size} (its header says "
                    f"{reader.section('shard')}); the directory mixes files from different saves",
                    path=path,
                    reason="shard mismatch",
                )
            self._readers[rank] = reader
        return self._readers[rank]

    def _tensor(self, ref: ItemRef) -> torch.Tensor:
        reader = self.shard(ref.rank)
        if self.verify and (ref.rank, ref.tensor) not in self._verified:
            reader.verify([ref.tensor])
            self._verified.add((ref.rank, ref.tensor))
        return reader.tensor(ref.tensor)

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        refs: dict[MetadataIndex, ItemRef] = self.index.metadata.storage_data
        for item in plan.items:
            ref = refs.get(item.storage_index)
            if ref is None:
                raise CorruptCheckpointError(
                    f"{self.index.path}: the index lists {item.storage_index.fqn!r} but says no shard holds "
                    f"its chunk at {list(item.storage_index.offset or [])}",
                    path=self.index.path,
                    tensor=item.storage_index.fqn,
                    reason="missing chunk",
                )
            src = self._tensor(ref)
            if item.type == LoadItemType.BYTE_IO:
                planner.load_bytes(item, io.BytesIO(src.numpy().tobytes()))
                continue
            src = _narrow(src, item.storage_offsets, item.lengths)
            dst = planner.resolve_tensor(item).detach()
            if dst.shape != src.shape:
                raise StateMismatchError(
                    f"{self.index.path}: {item.dest_index.fqn}: the checkpoint chunk has shape "
                    f"{tuple(src.shape)} but the destination slice has {tuple(dst.shape)}"
                )
            dst.copy_(src)
            planner.commit_tensor(item, dst)
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return True
