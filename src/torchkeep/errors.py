"""Every error torchkeep raises, in one tree.

Each class also inherits the builtin a caller would naturally catch, so code written for
``torch.load``/``open`` keeps working (``except FileNotFoundError`` still catches a missing
checkpoint). Messages say what was found, what was expected, and what to do; the fields carry
the same facts for programs.

One rule decides the class: a bad argument or input, anywhere, is a :class:`UsageError` (raised
before anything is read, written or run; ``argument`` names the parameter). The subsystem classes
(:class:`ExportError`, :class:`PredictorError`, :class:`ServeError`, :class:`RegistryError`, ...)
are for failures at run time. :class:`PredictorInputError` is both: a call's inputs do not fit the
predictor (a :class:`UsageError`), found while running it (a :class:`PredictorError`).

```
TorchkeepError
├── CheckpointNotFoundError      (FileNotFoundError)   no file / no checkpoint where one was asked for
├── CorruptCheckpointError       (ValueError)          bytes on disk are not a valid torchkeep file
├── FormatVersionError           (ValueError)          written by a newer torchkeep than this one
├── UnsupportedValueError        (TypeError)           a value the codec cannot store without pickle
├── StateMismatchError           (RuntimeError)        keys/shapes differ between file and object
├── MissingObjectError           (KeyError)            the file does not hold the object asked for
├── CheckpointWriteError         (OSError)             a save failed; earlier files are untouched
├── CheckpointLockedError        (RuntimeError)        another process writes to this directory
├── RegistryError                (LookupError)         registry name collisions, failed rebuilds
│   ├── ModelNotRegisteredError                        file names a class this process lacks
│   └── MigrationError                                 no path from the file's version to the code's
├── ExportError                  (RuntimeError)        an exporter failed (names format and step)
│   └── ExportParityError                              an artifact disagrees with eager outputs
├── PredictorError               (RuntimeError)        a runtime could not load or run an artifact
│   └── PredictorInputError      (UsageError)          inputs do not match the predictor's specs
├── DistributedCheckpointError   (RuntimeError)        sharded (multi-process) checkpoint problems
├── ServeError                   (ValueError)          the server cannot start: the target cannot be served
├── UsageError                   (ValueError)          any bad argument or input (a negative step, an unknown format)
└── MissingDependencyError       (ImportError)         an optional extra is not installed
```
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
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
]


class TorchkeepError(Exception):
    """Root of every error raised by torchkeep.

    Example:
        >>> import torchkeep as tk
        >>> try:
        ...     tk.load("does-not-exist.safetensors")
        ... except tk.TorchkeepError as exc:
        ...     print(type(exc).__name__)
        CheckpointNotFoundError
    """

    def __str__(self) -> str:
        # KeyError (a base of MissingObjectError) repr()s its message; keep messages readable.
        return str(self.args[0]) if self.args else ""


class CheckpointNotFoundError(TorchkeepError, FileNotFoundError):
    """No file, or no checkpoint, exists where one was asked for."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class CorruptCheckpointError(TorchkeepError, ValueError):
    """A file is not a valid torchkeep/safetensors file, or a checksum does not match.

    Attributes:
        path: the file.
        tensor: the tensor name when one tensor is at fault, else None.
        reason: what is wrong, in a few words.
    """

    def __init__(self, message: str, *, path: str | None = None, tensor: str | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.tensor = tensor
        self.reason = reason


class FormatVersionError(TorchkeepError, ValueError):
    """The file was written in a format version this torchkeep does not know."""

    def __init__(self, message: str, *, path: str | None = None, found: str = "", supported: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.found = found
        self.supported = supported


class UnsupportedValueError(TorchkeepError, TypeError):
    """A value cannot be stored without pickle. ``path`` is where it sits in the tree."""

    def __init__(self, message: str, *, path: str = "", value_type: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.value_type = value_type


class StateMismatchError(TorchkeepError, RuntimeError):
    """A state dict does not fit the object it is loaded into (strict loading)."""

    def __init__(
        self,
        message: str,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
    ) -> None:
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


class MissingObjectError(TorchkeepError, KeyError):
    """The file does not hold an object that the caller asked to restore."""

    def __init__(self, message: str, *, name: str = "", available: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.name = name
        self.available = list(available)


class CheckpointWriteError(TorchkeepError, OSError):
    """Writing a checkpoint failed. Nothing that existed before the call was changed."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class CheckpointLockedError(TorchkeepError, RuntimeError):
    """Another live process holds the write lock of a checkpoint directory."""

    def __init__(self, message: str, *, path: str | None = None, holder: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.holder = holder


class RegistryError(TorchkeepError, LookupError):
    """A registry conflict or failure: a name registered twice, a rebuild that fails."""


class ModelNotRegisteredError(RegistryError):
    """The file names a model class or factory that is not registered in this process.

    ``cli_message``, when set, is the same message with command-line advice (``--import
    MODULE``) in place of Python advice (``import_module=True``); the CLI prints it.
    """

    def __init__(self, message: str, *, name: str = "", module: str = "", cli_message: str = "") -> None:
        super().__init__(message)
        self.name = name
        self.module = module
        self.cli_message = cli_message


class MigrationError(RegistryError):
    """No chain of migrations leads from the file's version to the code's version."""


class ExportError(TorchkeepError, RuntimeError):
    """An exporter failed. ``format`` and ``step`` say where."""

    def __init__(self, message: str, *, format: str = "", step: str = "") -> None:
        super().__init__(message)
        self.format = format
        self.step = step


class ExportParityError(ExportError):
    """An exported artifact's outputs differ from eager PyTorch beyond tolerance."""

    def __init__(
        self,
        message: str,
        *,
        format: str = "",
        output: str = "",
        max_abs_error: float = float("nan"),
        max_rel_error: float = float("nan"),
    ) -> None:
        super().__init__(message, format=format, step="verify")
        self.output = output
        self.max_abs_error = max_abs_error
        self.max_rel_error = max_rel_error


class PredictorError(TorchkeepError, RuntimeError):
    """A runtime could not load or run an artifact."""


class DistributedCheckpointError(TorchkeepError, RuntimeError):
    """A sharded checkpoint is incomplete, inconsistent, or used in the wrong process group."""


class ServeError(TorchkeepError, ValueError):
    """``torchkeep serve`` cannot start: the target cannot be served (bad options are UsageError)."""

    def __init__(self, message: str, *, option: str = "") -> None:
        super().__init__(message)
        self.option = option


class UsageError(TorchkeepError, ValueError):
    """An argument or input is out of range or of the wrong form (e.g. ``save(step=-1)``, ``mode="lowest"``,
    ``formats=("zip",)``), in any area: checkpoints, export, runtimes, benchmarks, serving, the registry.

    Raised before anything is read or written. ``argument`` names the parameter at fault.

    Example:
        >>> import torchkeep as tk
        >>> try:
        ...     tk.KeepLastN(0)
        ... except tk.UsageError as exc:
        ...     print(exc.argument)
        KeepLastN.n
    """

    def __init__(self, message: str, *, argument: str = "") -> None:
        super().__init__(message)
        self.argument = argument


class PredictorInputError(UsageError, PredictorError):
    """Inputs do not match the predictor's input specs (names, ranks, dtypes, static dims)."""


class MissingDependencyError(TorchkeepError, ImportError):
    """An optional dependency is missing; the message names the ``pip install`` to run."""

    def __init__(self, message: str, *, package: str = "", extra: str = "") -> None:
        super().__init__(message)
        self.package = package
        self.extra = extra


def missing_dependency(package: str, extra: str, feature: str) -> MissingDependencyError:
    """Build the standard error for a missing optional dependency."""
    return MissingDependencyError(
        f"{feature} needs the optional package '{package}', which is not installed. "
        f"Install it with: pip install 'torchkeep[{extra}]'",
        package=package,
        extra=extra,
    )
