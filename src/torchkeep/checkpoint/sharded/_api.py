"""Sharded training checkpoints: save and load through DCP with torchkeep storage.

Models and optimizers go through ``get_state_dict``/``set_state_dict``
(``torch.distributed.checkpoint.state_dict``), which gives DDP, FSDP2 (``fully_shard``) and
plain modules one key space (no ``module.`` prefixes, optimizer state keyed by parameter name),
so a checkpoint written by N ranks loads on M ranks, sharded or not, and on one process.
Other stateful objects (schedulers, scalers, your classes) are saved as their ``state_dict()``.
Each rank keeps its own RNG state and ``extra`` in its own shard and gets them back on load.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
from torch.distributed.checkpoint.state_dict_loader import load as _dcp_load
from torch.distributed.checkpoint.state_dict_saver import AsyncSaveResponse, _save_state_dict
from torch.distributed.checkpoint.state_dict_saver import async_save as _dcp_async_save
from torch.distributed.checkpoint.state_dict_saver import save as _dcp_save
from torch.utils._pytree import tree_map_only

from ...errors import (
    CorruptCheckpointError,
    DistributedCheckpointError,
    MissingObjectError,
    StateMismatchError,
    TorchkeepError,
)
from ...io import _codec
from ...io._format import MapLocation
from .. import _restore, _state
from .._info import info_from_section
from .._state import CheckpointInfo
from .._state_io import check_rng_state
from ._dcp import RANK_KEY, LoadPlanner_, Opaque, SavePlanner_, ShardReader, ShardWriter
from ._index import Index, read_index

__all__ = ["async_save_checkpoint", "load_checkpoint", "rank_tree", "save_checkpoint"]

logger = logging.getLogger(__name__)


def _group_info(process_group: dist.ProcessGroup | None) -> tuple[bool, int, int]:
    """(use collectives, rank, world size)."""
    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(process_group), dist.get_world_size(process_group)
    return False, 0, 1


def _save(state: dict[str, Any], writer: ShardWriter, group: dist.ProcessGroup | None, use_dist: bool) -> None:
    if use_dist:
        _dcp_save(state, storage_writer=writer, planner=SavePlanner_(), process_group=group)
    else:  # the public entry point warns on every single-process call, which is the intent here
        _save_state_dict(state, storage_writer=writer, planner=SavePlanner_(), no_dist=True)


_single_executor: ThreadPoolExecutor | None = None


def _save_in_background(state: dict[str, Any], writer: ShardWriter) -> Future[Any]:
    """Single-process async save: copy tensors now, write them on a background thread."""
    global _single_executor
    staged = tree_map_only(torch.Tensor, lambda t: t.detach().to("cpu", copy=True), state)
    if _single_executor is None:
        _single_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torchkeep-sharded-save")
    return _single_executor.submit(_save, staged, writer, None, False)


def _owner(name: str, opt: torch.optim.Optimizer, modules: Mapping[str, torch.nn.Module]) -> torch.nn.Module:
    """The module whose parameters an optimizer updates (DCP names optimizer state by them)."""
    wanted = {id(p) for g in opt.param_groups for p in g["params"]}
    for module in modules.values():
        if wanted <= {id(p) for p in module.parameters()}:
            return module
    raise DistributedCheckpointError(
        f"{name}= updates parameters that belong to none of the modules passed ({sorted(modules)}); "
        "pass the model it optimizes alongside it, e.g. save_checkpoint(path, model=model, optimizer=opt)"
    )


def _state_dicts(objects: Mapping[str, Any], *, template: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """Each object's state in DCP's key space (``template``: the structure a load fills), and its kind."""
    modules = {n: o for n, o in objects.items() if isinstance(o, torch.nn.Module)}
    state: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    for name, obj in objects.items():
        _state.check_stateful(name, obj)
        kinds[name] = _state.object_kind(_state.unwrap_model(obj) if isinstance(obj, torch.nn.Module) else obj)
        if isinstance(obj, torch.nn.Module):
            state[name] = get_model_state_dict(obj)
        elif isinstance(obj, torch.optim.Optimizer):
            state[name] = get_optimizer_state_dict(_owner(name, obj, modules), obj)
        elif template:
            state[name] = Opaque(None)  # filled whole by the load
        else:
            state[name] = Opaque(obj.state_dict())
    return state, kinds


def _unwrap(failure: Any) -> BaseException:
    """DCP stores each rank's failure as ``(exception, traceback frames)``."""
    if isinstance(failure, tuple) and failure and isinstance(failure[0], BaseException):
        return failure[0]
    return failure if isinstance(failure, BaseException) else DistributedCheckpointError(str(failure))


