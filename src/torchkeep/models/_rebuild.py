"""Reading side of the registry: upgrade a file's recorded arguments and state through the
registered migrations, then call the registered class or factory with them."""

from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import MigrationError, RegistryError, TorchkeepError
from ._registry import RegisteredModel, migration_step

__all__ = ["migrate", "rebuild"]

logger = logging.getLogger(__name__)


def migrate(
    reg: RegisteredModel, found: int, config: dict[str, Any], state: dict[str, torch.Tensor], path: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Run the registered migrations from version ``found`` up to ``reg.version``, one step at a time.

    Raises:
        MigrationError: the file is newer than the code, a step is missing, or a step failed.
    """
    if found > reg.version:
        raise MigrationError(
            f"{path}: the file holds {reg.name!r} version {found}, but this code defines version {reg.version} "
            f"({reg.target}); upgrade the code (or package) that defines {reg.name!r} to load it"
        )
    for v in range(found, reg.version):
        step = migration_step(reg.name, v)
        if step is None:
            raise MigrationError(
                f"{path}: the file holds {reg.name!r} version {found} and the code is at version {reg.version}, "
                f"but no migration from version {v} to {v + 1} is registered; add "
                f"@tk.migration({reg.name!r}, from_version={v}) def upgrade(config, state_dict): ... "
                "returning (config, state_dict)"
            )
        target, fn = step
        try:
            out = fn(dict(config), dict(state))
        except Exception as exc:
            raise MigrationError(f"{path}: migration {target} ({reg.name!r} v{v}→v{v + 1}) failed: {exc}") from exc
        if not (
            isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Mapping) and isinstance(out[1], Mapping)
        ):
            raise MigrationError(
                f"migration {target} ({reg.name!r} v{v}→v{v + 1}) returned {type(out).__qualname__}; "
                "a migration must return (config: dict, state_dict: dict)"
            )
        config, state = dict(out[0]), dict(out[1])
        logger.info("migrated %s from version %d to %d", reg.name, v, v + 1)
    return config, state


def rebuild(reg: RegisteredModel, config: Mapping[str, Any], *, source: str = "") -> torch.nn.Module:
    """Call a registered class or factory with recorded arguments (names → values).

    Raises:
        RegistryError: the arguments do not fit the current signature (says which ones).

    Example:
        >>> import torchkeep as tk
        >>> @tk.register(name="doc-rebuild")
        ... def doc_rebuild(width: int = 4) -> torch.nn.Module:
        ...     return torch.nn.Linear(width, 1)
        >>> rebuild(lookup("doc-rebuild"), {"width": 2}).in_features
        2
    """
    sig = inspect.signature(reg.builder)
    params = sig.parameters
    unknown = [k for k in config if k not in params]
    where = f"{source}: " if source else ""
    if unknown:
        raise RegistryError(
            f"{where}{reg.target} does not accept argument(s) {unknown} recorded in the file; if its signature "
            f"changed, bump its version and add a @tk.migration({reg.name!r}, ...) that renames or drops them"
        )
    ordered = OrderedDict((k, config[k]) for k in params if k in config)
    bound = inspect.BoundArguments(sig, ordered)
    try:
        sig.bind(*bound.args, **bound.kwargs)
    except TypeError as exc:
        raise RegistryError(
            f"{where}the recorded arguments do not fit {reg.target}{sig}: {exc}; add a @tk.migration that fills them in"
        ) from exc
    try:
        model = reg.builder(*bound.args, **bound.kwargs)
    except TorchkeepError:
        raise
    except Exception as exc:  # the constructor itself failed: say with which recorded arguments
        shown = ", ".join(f"{k}={v!r}" for k, v in ordered.items())
        if len(shown) > 300:
            shown = shown[:300] + "..."
        raise RegistryError(
            f"{where}rebuilding {reg.name!r} failed: {reg.target}({shown}) raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, torch.nn.Module):
        raise RegistryError(f"{where}{reg.target} returned {type(model).__qualname__}, not an nn.Module")
    return model
