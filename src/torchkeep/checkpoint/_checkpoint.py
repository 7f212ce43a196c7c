"""The checkpoint model in one import: what ``save_checkpoint`` / ``load_checkpoint`` store.

A checkpoint is one torchkeep file whose tree is ``{object name: state_dict, ...}`` plus the
reserved ``__extra__`` and ``__rng__`` entries, so tensor names read ``model/net.0.weight`` and
``optimizer/state/0/exp_avg``. Everything a listing needs (epoch, step, metrics, object kinds,
environment) sits in the ``torchkeep.checkpoint`` header section, readable without touching data
(see :mod:`._state`); restoring is :mod:`._restore`. The path-based entry points live in
:mod:`._api` and go through the layouts (:mod:`.layouts`): single file, sharded directory,
deduplicated step.
"""

from __future__ import annotations

from ._info import decode_subtrees, info_from_section, read_info
from ._restore import StateDiff, compare_state, restore_state
from ._state import (
    EXTRA_KEY,
    RNG_KEY,
    SECTION,
    CheckpointInfo,
    add_save_check,
    check_stateful,
    checkpoint_section,
    checkpoint_sections,
    collect_state,
    environment,
    jsonable_metrics,
    object_kind,
    unwrap_model,
    write_checkpoint,
)

# The checkpoint API in one import; each re-exported name is defined in _state or _restore.
__all__ = [
    "EXTRA_KEY",
    "RNG_KEY",
    "SECTION",
    "CheckpointInfo",
    "StateDiff",
    "add_save_check",
    "checkpoint_section",
    "check_stateful",
    "checkpoint_sections",
    "collect_state",
    "compare_state",
    "decode_subtrees",
    "environment",
    "info_from_section",
    "jsonable_metrics",
    "object_kind",
    "read_info",
    "restore_state",
    "unwrap_model",
    "write_checkpoint",
]
