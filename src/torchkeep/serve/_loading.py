"""Find, load and verify the model to serve: a model file, a checkpoint directory, an export directory.

Everything goes through :func:`torchkeep.runtime.load_predictor`; this module only decides
*what* to load (newest checkpoint, fastest backend from ``export.json``), names the version,
and checks a candidate (specs compatible with the version being served, a warm-up batch that
returns finite outputs with the batch dimension) before it may serve.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import PredictorError, ServeError, TorchkeepError, UsageError
from ..io._manifest import MANIFEST_NAME, read_manifest
from ..runtime import fastest_backend
from ..runtime._base import Predictor, TensorSpec
from ._batching import ModelSlot, run_predictor
from ._inputs import NUMPY_DTYPES

__all__ = [
    "check_compatible",
    "example_tensors",
    "find_version",
    "import_modules",
    "load_kwargs",
    "load_slot",
    "time_batch",
    "warm_up",
]

logger = logging.getLogger(__name__)

_MODEL_SUFFIXES = (".safetensors", ".pt2", ".onnx", ".pt", ".ts", ".engine", ".plan")


def _checkpoint_step(path: str) -> int | None:
    try:
        from ..checkpoint._info import read_info

        step = read_info(path).step
    except (TorchkeepError, OSError):
        return None
    return step if isinstance(step, int) else None


def _newest_managed(directory: str) -> str | None:
    """The readable checkpoint with the highest step in a ``tk.CheckpointManager`` directory."""
    from ..manager import FILE_KINDS, list_checkpoints

    try:
        entries = [e for e in list_checkpoints(directory) if e.ok and e.kind in FILE_KINDS and e.path]
    except (TorchkeepError, OSError) as exc:
        logger.debug("%s: not a checkpoint-manager directory (%s)", directory, exc)
        return None
    if not entries:
        return None
    return max(entries, key=lambda e: e.step).path


def find_version(target: str) -> tuple[str, str]:
    """What to load for ``target`` and its version label: ``(path, version)``.

    A file is itself. A directory with ``export.json`` is an export (version: its creation
    time). Any other directory is a checkpoint directory: its newest complete checkpoint (highest
    step; the newest file when steps are absent) is served. Temporary files are ignored.

    Raises:
        CheckpointNotFoundError: nothing servable is there.

    Example:
        >>> find_version("runs/exp1")  # doctest: +SKIP
        ('runs/exp1/step-00001200.safetensors', 'step-00001200.safetensors@1200')
    """
    from ..errors import CheckpointNotFoundError

    if os.path.isfile(target):
        st = os.stat(target)
        step = _checkpoint_step(target)
        label = os.path.basename(target) + (f"@{step}" if step is not None else "")
        return target, f"{label}#{st.st_size:x}{int(st.st_mtime_ns):x}"[:80]
    if not os.path.isdir(target):
        raise CheckpointNotFoundError(
            f"{target}: no such file or directory; expected a model file or an export/checkpoint directory", path=target
        )
    if os.path.isfile(os.path.join(target, MANIFEST_NAME)):
        manifest = read_manifest(target)
        stamp = str(manifest.get("created_at") or os.stat(os.path.join(target, MANIFEST_NAME)).st_mtime_ns)
        return target, f"{os.path.basename(os.path.normpath(target))}@{stamp}"
    managed = _newest_managed(target)
    if managed is not None:
        return find_version(managed)
    candidates: list[tuple[int, int, str]] = []
    for name in os.listdir(target):
        if name.startswith(".") or not name.endswith(_MODEL_SUFFIXES):
            continue
        path = os.path.join(target, name)
        if not os.path.isfile(path):
            continue
        step = _checkpoint_step(path)
        candidates.append((step if step is not None else -1, os.stat(path).st_mtime_ns, path))
    exports = [
        os.path.join(target, d) for d in os.listdir(target) if os.path.isfile(os.path.join(target, d, MANIFEST_NAME))
    ]
    if not candidates and exports:
        newest = max(exports, key=lambda d: os.stat(os.path.join(d, MANIFEST_NAME)).st_mtime_ns)
        return find_version(newest)
    if not candidates:
        raise CheckpointNotFoundError(
            f"{target}: no model file, checkpoint or export.json inside; expected a torchkeep checkpoint directory or an export directory",
            path=target,
        )
    step, _, path = max(candidates)
    return find_version(path)


def import_modules(names: Sequence[str]) -> None:
    """Import the user's modules that register model classes (``--import``), from the working directory too.

    Raises:
        ServeError: a module cannot be imported (names it and the error).
    """
    import importlib
    import sys

    if names and os.getcwd() not in sys.path:
        # `python -m torchkeep` has the working directory on sys.path; the console script does not.
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise ServeError(
                f"--import {name}: cannot import it ({type(exc).__name__}: {exc})", option="imports"
            ) from exc


def _load_predictor(
    path: str, backend: str | None, device: str, *, threads: int, batch_size: int, examples: Sequence[Any] | None
) -> Predictor:
    from ..runtime import backend_for_file, load_predictor

    kwargs: dict[str, Any] = {"device": device, "threads": threads, "batch_size": batch_size}
    if examples and (
        backend == "eager" or (backend is None and os.path.isfile(path) and backend_for_file(path) == "eager")
    ):
        kwargs["example_inputs"] = examples
    try:
        return load_predictor(path, backend=backend, **kwargs)
    except TorchkeepError as exc:
        if backend is None or not os.path.isdir(path):
            raise
        # The benchmark's favourite may not load here (missing package, other machine): let the
        # runtime pick among the rest.
        logger.warning("%s: the %s backend did not load (%s); letting the runtime choose", path, backend, exc)
        return load_predictor(path, backend=None, **kwargs)


def load_kwargs(options: Any) -> dict[str, Any]:
    """The :func:`load_slot` keyword arguments a :class:`ServeOptions` implies."""
    return {
        "backend": options.backend,
        "device": options.device,
        "max_batch_size": options.max_batch_size,
        "threads": options.threads,
        "input_shapes": options.input_shapes,
        "input_dtypes": options.input_dtypes,
    }


def example_tensors(shapes: Sequence[Sequence[int]], dtypes: Sequence[str]) -> list[Any]:
    """Zero tensors of the given shapes/dtypes (``--input-shape``/``--dtype``) for eager specs.

    Raises:
        UsageError: a dtype torch does not know.
    """
    import torch

    out = []
    for i, shape in enumerate(shapes):
        name = dtypes[i] if len(dtypes) > 1 else (dtypes[0] if dtypes else "float32")
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise UsageError(
                f"--dtype {name}: not a torch dtype; expected e.g. float32, int64", argument="input_dtypes"
            )
        out.append(torch.zeros(tuple(shape), dtype=dtype))
    return out


def load_slot(
    target: str,
    *,
    backend: str | None,
    device: str,
    max_batch_size: int,
    threads: int = 1,
    input_shapes: Sequence[Sequence[int]] = (),
    input_dtypes: Sequence[str] = (),
) -> ModelSlot:
    """Load the newest servable version under ``target`` (no warm-up; see :func:`warm_up`)."""
    path, version = find_version(target)
    chosen = backend
    if chosen is None and os.path.isdir(path):
        chosen = fastest_backend(read_manifest(path), device=device, batch_size=max_batch_size)
    examples = example_tensors(input_shapes, input_dtypes) if input_shapes else None
    try:
        predictor = _load_predictor(path, chosen, device, threads=threads, batch_size=max_batch_size, examples=examples)
    except TorchkeepError:
        raise
    except Exception as exc:
        raise PredictorError(f"{path}: could not load it for serving ({type(exc).__name__}: {exc})") from exc
    if not predictor.inputs or not predictor.outputs:
        raise ServeError(
            f"{path}: the {predictor.backend} predictor does not know its input/output shapes, and the server needs "
            "them to check requests; give the example input shape (e.g. --input-shape 1,10 [--dtype float32], "
            "repeat for each input) or serve an export directory (`torchkeep export`)",
            option="input_shapes",
        )
    logger.info("loaded %s (backend %s, version %s)", path, predictor.backend, version)
    return ModelSlot(predictor=predictor, version=version, source=os.path.abspath(path))


def _example(spec: TensorSpec, batch: int, rng: np.random.Generator) -> np.ndarray[Any, Any]:
    shape = [batch if i == 0 else (16 if d is None else d) for i, d in enumerate(spec.shape)]
    dtype = NUMPY_DTYPES.get(spec.dtype, np.dtype(np.float32))
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


def warm_up(predictor: Predictor, batch_sizes: Sequence[int] = (1,)) -> None:
    """Run the model on generated inputs; refuse it unless outputs are finite and batch-first.

    Raises:
        PredictorError: the model raised, or returned NaN/Inf or outputs without the batch dim.
    """
    rng = np.random.default_rng(0)
    for batch in batch_sizes:
        arrays = [_example(s, batch, rng) for s in predictor.inputs]
        try:
            outputs = run_predictor(predictor, arrays)
        except Exception as exc:
            raise PredictorError(f"warm-up with a batch of {batch} failed: {type(exc).__name__}: {exc}") from exc
        for spec, out in zip(
            predictor.outputs or [TensorSpec("output", (None,), "float32")] * len(outputs), outputs, strict=False
        ):
            if out.ndim == 0 or out.shape[0] != batch:
                raise PredictorError(
                    f"warm-up: output '{spec.name}' has shape {list(out.shape)} for a batch of {batch}"
                )
            if out.dtype.kind == "f" and not np.isfinite(out).all():
                raise PredictorError(f"warm-up: output '{spec.name}' holds NaN or Infinity for finite inputs")


def time_batch(predictor: Predictor, batch: int, repeats: int = 5) -> float:
    """Median seconds of one model call on a generated batch of ``batch`` examples."""
    import statistics
    import time

    rng = np.random.default_rng(0)
    arrays = [_example(s, batch, rng) for s in predictor.inputs]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_predictor(predictor, arrays)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def check_compatible(old: Sequence[TensorSpec], new: Sequence[TensorSpec]) -> None:
    """A new version must take the inputs clients already send (names, dtypes, ranks, fixed dims).

    Raises:
        PredictorError: naming the first difference.
    """
    if [s.name for s in old] != [s.name for s in new]:
        raise PredictorError(
            f"inputs changed from {[s.name for s in old]} to {[s.name for s in new]}; clients would break"
        )
    for a, b in zip(old, new, strict=True):
        if a.dtype != b.dtype or len(a.shape) != len(b.shape):
            raise PredictorError(f"input '{a.name}' changed from {a.dtype}{list(a.shape)} to {b.dtype}{list(b.shape)}")
        for x, y in zip(a.shape[1:], b.shape[1:], strict=True):
            if x is not None and y is not None and x != y:
                raise PredictorError(f"input '{a.name}' changed from {list(a.shape)} to {list(b.shape)}")