def _translate(exc: BaseException, what: str, path: str) -> BaseException:
    """DCP wraps each rank's failure; surface ours (they say what to do) or explain DCP's."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict):
        for failure in failures.values():
            inner = _unwrap(failure)
            if isinstance(inner, TorchkeepError):
                return inner
            if isinstance(inner, RuntimeError) and "Missing key in checkpoint" in str(inner):
                return StateMismatchError(
                    f"{path}: {inner}. The objects passed hold keys the checkpoint lacks; pass strict=False "
                    "to load what is there"
                )
        exc = _unwrap(next(iter(failures.values()), exc))
    if isinstance(exc, TorchkeepError):
        return exc
    return DistributedCheckpointError(
        f"{what} {path} failed: {type(exc).__name__}: {exc}. Nothing was committed; earlier checkpoints are intact."
        if what == "saving"
        else f"{what} {path} failed: {type(exc).__name__}: {exc}"
    )


def _prepare_save(
    path: str | os.PathLike[str],
    objects: Mapping[str, Any],
    epoch: int | None,
    step: int | None,
    metrics: Mapping[str, Any] | None,
    extra: Any,
    rng: bool,
    annotations: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], ShardWriter]:
    state, kinds = _state_dicts(objects)
    rank_tree, section = _state.collect_state({}, epoch=epoch, step=step, metrics=metrics, extra=extra, rng=rng)
    section["objects"] = kinds
    section["sharded"] = True
    section.update(annotations or {})
    return state, ShardWriter(path, rank_tree=rank_tree, section=section)


def _info(path: str, section: dict[str, Any], size: int | None, extra: Any) -> CheckpointInfo:
    info = info_from_section(path, section, size)
    info.extra = extra
    return info


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    epoch: int | None = None,
    step: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Any = None,
    rng: bool = True,
    process_group: dist.ProcessGroup | None = None,
    annotations: Mapping[str, Any] | None = None,
    **objects: Any,
) -> CheckpointInfo:
    """Save a sharded checkpoint directory: one shard per rank, ``index.json`` written last.

    Call it on every rank (it is a collective). :func:`torchkeep.save_checkpoint` calls it for
    you when a process group with more than one rank is initialized. Without a process group it
    writes a one-shard checkpoint. Each rank's RNG state and ``extra`` go into its own shard.
    ``annotations`` are extra JSON keys for the index's checkpoint section (the checkpoint
    manager records its monitor there).

    Raises:
        CheckpointWriteError: the save failed on some rank; nothing at ``path`` changed.
        DistributedCheckpointError: DCP failed (the message names the rank's error).

    Example:
        >>> import torch, tempfile, os
        >>> from torchkeep import distributed
        >>> model = torch.nn.Linear(4, 2)
        >>> path = os.path.join(tempfile.mkdtemp(), "step-10")
        >>> info = distributed.save_checkpoint(path, model=model, step=10)
        >>> sorted(os.listdir(path))
        ['index.json', 'shard-00000-of-00001.safetensors']
    """
    use_dist, _rank, _world = _group_info(process_group)
    state, writer = _prepare_save(path, objects, epoch, step, metrics, extra, rng, annotations)
    try:
        _save(state, writer, process_group, use_dist)
    except (CheckpointException, Exception) as exc:  # a peer's death surfaces as a gloo RuntimeError
        writer.abort()
        raise _translate(exc, "saving", writer.path) from exc
    size = sum(e.stat().st_size for e in os.scandir(writer.path) if e.is_file())
    return _info(writer.path, writer.section, size, extra)


_async_groups: dict[int, dist.ProcessGroup] = {}
_async_lock = threading.Lock()


def _async_group(process_group: dist.ProcessGroup | None) -> dist.ProcessGroup | None:
    """A private gloo group for background saves, so they never interleave with training collectives."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    key = id(process_group)
    with _async_lock:
        if key not in _async_groups:
            ranks = None if process_group is None else dist.get_process_group_ranks(process_group)
            _async_groups[key] = dist.new_group(ranks=ranks, backend="gloo")
        return _async_groups[key]


def async_save_checkpoint(
    path: str | os.PathLike[str],
    *,
    epoch: int | None = None,
    step: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Any = None,
    rng: bool = True,
    process_group: dist.ProcessGroup | None = None,
    annotations: Mapping[str, Any] | None = None,
    **objects: Any,
) -> Future[CheckpointInfo]:
    """Start a sharded save in the background (``dcp.async_save``); returns a Future of its info.

    State is staged to CPU memory before this returns, so training may go on and change the
    model at once. The shards are written by a background thread; ``index.json`` is still
    written last, so until ``future.result()`` returns the step does not exist for readers.
    Call it on every rank; the first call creates a private gloo group (a collective).

    Example:
        >>> import torch, tempfile, os
        >>> from torchkeep import distributed
        >>> path = os.path.join(tempfile.mkdtemp(), "step-1")
        >>> fut = distributed.async_save_checkpoint(path, model=torch.nn.Linear(2, 2), step=1)
        >>> fut.result().step
        1
    """
    use_dist, _rank, _world = _group_info(process_group)
    state, writer = _prepare_save(path, objects, epoch, step, metrics, extra, rng, annotations)
    group = _async_group(process_group) if use_dist else None
    try:
        if use_dist:
            response = _dcp_async_save(state, storage_writer=writer, planner=SavePlanner_(), process_group=group)
        else:
            response = _save_in_background(state, writer)
    except (CheckpointException, Exception) as exc:  # a peer's death surfaces as a gloo RuntimeError
        writer.abort()
        raise _translate(exc, "saving", writer.path) from exc
    upload: Future[Any] = response.upload_completion if isinstance(response, AsyncSaveResponse) else response
    out: Future[CheckpointInfo] = Future()

    def done(fut: Future[Any]) -> None:
        exc = fut.exception()
        if exc is not None:
            writer.abort()
            out.set_exception(_translate(exc, "saving", writer.path))
        else:
            out.set_result(_info(writer.path, writer.section, writer.size_bytes, extra))

    upload.add_done_callback(done)
    return out


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    map_location: MapLocation = None,
    strict: bool = True,
    rng: bool = True,
    verify: bool = True,
    process_group: dist.ProcessGroup | None = None,
    **objects: Any,
) -> CheckpointInfo:
    """Restore objects from a sharded checkpoint, resharding to this run's layout.

    Works on any number of ranks (a collective: call it on every rank), and on one process
    without a process group. Modules and optimizers may be plain, DDP or FSDP2
    (``fully_shard``): each rank reads only the chunks it needs. Each rank gets back the RNG
    state and ``extra`` that the same rank saved; a rank the saving run did not have keeps its
    RNG and gets rank 0's ``extra``. ``map_location`` applies to ``extra`` (objects copy into
    their own tensors, wherever they live).

    Raises:
        CheckpointNotFoundError: no committed checkpoint at ``path`` (no ``index.json``).
        CorruptCheckpointError: a shard or the index is damaged (names the file and tensor).
        MissingObjectError: an object asked for was not saved.
        StateMismatchError: keys or shapes differ (``strict=True``).

    Example:
        >>> import torch, tempfile, os
        >>> from torchkeep import distributed
        >>> path = os.path.join(tempfile.mkdtemp(), "step-1")
        >>> _ = distributed.save_checkpoint(path, model=torch.nn.Linear(2, 2), epoch=3)
        >>> distributed.load_checkpoint(path, model=torch.nn.Linear(2, 2)).epoch
        3
    """
    index = read_index(path)
    info = info_from_section(index.path, index.checkpoint, None)
    info.size_bytes = sum(os.path.getsize(index.shard_path(r)) for r in range(index.world_size))
    available = sorted(info.objects)
    for name in objects:
        if name not in info.objects:
            raise MissingObjectError(
                f"{index.path}: the checkpoint holds no {name!r}; it holds {available}. "
                f"Pass only those names, or save {name}= when writing the checkpoint.",
                name=name,
                available=available,
            )
    state, kinds = _state_dicts(objects, template=True)
    for name, kind in kinds.items():
        if info.objects[name] != kind:
            raise StateMismatchError(
                f"{index.path}: {name}= holds the state of a {info.objects[name]}, but a {kind} was passed; "
                "pass the matching object"
            )
    use_dist, rank, _world = _group_info(process_group)
    reader = ShardReader(index, verify=verify)
    # This rank's own state (RNG, extra) is decoded and checked before DCP writes into any object.
    rank_state = _rank_state(index, reader, rank, map_location=map_location)
    try:
        planner = LoadPlanner_(allow_partial_load=not strict)
        if use_dist:
            _dcp_load(state, storage_reader=reader, planner=planner, process_group=process_group)
        else:  # the public entry point warns on every single-process call, which is the intent here
            _load_state_dict(state, storage_reader=reader, planner=planner, no_dist=True)
    except (CheckpointException, Exception) as exc:
        raise _translate(exc, "loading", index.path) from exc
    _apply(objects, state, strict, info)
    _restore.restore_state(rank_state, {}, info, strict=True, rng=rng and rank < index.world_size)
    return info


