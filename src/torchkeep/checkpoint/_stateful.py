"""Versioned state for your own classes: ``state_dict()`` carries a version, loads upgrade old ones.

The pattern (see docs/guide/custom-state.md): ``state_dict()`` returns plain values plus
``"version": N``; ``load_state_dict()`` first passes what it got through :func:`upgrade_state`,
which runs the upgrade functions ``1 → 2 → … → N`` and refuses states from a newer version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import StateMismatchError

__all__ = ["upgrade_state"]


def upgrade_state(
    state: Mapping[str, Any],
    *,
    version: int,
    upgrades: Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]] | None = None,
    owner: str = "state",
    default_version: int = 1,
) -> dict[str, Any]:
    """Bring a saved ``state`` dict up to ``version`` by running upgrade functions in order.

    ``upgrades[v]`` turns a version-``v`` state into a version-``v+1`` one. A state without a
    ``"version"`` key counts as ``default_version`` (states written before you added versions).
    The input is not modified; the result has ``"version": version``.

    Raises:
        StateMismatchError: the state is from a newer version than ``version`` (upgrade the code),
            or an upgrade step is missing.

    Example:
        >>> import torchkeep as tk
        >>> old = {"version": 1, "lr": 0.1}
        >>> tk.upgrade_state(old, version=2, upgrades={1: lambda s: {**s, "warmup": 0}})
        {'version': 2, 'lr': 0.1, 'warmup': 0}
    """
    if not isinstance(state, Mapping):
        raise StateMismatchError(f"{owner}: expected a state dict, got {type(state).__qualname__}")
    found = state.get("version", default_version)
    if type(found) is not int or found < 1:
        raise StateMismatchError(f"{owner}: the saved version {found!r} is not a positive int")
    if found > version:
        raise StateMismatchError(
            f"{owner}: the saved state is version {found}, but this code reads versions up to {version}; "
            "load it with the newer code that wrote it"
        )
    out = dict(state)
    steps = dict(upgrades or {})
    for v in range(found, version):
        step = steps.get(v)
        if step is None:
            raise StateMismatchError(
                f"{owner}: no upgrade from version {v} to {v + 1} (the saved state is version {found}, "
                f"the code is version {version}); add upgrades[{v}]"
            )
        out = dict(step(out))
        out["version"] = v + 1
    out["version"] = version
    return out
