"""Training checkpoints: named stateful objects + epoch/step/metrics/extra + RNG + environment.

A checkpoint is one torchkeep file whose tree is ``{object name: state_dict, ...}`` plus the
reserved ``__extra__`` and ``__rng__`` entries, so tensor names read ``model/net.0.weight`` and
``optimizer/state/0/exp_avg``. Everything a listing needs (epoch, step, metrics, object kinds,
environment) sits in the ``torchkeep.checkpoint`` header section, readable without touching data.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import torch

from . import _codec, _format
from ._env import environment as _environment
from ._format import MapLocation
from ._sampler import ResumableLoader, ResumableSampler
from ._state_io import aligned, rng_state, set_rng_state
from ._storage import atomic_write
from .errors import (
    CorruptCheckpointError,
    MissingObjectError,
    StateMismatchError,
    TorchkeepError,
    UnsupportedValueError,
)

__all__ = [
    "CheckpointInfo",
    "collect_state",
    "environment",
    "load_checkpoint",
    "read_info",
    "restore_state",
    "save_checkpoint",
    "unwrap_model",
    "write_checkpoint",
]

logger = logging.getLogger(__name__)

SECTION = "checkpoint"
EXTRA_KEY = "__extra__"
RNG_KEY = "__rng__"


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
    """Versions and hardware facts recorded with every checkpoint (see :func:`torchkeep._env.environment`).

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


def _kind(obj: Any) -> str:
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


def _check_stateful(name: str, obj: Any) -> None:
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


def _jsonable_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
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
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Snapshot named objects into ``(tree_value, section)`` ready for :func:`write_checkpoint`.

    The tree value still references live tensors; copy them (``.clone()``/to host) before
    mutating the objects if the write happens later.

    Example:
        >>> tree, section = collect_state({"model": torch.nn.Linear(2, 1)}, step=3, rng=False)
        >>> sorted(tree["model"]), section["step"], section["objects"]
        (['bias', 'weight'], 3, {'model': 'module'})
    """
    tree: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    model_entry = None
    for name, obj in objects.items():
        _check_stateful(name, obj)
        if isinstance(obj, torch.nn.Module):
            obj = unwrap_model(obj)
            if model_entry is None:
                model_entry = _registry_entry(obj)
        kinds[name] = _kind(obj)
        tree[name] = obj.state_dict()
    if extra is not None:
        tree[EXTRA_KEY] = extra
    if rng:
        tree[RNG_KEY] = rng_state()
    section: dict[str, Any] = {
        "epoch": epoch,
        "step": step,
        "metrics": _jsonable_metrics(metrics),
        "objects": kinds,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
        "env": environment(),
        "rng": rng,
        "extra": extra is not None,
    }
    if model_entry is not None:
        section["model"] = model_entry
    return tree, section


def _registry_entry(model: torch.nn.Module) -> dict[str, Any] | None:
    """The registry entry of a registered model (None when the registry does not know it)."""
    try:
        from ._registry import model_entry  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # the registry lands separately; until then no model is registered
        return None
    entry: dict[str, Any] | None = model_entry(model)
    return entry


def write_checkpoint(dest: IO[bytes], tree: Mapping[str, Any], section: Mapping[str, Any]) -> int:
    """Encode ``tree`` and stream it with ``section`` to an open destination. Returns bytes written.

    Example:
        >>> import io
        >>> tree, section = collect_state({"model": torch.nn.Linear(2, 1)}, epoch=1)
        >>> buf = io.BytesIO()
        >>> size = write_checkpoint(buf, tree, section)
        >>> read_info(_format.open_file(buf.getvalue())).epoch
        1
    """
    enc = _codec.encode(dict(tree))
    extra_sections: dict[str, Any] = {SECTION: dict(section)}
    if section.get("model") is not None:
        extra_sections["model"] = section["model"]
    return _format.write(dest, enc.tensors, tree=enc.tree, sections=extra_sections)


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    epoch: int | None = None,
    step: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Any = None,
    rng: bool = True,
    **objects: Any,
) -> CheckpointInfo:
    """Save a training checkpoint: every named stateful object, progress, RNG and environment.

    ``objects`` are things with ``state_dict()``/``load_state_dict()`` (``model=``,
    ``optimizer=``, ``scheduler=``, ``scaler=``, your own classes). Wrapped models (DataParallel,
    DDP, ``torch.compile``) are saved unwrapped. The write is atomic: a crash leaves the previous
    file at ``path`` intact.

    Example:
        >>> import torch, torchkeep as tk, tempfile, os
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = torch.optim.Adam(model.parameters())
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.safetensors")
        >>> info = tk.save_checkpoint(path, model=model, optimizer=opt, epoch=5, extra={"update_steps": 7})
        >>> tk.load_checkpoint(path, model=model, optimizer=opt).extra["update_steps"]
        7
    """
    from . import distributed  # light; DCP itself is imported only for sharded saves

    if distributed.is_sharded_context(objects):
        return distributed.save_checkpoint(
            path, epoch=epoch, step=step, metrics=metrics, extra=extra, rng=rng, **objects
        )
    tree, section = collect_state(objects, epoch=epoch, step=step, metrics=metrics, extra=extra, rng=rng)
    with atomic_write(path) as f:
        size = write_checkpoint(f, tree, section)
    info = _info_from_section(os.fspath(path), section, size)
    info.extra = extra
    return info


def _info_from_section(path: str | None, section: Any, size: int | None) -> CheckpointInfo:
    if not isinstance(section, dict):
        raise CorruptCheckpointError(f"{path}: checkpoint section is not an object", path=path)
    metrics = section.get("metrics") or {}
    objects = section.get("objects") or {}
    return CheckpointInfo(
        path=path,
        epoch=section.get("epoch"),
        step=section.get("step"),
        metrics=dict(metrics) if isinstance(metrics, dict) else {},
        created_at=section.get("created_at"),
        env=section.get("env") or {},
        model=section.get("model"),
        size_bytes=size,
        objects=dict(objects) if isinstance(objects, dict) else {},
        rng=bool(section.get("rng")),
    )


def read_info(path: str | os.PathLike[str] | _format.Reader) -> CheckpointInfo:
    """Read a checkpoint's info from its header only (no tensor data is read or verified).

    Example:
        >>> import torch, torchkeep as tk, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "c.safetensors")
        >>> _ = tk.save_checkpoint(path, model=torch.nn.Linear(1, 1), step=10)
        >>> read_info(path).step
        10
    """
    reader = path if isinstance(path, _format.Reader) else _format.open_file(path)
    section = reader.section(SECTION)
    if section is None:
        raise CorruptCheckpointError(
            f"{reader.path}: not a training checkpoint (no {SECTION} section); load it with tk.load()",
            path=reader.path,
            reason="not a checkpoint",
        )
    return _info_from_section(reader.path, section, reader.size)


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
    from . import distributed

    if os.path.isdir(path):  # a sharded checkpoint (directory) or an error saying what it is
        return distributed.load_checkpoint(
            path, map_location=map_location, strict=strict, rng=rng, verify=verify, **objects
        )
    reader = _format.open_file(path)
    info = read_info(reader)
    wanted = [*objects, EXTRA_KEY] + ([RNG_KEY] if rng else [])
    tree = _decode_subtrees(reader, wanted, map_location=map_location, verify=verify)
    restore_state(tree, objects, info, strict=strict, rng=rng)
    return info


def _decode_subtrees(
    reader: _format.Reader, names: list[str], *, map_location: MapLocation, verify: bool
) -> dict[str, Any]:
    """Decode (and verify) only the named top-level entries of a checkpoint tree.

    Loading just the model of a checkpoint then neither checks nor moves the optimizer state.
    Names the file does not hold are simply absent from the result.
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


