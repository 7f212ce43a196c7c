"""Restoring training state from a decoded checkpoint tree: checks first, then loads.

Transactional: every object, every RNG state and every header field is checked before any is
changed, so a wrong call leaves the caller's objects (and the global generators) as they were.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import CorruptCheckpointError, MissingObjectError, StateMismatchError, TorchkeepError
from ..io._dtypes import OPAQUE_DTYPES, dtype_name
from ._state import EXTRA_KEY, RNG_KEY, CheckpointInfo, check_stateful, object_kind, unwrap_model
from ._state_io import check_rng_state, set_rng_state

__all__ = ["StateDiff", "compare_state", "restore_state"]

logger = logging.getLogger(__name__)


def restore_state(
    tree: Mapping[str, Any], objects: Mapping[str, Any], info: CheckpointInfo, *, strict: bool, rng: bool
) -> None:
    """Load each object's state from a decoded checkpoint tree; fill ``info`` with what happened.

    Transactional: every part is checked before anything is changed — names and kinds, model
    keys, shapes and tensor types, optimizer groups, the state of schedulers and other known
    kinds, and every RNG state (tried on scratch generators). Objects of other kinds, whose
    ``load_state_dict`` cannot be checked in advance, are loaded first, and put back as they were
    if a later object fails. So a call that raises leaves the caller's objects and the global
    random generators as they were.

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
        check_stateful(name, obj)
        if name not in tree:
            raise MissingObjectError(
                f"{info.path}: the checkpoint holds no {name!r}; it holds {available}. "
                f"Pass only those names, or save {name}= when writing the checkpoint.",
                name=name,
                available=available,
            )
        target = unwrap_model(obj) if isinstance(obj, torch.nn.Module) else obj
        saved_kind, kind = info.objects.get(name), object_kind(target)
        if saved_kind is not None and saved_kind != kind:
            raise StateMismatchError(
                f"{info.path}: {name}= in the checkpoint is the state of a {saved_kind}, but a {kind} "
                f"({type(target).__qualname__}) was passed; pass the {saved_kind} that was saved as {name}="
            )
        targets[name] = target
    # -- check everything ------------------------------------------------------------------
    modules = {n: t for n, t in targets.items() if isinstance(t, torch.nn.Module)}
    for name, module in modules.items():
        _check_module(name, module, tree[name], info, strict=strict)
    checked: dict[str, Any] = {}
    unchecked: dict[str, Any] = {}
    for name, target in targets.items():
        if name in modules:
            continue
        problem = _check_object(target, tree[name])
        if problem is None:
            (unchecked if object_kind(target) == "object" else checked)[name] = target
        elif strict:
            raise StateMismatchError(
                f"{info.path}: {name}= ({type(target).__qualname__}) cannot take the saved state: {problem}. "
                "Build it over the same parameters, in the same groups, as when it was saved, or pass "
                "strict=False to skip it."
            )
        else:
            logger.warning("%s: %s= skipped: %s", info.path, name, problem)
            info.skipped[name] = problem
    rng_state = None
    if rng and RNG_KEY in tree:
        try:
            rng_state = check_rng_state(tree[RNG_KEY])
        except CorruptCheckpointError as exc:
            raise CorruptCheckpointError(f"{info.path}: {exc}", path=info.path, reason=exc.reason) from None
    # -- then apply: what could not be checked first, so that a failure there changed nothing else
    applied: list[tuple[str, Any, Any]] = []
    try:
        for name, target in [*unchecked.items(), *checked.items()]:
            before = copy.deepcopy(target.state_dict()) if name in unchecked else None
            if _load_object(name, target, tree[name], info, strict=strict) and before is not None:
                applied.append((name, target, before))
    except Exception:
        for name, target, before in reversed(applied):
            try:
                target.load_state_dict(before)
            except Exception as exc:  # pragma: no cover - an object that cannot take its own state back
                logger.error("%s: could not put %s= back as it was: %s", info.path, name, exc)
        raise
    for name, module in modules.items():
        _load_module(name, module, tree[name], info)
    info.extra = tree.get(EXTRA_KEY)
    if rng_state is not None:
        set_rng_state(rng_state)


