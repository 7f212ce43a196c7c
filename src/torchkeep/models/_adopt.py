"""Adopting a file's tensors into a model built on the meta device (no copy, ties kept)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

__all__ = ["adopt_state"]

logger = logging.getLogger(__name__)


def adopt_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], src: str) -> torch.nn.Module | None:
    """Give a meta-built model the file's tensors themselves (mapped, not copied); None if that fails.

    Tied weights stay tied: ``assign=True`` replaces each slot, so shared slots are re-shared after.

    Example:
        >>> with torch.device("meta"):
        ...     net = torch.nn.Linear(2, 1)
        >>> state = {"weight": torch.ones(1, 2), "bias": torch.zeros(1)}
        >>> adopt_state(net, state, "demo").weight.device.type
        'cpu'
    """
    shared = _shared_slots(model)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except Exception as exc:  # a module whose custom loading does not support assign=True
        logger.debug("%s: assign-loading failed (%s); building normally", src, exc)
        return None
    for (first_module, kind, first_name), (module, _, name) in shared:
        getattr(module, kind)[name] = getattr(first_module, kind)[first_name]
    if any(t.device.type == "meta" for t in (*model.parameters(), *model.buffers())):
        return None
    return model


def _shared_slots(
    model: torch.nn.Module,
) -> list[tuple[tuple[torch.nn.Module, str, str], tuple[torch.nn.Module, str, str]]]:
    """Pairs (first holder, other holder) of parameters/buffers shared between modules (tied weights)."""
    seen: dict[int, tuple[torch.nn.Module, str, str]] = {}
    pairs = []
    for module in model.modules():
        for kind in ("_parameters", "_buffers"):
            for name, t in getattr(module, kind).items():
                if t is None:
                    continue
                slot = (module, kind, name)
                if id(t) in seen:
                    pairs.append((seen[id(t)], slot))
                else:
                    seen[id(t)] = slot
    return pairs