def restore_state(
    tree: Mapping[str, Any], objects: Mapping[str, Any], info: CheckpointInfo, *, strict: bool, rng: bool
) -> None:
    """Load each object's state from a decoded checkpoint tree; fill ``info`` with what happened.

    Every object is checked (names, kinds, model keys and shapes) before any is changed, so a
    wrong call leaves the caller's objects as they were.

    Example:
        >>> src, dst = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
        >>> tree, section = collect_state({"model": src}, rng=False)
        >>> info = CheckpointInfo(objects=section["objects"])
        >>> restore_state(tree, {"model": dst}, info, strict=True, rng=False)
        >>> torch.equal(src.weight, dst.weight)
        True
    """
    # info.objects lists everything the file holds; the tree may hold only what was asked for.
    available = list(info.objects) or [k for k in tree if not k.startswith("__")]
    targets: dict[str, Any] = {}
    for name, obj in objects.items():
        _check_stateful(name, obj)
        if name not in tree:
            raise MissingObjectError(
                f"{info.path}: the checkpoint holds no {name!r}; it holds {available}. "
                f"Pass only those names, or save {name}= when writing the checkpoint.",
                name=name,
                available=available,
            )
        target = unwrap_model(obj) if isinstance(obj, torch.nn.Module) else obj
        saved_kind, kind = info.objects.get(name), _kind(target)
        if saved_kind is not None and saved_kind != kind:
            raise StateMismatchError(
                f"{info.path}: {name}= in the checkpoint is the state of a {saved_kind}, but a {kind} "
                f"({type(target).__qualname__}) was passed; pass the {saved_kind} that was saved as {name}="
            )
        targets[name] = target
    modules = {n: t for n, t in targets.items() if isinstance(t, torch.nn.Module)}
    for name, module in modules.items():  # check every model before changing any object
        _check_module(name, module, tree[name], info, strict=strict)
    for name, target in targets.items():
        if name in modules:
            _load_module(name, target, tree[name], info)
        else:
            _load_object(name, target, tree[name], info, strict=strict)
    info.extra = tree.get(EXTRA_KEY)
    if rng and RNG_KEY in tree:
        set_rng_state(tree[RNG_KEY])


