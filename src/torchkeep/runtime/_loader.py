"""``tk.load_predictor``: pick the backend for a file or an export directory, and load it.

Picking, in order:

1. ``backend=`` when given.
2. A file: its suffix (``.aoti.pt2`` or a ``.pt2`` holding compiled code → aoti, other ``.pt2`` →
   pt2, ``.onnx`` → onnxruntime, ``.torchscript.pt`` / ``.pt`` / ``.jit`` → torchscript,
   ``.engine`` / ``.plan`` → tensorrt, ``.safetensors`` → eager via ``tk.load_model``).
3. An export directory (``export.json``): the fastest backend a benchmark recorded there for this
   device (and ``batch_size`` when given), else a fixed order (CPU: onnxruntime, aoti, pt2,
   torchscript, eager; CUDA: tensorrt first). A backend that cannot load here (missing package,
   artifact built for another machine) is skipped with a warning.

Specs come from export.json when there is one (also for a file inside an export directory), else
from the artifact.
"""

from __future__ import annotations

import importlib
import logging
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import CheckpointNotFoundError, MissingDependencyError, PredictorError, TorchkeepError, UsageError
from ..io._manifest import MANIFEST_NAME, read_manifest
from ._backends import BACKEND_TABLE, backend_row, fixed_order, format_backend, rank_backends
from ._base import Predictor, TensorSpec
from ._common import BasePredictor, normalize_device

__all__ = [
    "BACKENDS",
    "backend_for_file",
    "backend_order",
    "export_targets",
    "load_predictor",
]

logger = logging.getLogger(__name__)

BACKENDS = tuple(b.name for b in BACKEND_TABLE)
# Every file-name ending the table knows, longest first (".aoti.pt2" before ".pt2").
_PATTERNS = sorted(((p, b.name) for b in BACKEND_TABLE for p in b.patterns), key=lambda pb: -len(pb[0]))


def backend_for_file(path: str) -> str:
    """The backend that runs ``path``, from its name (and, for ``.pt2``, its contents).

    Raises:
        UsageError: the suffix is not one torchkeep knows.

    Example:
        >>> backend_for_file("exported/model.onnx")
        'onnxruntime'
    """
    name = os.path.basename(path).lower()
    for pattern, backend in _PATTERNS:
        if name.endswith(pattern):
            if backend == "pt2" and _holds_compiled_code(path):
                return "aoti"
            return backend
    known = ", ".join(dict.fromkeys(p for p, _ in reversed(_PATTERNS)))
    raise UsageError(
        f"{path}: cannot tell the backend from the file name; expected one of {known}, "
        f"or pass backend= (one of {', '.join(BACKENDS)})",
        argument="backend",
    )


