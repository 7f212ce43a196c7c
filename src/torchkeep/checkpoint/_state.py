"""Collecting training state into a checkpoint tree, and the header section that describes it.

A checkpoint's tree is ``{object name: state_dict, ...}`` plus the reserved ``__extra__`` and
``__rng__`` entries; everything a listing needs (epoch, step, metrics, object kinds,
environment) sits in the ``torchkeep.checkpoint`` header section, readable without touching
data. Every layout (one file, sharded directory, deduplicated step) shares these pieces; reading
the info back is :mod:`._info`.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import torch

from ..errors import UnsupportedValueError
from ..io import _codec, _format
from ..io._env import environment as _environment
from ._sampler import ResumableLoader, ResumableSampler
from ._state_io import rng_state

__all__ = [
    "EXTRA_KEY",
    "INT64_MAX",
    "INT64_MIN",
    "RNG_KEY",
    "SECTION",
    "CheckpointInfo",
    "ModelDescriber",
    "SaveCheck",
    "add_model_describer",
    "add_save_check",
    "check_stateful",
    "checkpoint_section",
    "checkpoint_sections",
    "collect_state",
    "environment",
    "jsonable_metrics",
    "object_kind",
    "unwrap_model",
    "write_checkpoint",
]

#: Describes a model for the checkpoint header: its registry entry, or None when unknown.
ModelDescriber = Callable[[torch.nn.Module], "dict[str, Any] | None"]

# The registry adds its describer when it is imported (models sit above checkpoints, so the
# checkpoint layer asks instead of importing it); no describer means no model is registered.
_MODEL_DESCRIBERS: list[ModelDescriber] = []


def add_model_describer(describe: ModelDescriber) -> None:
    """Let ``describe(model)`` name the models saved in checkpoints (the registry uses this).

    Example:
        >>> add_model_describer(lambda model: None)  # knows no model: checkpoints record none
    """
    if describe not in _MODEL_DESCRIBERS:
        _MODEL_DESCRIBERS.append(describe)


#: Checks run on every module before its state is collected: ``check(module, name, strict)``
#: warns (or with ``strict=True`` raises) about state the module would lose. The model layer
#: adds its audit here (see :func:`add_save_check`), so this layer never imports it.
SaveCheck = Callable[[torch.nn.Module, str, bool], None]
_SAVE_CHECKS: list[SaveCheck] = []


def add_save_check(check: SaveCheck) -> None:
    """Run ``check(module, object_name, strict)`` on every module a checkpoint saves.

    Example:
        >>> seen = []
        >>> add_save_check(lambda m, name, strict: seen.append(name))
        >>> _ = collect_state({"net": torch.nn.Linear(1, 1)}, rng=False); seen[-1]
        'net'
        >>> _ = _SAVE_CHECKS.pop()
    """
    if check not in _SAVE_CHECKS:
        _SAVE_CHECKS.append(check)


#: The header section that describes a checkpoint; the tree's reserved extra= and RNG entries.
SECTION = "checkpoint"
EXTRA_KEY = "__extra__"
RNG_KEY = "__rng__"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass
class CheckpointInfo:
    """What a checkpoint file says about itself (and, after a load, what was restored).

    Example:
        >>> info = CheckpointInfo(path="ckpt.safetensors", epoch=3, step=1200)
        >>> info.epoch, info.step
        (3, 1200)
    """

    path: str | None = None
    epoch: int | None = None
    step: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: Any = None
    created_at: str | None = None
    env: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] | None = None
    size_bytes: int | None = None
    objects: dict[str, str] = field(default_factory=dict)  # name -> kind (module, optimizer, ...)
    rng: bool = False
    #: after ``load_checkpoint(strict=False)``: per object, keys that were missing / unexpected /
    #: skipped because their shapes differ.
    missing_keys: dict[str, list[str]] = field(default_factory=dict)
    unexpected_keys: dict[str, list[str]] = field(default_factory=dict)
    mismatched_keys: dict[str, list[str]] = field(default_factory=dict)
    #: after ``load_checkpoint(strict=False)``: objects whose state could not be loaded, with why.
    skipped: dict[str, str] = field(default_factory=dict)


def environment() -> dict[str, Any]:
    """Versions and hardware facts recorded with every checkpoint (see :func:`torchkeep.io._env.environment`).

    Example:
        >>> sorted(environment())[:4]
        ['cpu_count', 'cuda', 'machine', 'numpy']
    """
    return _environment()


def unwrap_model(model: Any) -> Any:
    """Strip DataParallel / DistributedDataParallel / torch.compile wrappers.

    Example:
        >>> net = torch.nn.Linear(2, 2)
        >>> unwrap_model(torch.nn.DataParallel(net)) is net
        True
    """
    while True:
        if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def object_kind(obj: Any) -> str:
    """The kind a checkpoint records for a saved object (module, optimizer, scheduler, ...).

    Example:
        >>> object_kind(torch.nn.Linear(1, 1)), object_kind(object())
        ('module', 'object')
    """
    if isinstance(obj, torch.nn.Module):
        return "module"
    if isinstance(obj, torch.optim.Optimizer):
        return "optimizer"
    if isinstance(obj, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)):
        return "scheduler"
    if isinstance(obj, torch.amp.GradScaler):
        return "scaler"
    if isinstance(obj, ResumableLoader):
        return "loader"
    if isinstance(obj, ResumableSampler):
        return "sampler"
    return "object"


def check_stateful(name: str, obj: Any) -> None:
    """Refuse a reserved object name or an object without ``state_dict``/``load_state_dict``.

    Raises:
        UnsupportedValueError: the name starts with ``__``, or the object has no state methods.

    Example:
        >>> check_stateful("model", torch.nn.Linear(1, 1))  # fine: returns None
    """
    if name.startswith("__"):
        raise UnsupportedValueError(
            f"{name}=: object names starting with '__' are reserved for torchkeep; pick another name",
            path=name,
        )
    if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
        raise UnsupportedValueError(
            f"{name}= must have state_dict() and load_state_dict() methods; got {type(obj).__qualname__}. "
            "Pass plain values through extra= instead.",
            path=name,
            value_type=type(obj).__qualname__,
        )


def jsonable_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """Metrics as JSON values for the header: one-element tensors and numpy scalars become numbers.

    Raises:
        UnsupportedValueError: a metric is not a number, str, bool or None.

    Example:
        >>> jsonable_metrics({"loss": torch.tensor(0.5), "acc": float("nan")})
        {'loss': 0.5, 'acc': 'nan'}
    """
    out: dict[str, Any] = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                raise UnsupportedValueError(
                    f"metrics[{k!r}]: a metric must be a number, got a tensor of shape {tuple(v.shape)}"
                )
            v = v.item()
        elif isinstance(v, np.generic):
            v = v.item()
        if not isinstance(v, (int, float, str, bool)) and v is not None:
            raise UnsupportedValueError(
                f"metrics[{k!r}]: metrics must be numbers (or str/bool/None), got {type(v).__qualname__}; "
                "put richer values in extra="
            )
        if isinstance(v, float) and not math.isfinite(v):
            v = str(v)  # JSON has no nan/inf; listing shows them as text
        if isinstance(v, int) and not isinstance(v, bool) and not INT64_MIN <= v <= INT64_MAX:
            raise UnsupportedValueError(
                f"metrics[{k!r}]: an int of {v.bit_length()} bits does not fit in a 64-bit int (JSON readers lose it); "
                "pass float(value), or put exact big numbers in extra="
            )
        out[str(k)] = v
    return out


def collect_state(
    objects: Mapping[str, Any],
    *,
    epoch: int | None = None,
    step: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Any = None,
    rng: bool = True,
    strict: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Snapshot named objects into ``(tree_value, section)`` ready for :func:`write_checkpoint`.

    The tree value still references live tensors; copy them (``.clone()``/to host) before
    mutating the objects if the write happens later. Every module goes through the save checks
    first (``strict`` is passed on: warn, or raise).

    Example:
        >>> tree, section = collect_state({"model": torch.nn.Linear(2, 1)}, step=3, rng=False)
        >>> sorted(tree["model"]), section["step"], section["objects"]
        (['bias', 'weight'], 3, {'model': 'module'})
    """
    tree: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    entries: dict[str, dict[str, Any]] = {}  # object name -> registry entry, for registered modules
    for name, obj in objects.items():
        check_stateful(name, obj)
        if isinstance(obj, torch.nn.Module):
            obj = unwrap_model(obj)
            for check in _SAVE_CHECKS:
                check(obj, name, strict)
            entry = _registry_entry(obj)
            if entry is not None:
                entries[name] = {**entry, "object": name}
        kinds[name] = object_kind(obj)
        tree[name] = obj.state_dict()
    if extra is not None:
        tree[EXTRA_KEY] = extra
    if rng:
        tree[RNG_KEY] = rng_state()
    section = checkpoint_section(kinds, epoch=epoch, step=step, metrics=metrics, extra=extra is not None, rng=rng)
    if entries:
        # "model" is the first registered module (what tk.load_model rebuilds by default); with
        # several, "models" holds each, by the keyword it was saved under (load_model(object=...)).
        section["model"] = next(iter(entries.values()))
        if len(entries) > 1:
            section["models"] = entries
    return tree, section