def _check_object(target: Any, state: Any) -> str | None:
    """Why ``state`` cannot be loaded into ``target`` (an optimizer, scheduler, ...), or None."""
    kind = object_kind(target)
    if kind == "object":
        return None  # its own load_state_dict decides
    if not isinstance(state, Mapping):
        return f"the saved state is a {type(state).__name__}, not a dict"
    if kind != "optimizer":
        return None
    groups, per_param = state.get("param_groups"), state.get("state")
    if not isinstance(groups, list) or not isinstance(per_param, Mapping):
        return "an optimizer state needs a 'state' dict and a 'param_groups' list"
    own = target.param_groups
    if len(groups) != len(own):
        return f"the file has {len(groups)} parameter group(s), the optimizer {len(own)}"
    ids: set[Any] = set()
    for i, (group, mine) in enumerate(zip(groups, own, strict=True)):
        params = group.get("params") if isinstance(group, Mapping) else None
        if not isinstance(params, list) or not all(isinstance(p, (int, str)) for p in params):
            return f"parameter group {i} has no list of parameter ids"
        if len(params) != len(mine["params"]):
            return f"parameter group {i} has {len(params)} parameter(s) in the file, {len(mine['params'])} here"
        ids.update(params)
    stray = [k for k in per_param if k not in ids]
    if stray:
        return f"the state names parameter(s) {stray[:5]} that no group holds"
    if not all(isinstance(v, Mapping) for v in per_param.values()):
        return "each parameter's state must be a dict"
    return None


def _load_object(name: str, target: Any, state: Any, info: CheckpointInfo, *, strict: bool) -> bool:
    """Load one object's state; False when it was skipped (``strict=False``)."""
    try:
        target.load_state_dict(state)
    except TorchkeepError as exc:  # e.g. tk.upgrade_state refusing a newer version: already clear
        if strict:
            raise
        logger.warning("%s: %s= skipped: %s", info.path, name, exc)
        info.skipped[name] = str(exc)
        return False
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError, AttributeError) as exc:
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
        return False
    return True


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
    info.mismatched_keys[name] = [k for k, _, _ in diff.mismatched] + [k for k, _ in diff.invalid]


@dataclass(frozen=True)
class StateDiff:
    """How a saved state dict differs from a module's own: keys only on one side, shape mismatches."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    #: keys whose saved value cannot be copied into the module's tensor at all, and why
    invalid: list[tuple[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched or self.invalid)

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
        for k, why in self.invalid[:10]:
            lines.append(f"  cannot load {k}: {why}")
        if len(self.invalid) > 10:
            lines.append(f"  ... and {len(self.invalid) - 10} more values that cannot be loaded")
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
    invalid = [(k, why) for k in own if k in state and (why := _why_not_loadable(own[k], state[k])) is not None]
    return StateDiff(missing, unexpected, mismatched, invalid)


def _why_not_loadable(own: Any, saved: Any) -> str | None:
    """Why ``saved`` cannot be copied into the module's tensor ``own`` (None: it can)."""
    if not isinstance(own, torch.Tensor):
        return None  # extra state: the module's set_extra_state decides
    if not isinstance(saved, torch.Tensor):
        return f"the checkpoint holds a {type(saved).__name__} where the model has a tensor"
    if saved.dtype != own.dtype and (saved.dtype in OPAQUE_DTYPES or own.dtype in OPAQUE_DTYPES):
        return f"stored as {dtype_name(saved.dtype)}, which cannot be converted to the model's {dtype_name(own.dtype)}"
    return None


def _some(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _load_module(name: str, module: torch.nn.Module, state: Mapping[str, Any], info: CheckpointInfo) -> None:
    state = _strip_wrapper_prefix(state, module.state_dict())
    skip = set(info.mismatched_keys.get(name, ()))
    filtered = OrderedDict((k, v) for k, v in state.items() if k not in skip)
    # strict=False here: _check_module already enforced the caller's strictness, with a better message.
    module.load_state_dict(filtered, strict=False)