def _apply(objects: Mapping[str, Any], state: Mapping[str, Any], strict: bool, info: CheckpointInfo) -> None:
    modules = {n: o for n, o in objects.items() if isinstance(o, torch.nn.Module)}
    options = StateDictOptions(strict=strict)
    for name, obj in objects.items():
        if isinstance(obj, torch.nn.Module):
            result = set_model_state_dict(obj, state[name], options=options)
            if result.missing_keys:
                info.missing_keys[name] = list(result.missing_keys)
            if result.unexpected_keys:
                info.unexpected_keys[name] = list(result.unexpected_keys)
        elif isinstance(obj, torch.optim.Optimizer):
            set_optimizer_state_dict(_owner(name, obj, modules), obj, state[name], options=options)
        else:
            obj.load_state_dict(state[name])


def rank_tree(reader: ShardReader, rank: int, map_location: MapLocation) -> Any:
    """One rank's own entries (its RNG state and ``extra``), decoded from its shard; {} if none.

    Example:
        >>> rank_tree.__name__  # needs a sharded checkpoint on disk; see tests/distributed
        'rank_tree'
    """
    shard = reader.shard(rank)
    if shard.tree is None:
        return {}
    if reader.verify:
        shard.verify([n for n in shard.names if n.startswith(RANK_KEY + "/")])
    tree = _codec.decode(shard.tree, lambda n: shard.tensor(n, map_location))
    return tree.get(RANK_KEY, {}) if isinstance(tree, dict) else {}


def _rank_state(index: Index, reader: ShardReader, rank: int, *, map_location: MapLocation) -> Any:
    """The RNG state and extra ``rank`` saved, decoded; the RNG state is checked (not applied)."""
    own = rank < index.world_size
    if not own:
        logger.warning(
            "%s was saved by %d ranks; rank %d has no saved RNG state and keeps its own (extra comes from rank 0)",
            index.path,
            index.world_size,
            rank,
        )
    tree = rank_tree(reader, rank if own else 0, map_location)
    if not isinstance(tree, dict):
        raise CorruptCheckpointError(f"{index.path}: rank {rank}'s saved state is not a dict", path=index.path)
    if own and _state.RNG_KEY in tree:
        try:
            check_rng_state(tree[_state.RNG_KEY])
        except CorruptCheckpointError as exc:
            raise CorruptCheckpointError(f"{index.path}: {exc}", path=index.path, reason=exc.reason) from None
    return tree


# ------------------------------------------------------------------------------------------
# one process: the full (unsharded) state