def checkpoint_section(
    kinds: Mapping[str, str],
    *,
    epoch: int | None = None,
    step: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: bool = False,
    rng: bool = False,
) -> dict[str, Any]:
    """The ``checkpoint`` header section for objects of the given kinds (what listings read).

    ``kinds`` maps each object name in the tree to ``module``, ``optimizer``, ``scheduler``, ...;
    ``extra`` and ``rng`` say whether the tree holds the reserved extra and RNG entries.

    Example:
        >>> section = checkpoint_section({"model": "module"}, epoch=2)
        >>> section["epoch"], section["objects"], section["rng"]
        (2, {'model': 'module'}, False)
    """
    return {
        "epoch": epoch,
        "step": step,
        "metrics": jsonable_metrics(metrics),
        "objects": dict(kinds),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
        "env": environment(),
        "rng": rng,
        "extra": extra,
    }


def _registry_entry(model: torch.nn.Module) -> dict[str, Any] | None:
    """The registry entry of a registered model (None when no describer knows it)."""
    for describe in _MODEL_DESCRIBERS:
        entry = describe(model)
        if entry is not None:
            return entry
    return None


def write_checkpoint(dest: IO[bytes], tree: Mapping[str, Any], section: Mapping[str, Any]) -> int:
    """Encode ``tree`` and stream it with ``section`` to an open destination. Returns bytes written.

    Example:
        >>> import io
        >>> tree, section = collect_state({"model": torch.nn.Linear(2, 1)}, epoch=1)
        >>> buf = io.BytesIO()
        >>> size = write_checkpoint(buf, tree, section)
        >>> _format.open_file(buf.getvalue()).section(SECTION)["epoch"]
        1
    """
    enc = _codec.encode(dict(tree))
    return _format.write(dest, enc.tensors, tree=enc.tree, sections=checkpoint_sections(section))


def checkpoint_sections(section: Mapping[str, Any]) -> dict[str, Any]:
    """The header sections of a checkpoint: its own, and the model's registry entry when it has one.

    Example:
        >>> sorted(checkpoint_sections({"step": 1, "model": {"name": "m"}}))
        ['checkpoint', 'model']
    """
    sections: dict[str, Any] = {SECTION: dict(section)}
    if section.get("model") is not None:
        sections["model"] = section["model"]
    return sections