def _load_object(name: str, target: Any, state: Any, info: CheckpointInfo, *, strict: bool) -> None:
    try:
        target.load_state_dict(state)
    except TorchkeepError as exc:  # e.g. tk.upgrade_state refusing a newer version: already clear
        if strict:
            raise
        logger.warning("%s: %s= skipped: %s", info.path, name, exc)
        info.skipped[name] = str(exc)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        # torch's optimizers raise ValueError when parameter groups differ in number or size.
        message = (
            f"{info.path}: {name}= ({type(target).__qualname__}) cannot take the saved state: {exc}. "
            f"Build it over the same parameters, in the same groups, as when it was saved"
            + ("." if not strict else ", or pass strict=False to skip it.")
        )
        if strict:
            raise StateMismatchError(message) from exc
        logger.warning("%s", message)
        info.skipped[name] = str(exc)


_PREFIXES = ("module.", "_orig_mod.")


def _strip_wrapper_prefix(state: Mapping[str, Any], own: Mapping[str, Any]) -> Mapping[str, Any]:
    """Drop a ``module.``/``_orig_mod.`` prefix that every saved key has and no model key has.

    torchkeep never writes such keys, but state converted from a legacy ``.pt`` saved from a
    DataParallel/compiled model has them.
    """
    keys = [k for k in state if isinstance(k, str)]
    changed = True
    while changed and keys and len(keys) == len(state):
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in keys) and not any(k.startswith(prefix) for k in own):
                state = OrderedDict((k[len(prefix) :], v) for k, v in state.items())
                keys = list(state)
                changed = True
    return state


def _check_module(name: str, module: torch.nn.Module, state: Any, info: CheckpointInfo, *, strict: bool) -> None:
    if not isinstance(state, Mapping):
        raise StateMismatchError(
            f"{info.path}: {name}= holds a {type(state).__name__}, not a model state dict; "
            "was it saved from something other than a model?"
        )
    own = module.state_dict()
    state = _strip_wrapper_prefix(state, own)
    diff = compare_state(own, state)
    if strict and diff:
        raise diff.error(
            f"{info.path}: {name}= ({type(module).__qualname__}) does not match the checkpoint's state",
            source="checkpoint",
            hint="Build the model with the same architecture, or pass strict=False to load what fits.",
        )
    info.missing_keys[name] = diff.missing
    info.unexpected_keys[name] = diff.unexpected
    info.mismatched_keys[name] = [k for k, _, _ in diff.mismatched]


@dataclass(frozen=True)
class StateDiff:
    """How a saved state dict differs from a module's own: keys only on one side, shape mismatches."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def error(self, header: str, *, source: str, hint: str) -> StateMismatchError:
        """A :class:`StateMismatchError` listing every difference (``source``: "checkpoint", "file")."""
        lines = [header]
        if self.missing:
            lines.append(f"  missing in {source} ({len(self.missing)}): {_some(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected in {source} ({len(self.unexpected)}): {_some(self.unexpected)}")
        for k, saved, expected in self.mismatched[:10]:
            lines.append(f"  shape mismatch {k}: {source} {list(saved)} vs model {list(expected)}")
        if len(self.mismatched) > 10:
            lines.append(f"  ... and {len(self.mismatched) - 10} more shape mismatches")
        lines.append(hint)
        return StateMismatchError(
            "\n".join(lines), missing=self.missing, unexpected=self.unexpected, mismatched=self.mismatched
        )


def compare_state(own: Mapping[str, Any], state: Mapping[str, Any], *, any_shape: tuple[type, ...] = ()) -> StateDiff:
    """Compare a saved state dict with a module's ``state_dict()`` (``any_shape``: tensor types, such
    as uninitialized lazy parameters, that take their shape from the file).

    Example:
        >>> own = torch.nn.Linear(2, 3).state_dict()
        >>> compare_state(own, {"weight": torch.zeros(3, 4)}).mismatched
        [('weight', (3, 4), (3, 2))]
    """
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        (k, tuple(state[k].shape), tuple(own[k].shape))
        for k in own
        if k in state
        and isinstance(state[k], torch.Tensor)
        and isinstance(own[k], torch.Tensor)
        and not isinstance(own[k], any_shape)
        and state[k].shape != own[k].shape
    ]
    return StateDiff(missing, unexpected, mismatched)


def _some(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _load_module(name: str, module: torch.nn.Module, state: Mapping[str, Any], info: CheckpointInfo) -> None:
    state = _strip_wrapper_prefix(state, module.state_dict())
    skip = set(info.mismatched_keys.get(name, ()))
    filtered = OrderedDict((k, v) for k, v in state.items() if k not in skip)
    # strict=False here: _check_module already enforced the caller's strictness, with a better message.
    module.load_state_dict(filtered, strict=False)
