"""Restoring training state from a decoded checkpoint tree: checks first, then loads.

Every object is checked (names, kinds, model keys and shapes) before any is changed, so a wrong
call leaves the caller's objects as they were.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import MissingObjectError, StateMismatchError, TorchkeepError
from ._state import EXTRA_KEY, RNG_KEY, CheckpointInfo, check_stateful, object_kind, unwrap_model
from ._state_io import set_rng_state

__all__ = ["StateDiff", "compare_state", "restore_state"]

logger = logging.getLogger(__name__)


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
