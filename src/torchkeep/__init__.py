"""torchkeep: save, restore, export and serve PyTorch models — safely, exactly, fast.

Public API only; the logic lives in private modules. Each area keeps its imports on its own
lines so that work on different areas does not collide here.

Example:
    >>> import torch, torchkeep as tk, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "weights.safetensors")
    >>> tk.save(torch.nn.Linear(2, 2).state_dict(), path)
    >>> sorted(tk.load(path))
    ['bias', 'weight']
"""

from . import distributed, errors
from ._version import __version__
from .bench import BenchReport, benchmark
from .checkpoint._api import consolidate, load, load_bytes, load_checkpoint, save, save_bytes, save_checkpoint
from .checkpoint._checkpoint import CheckpointInfo, read_info
from .checkpoint._sampler import ResumableLoader, ResumableSampler
from .checkpoint._stateful import upgrade_state
from .errors import (
    CheckpointLockedError,
    CheckpointNotFoundError,
    CheckpointWriteError,
    CorruptCheckpointError,
    DistributedCheckpointError,
    ExportError,
    ExportParityError,
    FormatVersionError,
    MigrationError,
    MissingDependencyError,
    MissingObjectError,
    ModelNotRegisteredError,
    PredictorError,
    PredictorInputError,
    RegistryError,
    ServeError,
    StateMismatchError,
    TorchkeepError,
    UnsupportedValueError,
    UsageError,
)
from .export import ExportReport, export
from .manager import (
    CheckpointManager,
    KeepAny,
    KeepBestK,
    KeepEveryNSteps,
    KeepLastN,
    KeepNewerThan,
    list_checkpoints,
)
from .models._audit import Finding, audit
from .models._modelfile import load_model, save_model
from .models._registry import migration, model_entry, register
from .models._roundtrip import RoundtripResult, verify_roundtrip
from .runtime import Predictor, TensorSpec, load_predictor

__all__ = [
    # files and trees
    "load",
    "load_bytes",
    "save",
    "save_bytes",
    # training checkpoints
    "CheckpointInfo",
    "consolidate",
    "load_checkpoint",
    "read_info",
    "save_checkpoint",
    "ResumableLoader",
    "ResumableSampler",
    "upgrade_state",
    # models that rebuild themselves
    "Finding",
    "RoundtripResult",
    "audit",
    "load_model",
    "migration",
    "model_entry",
    "register",
    "save_model",
    "verify_roundtrip",
    # checkpoint manager
    "CheckpointManager",
    "KeepAny",
    "KeepBestK",
    "KeepEveryNSteps",
    "KeepLastN",
    "KeepNewerThan",
    "list_checkpoints",
    # multi-process (sharded) checkpoints: the torchkeep.distributed module
    "distributed",
    # inference runtimes
    "Predictor",
    "TensorSpec",
    "load_predictor",
    # export for deployment
    "ExportReport",
    "export",
    "BenchReport",
    "benchmark",
    # errors
    "CheckpointLockedError",
    "CheckpointNotFoundError",
    "CheckpointWriteError",
    "CorruptCheckpointError",
    "DistributedCheckpointError",
    "ExportError",
    "ExportParityError",
    "FormatVersionError",
    "MigrationError",
    "MissingDependencyError",
    "MissingObjectError",
    "ModelNotRegisteredError",
    "PredictorError",
    "PredictorInputError",
    "RegistryError",
    "ServeError",
    "StateMismatchError",
    "TorchkeepError",
    "UnsupportedValueError",
    "UsageError",
    "errors",
    "__version__",
]


def _report_public_module() -> None:
    # Public classes name the module users import them from (tracebacks, repr, help(), pickling
    # by reference), not the private module that defines them. Classes of public modules
    # (torchkeep.errors) already do.
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type) and any(part.startswith("_") for part in obj.__module__.split(".")):
            obj.__module__ = __name__


_report_public_module()
del _report_public_module