def _holds_compiled_code(path: str) -> bool:
    # An AOTInductor package may be named plain .pt2; its archive holds compiled code.
    try:
        with zipfile.ZipFile(path) as zf:
            return any("aotinductor/" in n for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _artifact_backend(fmt: str, entry: dict[str, Any]) -> str:
    backend = entry.get("backend")
    return str(backend) if isinstance(backend, str) and backend else format_backend(fmt)


def _safe_join(directory: str, name: Any) -> str | None:
    # export.json is hostile input: only plain file names inside the directory.
    if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        return None
    return os.path.join(directory, name)


def export_targets(directory: str) -> dict[str, str]:
    """backend → file for every artifact an export directory holds (eager: the source model file)."""
    manifest = read_manifest(directory)
    out: dict[str, str] = {}
    for fmt, entry in manifest.get("artifacts", {}).items():
        if not isinstance(entry, dict) or not entry.get("ok", True):
            continue
        path = _safe_join(directory, entry.get("file"))
        if path is not None and os.path.exists(path):
            out.setdefault(_artifact_backend(fmt, entry), path)
    source = manifest.get("source")
    if isinstance(source, dict):
        path = _safe_join(directory, source.get("file"))
        if path is not None and os.path.isfile(path):
            out["eager"] = path
    return out


def backend_order(manifest: dict[str, Any], device: str, batch_size: int | None = None) -> list[str]:
    """Backends to try for an export directory, best first: measured when a benchmark ran here.

    The measured ones come first (:func:`~torchkeep.runtime.rank_backends`), then the rest in
    the table's fixed preference order for ``device``.
    """
    fixed = fixed_order(device)
    ranked = [b for b in rank_backends(manifest.get("benchmark"), device=device, batch_size=batch_size) if b in fixed]
    return [*ranked, *[b for b in fixed if b not in ranked]]


def _manifest_kwargs(manifest: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    try:
        for key in ("inputs", "outputs"):
            if isinstance(manifest.get(key), list) and manifest[key]:
                kwargs[key] = [TensorSpec.from_json(s) for s in manifest[key]]
    except (KeyError, TypeError, ValueError) as exc:
        raise PredictorError(f"{MANIFEST_NAME}: malformed tensor specs ({exc}); re-export the model") from None
    if manifest.get("input_structure") in ("positional", "dict"):
        kwargs["input_structure"] = manifest["input_structure"]
    if manifest.get("output_structure") in ("tensor", "tuple", "dict"):
        kwargs["output_structure"] = manifest["output_structure"]
    return kwargs


def _sibling_manifest(path: str) -> dict[str, Any]:
    """export.json of the directory holding ``path``, when it lists ``path`` as an artifact."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isfile(os.path.join(directory, MANIFEST_NAME)):
        return {}
    try:
        manifest = read_manifest(directory)
    except TorchkeepError:
        return {}
    name = os.path.basename(path)
    files = [e.get("file") for e in manifest.get("artifacts", {}).values() if isinstance(e, dict)]
    source = manifest.get("source")
    if isinstance(source, dict):
        files.append(source.get("file"))
    return manifest if name in files else {}


def _load_backend(backend: str, source: Any, device: str, options: dict[str, Any]) -> BasePredictor:
    row = backend_row(backend)
    if backend != "eager" and "example_inputs" in options:
        raise UsageError(
            f"example_inputs= applies to the eager backend only (specs of {backend} come from the artifact)",
            argument="example_inputs",
        )
    if row.predictor != "onnxruntime":
        options = {k: v for k, v in options.items() if k != "providers"}
    module = importlib.import_module(f".{row.predictor}", __package__)
    predictor: BasePredictor = module.load(source, device=device, **options)
    predictor.backend = row.name  # variants (onnxruntime-int8) share a predictor module
    return predictor


def load_predictor(
    path: str | os.PathLike[str] | torch.nn.Module,
    *,
    backend: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    warmup: int = 0,
    batch_size: int | None = None,
    example_inputs: Sequence[torch.Tensor] | None = None,
    providers: Sequence[str] | None = None,
) -> Predictor:
    """Load an artifact, an export directory or an ``nn.Module`` behind one :class:`Predictor`.

    Args:
        path: a file (``.pt2``, ``.aoti.pt2``, ``.onnx``, ``.torchscript.pt``, ``.engine``,
            ``.safetensors`` model file), an export directory with ``export.json``, or an
            ``nn.Module`` (eager backend).
        backend: force a backend (see :data:`BACKENDS`); None picks one (see the module docs).
        device: ``"cpu"`` or ``"cuda[:N]"``.
        threads: intra-op threads (ONNX Runtime per session; torch backends set torch's
            process-wide pool on each call). None keeps the runtime's default.
        warmup: run this many calls on random inputs before returning (needs known specs).
        batch_size: the batch size you expect, to pick the backend measured fastest for it.
        example_inputs: eager only: tensors to derive input/output specs from (batch dim dynamic).
        providers: onnxruntime only: execution providers to use instead of the default choice.

    Raises:
        CheckpointNotFoundError: nothing at ``path``.
        PredictorError: the artifact cannot be loaded here (message says why and what to do).
        MissingDependencyError: the backend's package is not installed.

    Example:
        >>> import torch, torchkeep as tk
        >>> p = tk.load_predictor(torch.nn.Linear(10, 1), example_inputs=[torch.zeros(1, 10)])
        >>> p.backend, p.inputs[0].shape
        ('eager', (None, 10))
        >>> p([[0.0] * 10])[0].__len__()
        1
    """
    device = normalize_device(device)
    if warmup < 0:
        raise UsageError(f"warmup={warmup}: expected a number of calls >= 0", argument="warmup")
    if backend is not None and backend not in BACKENDS:
        backend = backend_row(backend).name
    options: dict[str, Any] = {"threads": threads}
    if example_inputs is not None:
        options["example_inputs"] = example_inputs
    if providers is not None:
        if backend is not None and backend_row(backend).predictor != "onnxruntime":
            raise UsageError(f"providers= applies to the onnxruntime backend, not {backend!r}", argument="providers")
        options["providers"] = providers
    predictor: BasePredictor
    if isinstance(path, torch.nn.Module):
        if backend not in (None, "eager"):
            raise UsageError(
                f"an in-memory nn.Module runs on the eager backend, not {backend!r}; export it first",
                argument="backend",
            )
        predictor = _load_backend("eager", path, device, options)
    else:
        path = os.fspath(path)
        if os.path.isdir(path):
            predictor = _load_directory(path, backend, device, batch_size, options)
        elif not os.path.exists(path):
            raise CheckpointNotFoundError(f"{path}: no such file or export directory", path=path)
        else:
            chosen = backend or backend_for_file(path)
            options.update(_manifest_kwargs(_sibling_manifest(path)))
            predictor = _load_backend(chosen, path, device, options)
    if warmup:
        predictor.warmup(batch_size or 1, warmup)
    logger.info("loaded %r", predictor)
    return predictor


def _load_directory(
    directory: str, backend: str | None, device: str, batch_size: int | None, options: dict[str, Any]
) -> BasePredictor:
    manifest = read_manifest(directory)
    targets = export_targets(directory)
    options.update(_manifest_kwargs(manifest))
    if backend is not None:
        if backend not in targets:
            raise PredictorError(
                f"{directory}: no working {backend} artifact in {MANIFEST_NAME}; it has: {', '.join(targets) or 'none'}"
            )
        order = [backend]
    else:
        order = [b for b in backend_order(manifest, device, batch_size) if b in targets]
        if not device.startswith("cuda"):
            order = [b for b in order if not backend_row(b).cuda_only]
        if not order:
            raise PredictorError(
                f"{directory}: no artifact that runs on {device} ({MANIFEST_NAME} lists: {', '.join(targets) or 'none'}); "
                "re-export with formats=('pt2', 'onnx')"
            )
    errors: list[str] = []
    first: TorchkeepError | None = None
    for name in order:
        try:
            return _load_backend(name, targets[name], device, dict(options))
        except (MissingDependencyError, TorchkeepError) as exc:
            if backend is not None:
                raise
            logger.warning("%s: skipping the %s backend: %s", directory, name, exc)
            errors.append(f"{name}: {exc}")
            first = first or exc
    raise PredictorError(f"{directory}: no backend could load: " + "; ".join(errors)) from first
