"""``convert --as-checkpoint``: a tutorial-style ``torch.save`` dict as a training checkpoint.

The tutorials save ``{"model_state_dict": ..., "optimizer_state_dict": ..., "epoch": ...}``;
:func:`checkpoint_tree` maps such a dict onto the tree and header section that
:func:`torchkeep.load_checkpoint` restores, keeping every other key in ``extra``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..checkpoint import _checkpoint
from ..errors import UsageError

__all__ = ["CHECKPOINT_OBJECT_KEYS", "checkpoint_tree"]


#: ``--as-checkpoint``: the tutorials' key for each object, in order of preference, and its kind.
CHECKPOINT_OBJECT_KEYS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("model", "module", ("model_state_dict", "state_dict", "model")),
    ("optimizer", "optimizer", ("optimizer_state_dict", "optimizer")),
    ("scheduler", "scheduler", ("scheduler_state_dict", "lr_scheduler_state_dict", "scheduler", "lr_scheduler")),
    ("scaler", "scaler", ("scaler_state_dict", "scaler")),
)
_EPOCH_KEYS = ("epoch",)
_STEP_KEYS = ("step", "global_step", "iteration")
_METRIC_WORDS = ("loss", "acc", "metric", "score", "f1", "auc", "ppl", "perplexity", "error")


def _number(v: Any) -> float | int | None:
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.dtype.is_complex:
        v = v.item()
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v
    return None


def checkpoint_tree(tree: Any, src: str) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """A tutorial-style checkpoint dict as ``(tree, checkpoint section, notes)`` for ``load_checkpoint``.

    ``model_state_dict`` (or ``state_dict``/``model``) becomes ``model=``; likewise
    ``optimizer_state_dict`` → ``optimizer=``, ``scheduler_state_dict`` → ``scheduler=``,
    ``scaler_state_dict`` → ``scaler=`` (see :data:`CHECKPOINT_OBJECT_KEYS`). ``epoch`` and
    ``step``/``global_step``/``iteration`` (ints) become the checkpoint's epoch and step. Numbers
    whose key names a metric (``loss``, ``acc``, ``score``, ``f1``, ``auc``, ``ppl``, ``error``,
    ``metric``: ``train_loss``, ``best_acc1``) become metrics. Every other key (``extra_info``,
    ``hyperparams``, ``model_name``, ``pytorch_version``, ...) is kept under its own name in the
    ``extra`` dict, so nothing is lost.

    Raises:
        UsageError: the tree is not a dict, or holds no model state.

    Example:
        >>> import torch
        >>> tree, section, _ = checkpoint_tree({"model_state_dict": {"w": torch.ones(1)}, "epoch": 3,
        ...                                   "extra_info": {"steps": 7}}, "old.pth")
        >>> sorted(tree), section["epoch"], tree["__extra__"]
        (['__extra__', 'model'], 3, {'extra_info': {'steps': 7}})
    """
    if not isinstance(tree, Mapping):
        raise UsageError(
            f"{src}: --as-checkpoint needs a dict such as {{'model_state_dict': ..., 'optimizer_state_dict': ..., "
            f"'epoch': ...}}; this file holds a {type(tree).__name__}. Convert it without --as-checkpoint"
        )
    rest = dict(tree)
    out: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    notes: list[str] = []
    for name, kind, keys in CHECKPOINT_OBJECT_KEYS:
        key = next((k for k in keys if k in rest and isinstance(rest[k], Mapping)), None)
        if key is not None:
            out[name], kinds[name] = rest.pop(key), kind
            notes.append(f"{key!r} -> {name}=")
    if "model" not in out:
        raise UsageError(
            f"{src}: --as-checkpoint found no model state: expected one of the keys "
            f"{', '.join(CHECKPOINT_OBJECT_KEYS[0][2])} holding a state dict; the file has keys {sorted(map(str, rest))}"
        )
    counters: dict[str, int | None] = {"epoch": None, "step": None}
    for field_name, keys in (("epoch", _EPOCH_KEYS), ("step", _STEP_KEYS)):
        for k in keys:
            v = _number(rest.get(k))
            if isinstance(v, int):
                counters[field_name] = v
                rest.pop(k)
                break
    metrics: dict[str, Any] = {}
    for k in list(rest):
        v = _number(rest[k])
        if isinstance(k, str) and v is not None and any(w in k.lower() for w in _METRIC_WORDS):
            metrics[k] = v
            rest.pop(k)
    if metrics:
        notes.append(f"metrics: {', '.join(metrics)}")
    if rest:
        out[_checkpoint.EXTRA_KEY] = rest
        notes.append(f"kept in extra: {', '.join(map(str, rest))}")
    section = _checkpoint.checkpoint_section(
        kinds, epoch=counters["epoch"], step=counters["step"], metrics=metrics, extra=bool(rest), rng=False
    )
    return out, section, notes
