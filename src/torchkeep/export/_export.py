"""``tk.export``: run each format's exporter, check every artifact against eager, write ``export.json``.

Crash safety: artifacts are written into a hidden staging directory inside ``output_dir`` and
checked there; only then are they moved next to ``export.json`` (``os.replace``, same
filesystem) and the manifest is written atomically. A failed export (without
``continue_on_error``) leaves ``output_dir`` exactly as it was.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import xxhash

from .._version import __version__
from ..errors import ExportError, MissingDependencyError, PredictorError, TorchkeepError
from ..io import _format
from ..io._manifest import MANIFEST_VERSION, read_manifest, write_manifest
from ..models._audit import eval_mode
from . import _parity
from ._base import (
    Exporter,
    ExportExamples,
    ExportOptions,
    ExportReport,
    FormatResult,
    capture_warnings,
    summarize_error,
)
from .aoti import AotiExporter
from .onnx import OnnxExporter
from .pt2 import Pt2Exporter
from .tensorrt import TensorRTExporter
from .torchscript import TorchScriptExporter

__all__ = ["EXPORTERS", "export", "get_exporter"]

logger = logging.getLogger(__name__)

EXPORTERS: dict[str, Callable[[], Exporter]] = {
    "pt2": Pt2Exporter,
    "onnx": OnnxExporter,
    "torchscript": TorchScriptExporter,
    "aoti": AotiExporter,
    "tensorrt": TensorRTExporter,
}


def get_exporter(name: str) -> Exporter:
    """A fresh exporter for ``name`` (one of :data:`EXPORTERS`).

    Raises:
        ExportError: the name is not a known format.

    Example:
        >>> get_exporter("pt2").suffix
        '.pt2'
    """
    try:
        return EXPORTERS[name]()
    except KeyError:
        raise ExportError(
            f"unknown export format {name!r}; choose from {', '.join(EXPORTERS)}", format=name, step="options"
        ) from None


_TRAINING_SENSITIVE = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.dropout._DropoutNd)


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module, notes: list[str]) -> Iterator[None]:
    """Export in eval mode (BatchNorm uses running stats, Dropout is off); restore the flags after."""
    sensitive = sorted({type(m).__name__ for m in model.modules() if m.training and isinstance(m, _TRAINING_SENSITIVE)})
    if sensitive:
        note = (
            f"the model was in training mode; it was exported in eval mode, which changes {', '.join(sensitive)} "
            "(running statistics, no dropout). Call model.eval() before exporting to silence this."
        )
        logger.warning(note)
        notes.append(note)
    with eval_mode(model):
        yield


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"torchkeep": __version__, "torch": torch.__version__}
    for dist in ("onnx", "onnxruntime", "onnxscript", "tensorrt"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _source(source_file: str | None) -> dict[str, Any]:
    if source_file is None:
        return {"file": None, "xxh3": None, "model": None}
    h = xxhash.xxh3_64()
    try:
        with open(source_file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
    except OSError as exc:
        raise ExportError(f"source_file {source_file!r} cannot be read: {exc}", step="options") from exc
    model_entry = None
    with contextlib.suppress(Exception):  # a non-torchkeep source file simply has no model entry
        model_entry = _format.open_file(source_file).section("model")
    return {"file": os.path.basename(source_file), "xxh3": h.hexdigest(), "model": model_entry}


def _normalize_formats(formats: str | Sequence[str]) -> list[str]:
    names = [formats] if isinstance(formats, str) else list(formats)
    if not names:
        raise ExportError(f"formats is empty; choose from {', '.join(EXPORTERS)}", step="options")
    out: list[str] = []
    for name in names:
        if name not in EXPORTERS:
            raise ExportError(
                f"unknown export format {name!r}; choose from {', '.join(EXPORTERS)}", format=str(name), step="options"
            )
        if name not in out:
            out.append(name)
    return out


def _check_tolerance(name: str, value: Any) -> None:
    # checked up front: a bad tolerance would otherwise surface only after every format was built,
    # as a parity failure ("allowed rtol=-1") or a TypeError inside the comparison
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ExportError(
            f"{name}={value!r} is invalid; expected a finite number >= 0 (e.g. {name}=1e-4), or None for the "
            "default per output dtype",
            step="options",
        )


def _artifact_json(res: FormatResult, root: Path) -> dict[str, Any]:
    return {
        "ok": res.ok,
        "file": os.path.relpath(res.file, root) if res.file is not None else None,
        "files": [os.path.relpath(f, root) for f in res.files],
        "backend": res.backend,
        "error": res.error,
        "step": res.step,
        "options": res.options,
        "parity": {str(b): per for b, per in res.parity.items()},
        "tolerance": res.tolerance,
        "export_seconds": round(res.export_seconds, 3),
        "verify_seconds": round(res.verify_seconds, 3),
        "warnings": res.warnings,
    }


def _manifest(
    examples: ExportExamples,
    results: Mapping[str, FormatResult],
    root: Path,
    *,
    source: dict[str, Any],
    versions: dict[str, str | None],
    sizes: list[int],
    notes: list[str],
) -> dict[str, Any]:
    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions,
        "source": source,
        "inputs": [s.to_json() for s in examples.input_specs()],
        "outputs": [s.to_json() for s in examples.output_specs()],
        "input_structure": examples.input_structure,
        "output_structure": examples.output_structure,
        "dynamic_batch": examples.dynamic_batch,
        "verify_batch_sizes": sizes,
        "notes": notes,
        "artifacts": {name: _artifact_json(res, root) for name, res in results.items()},
    }


def _as_export_error(fmt: str, exc: BaseException) -> ExportError:
    if isinstance(exc, ExportError):
        if exc.format:
            return exc
        err = ExportError(f"{fmt}: {exc}", format=fmt, step=exc.step)
    elif isinstance(exc, PredictorError):
        err = ExportError(
            f"{fmt}: the written artifact could not be loaded back for verification: {summarize_error(exc)}",
            format=fmt,
            step="load",
        )
    else:
        err = ExportError(f"{fmt}: export failed: {summarize_error(exc)}", format=fmt, step="export")
    err.__cause__ = exc
    return err


def export(
    model: torch.nn.Module,
    example_inputs: Any,
    output_dir: str | os.PathLike[str],
    *,
    formats: str | Sequence[str] = ("pt2", "onnx"),
    dynamic_batch: bool = True,
    verify: bool = True,
    rtol: float | None = None,
    atol: float | None = None,
    continue_on_error: bool = False,
    progress: Callable[[str, str], None] | None = None,
    **options: Any,
) -> ExportReport:
    """Export ``model`` to deployment formats, check each artifact against eager, write ``export.json``.

    ``example_inputs`` is a tensor, a tuple/list of tensors (positional arguments) or a dict
    name → tensor (keyword arguments). With ``dynamic_batch=True`` dim 0 is the batch and stays
    dynamic in every artifact (an example batch of 1 is repeated to 2 for tracing, so no exporter
    bakes it in), and verification runs batches 1, 3 and 17. The model is exported in eval mode
    (its training flags are restored afterwards). Each artifact is loaded back with
    :func:`torchkeep.load_predictor` — the code users load it with — and compared with eager
    PyTorch on fresh random inputs (see :mod:`torchkeep.export._parity`).

    Args:
        model: the module to export.
        example_inputs: example inputs (see above).
        output_dir: created if missing; gets ``model.<suffix>`` per format and ``export.json``.
        formats: any of ``"pt2"``, ``"onnx"``, ``"torchscript"``, ``"aoti"``, ``"tensorrt"``.
        dynamic_batch: keep dim 0 dynamic.
        verify: run the parity check.
        rtol: relative tolerance for every output (default: by output dtype).
        atol: absolute tolerance for every output (default: by output dtype).
        continue_on_error: record a failing format in the report and ``export.json`` and go on
            with the others instead of raising.
        progress: called as ``progress(format, stage)`` with stage ``"export"``, ``"verify"``,
            ``"ok"`` or ``"failed"`` (the CLI draws its progress with it).
        **options: format options, see :class:`ExportOptions` (``opset=``,
            ``torchscript_method=``, ``tensorrt_precision=``, ...).

    Returns:
        An :class:`ExportReport` (per format: file, parity numbers, time; ``report.ok``).

    Raises:
        ExportError: a format failed to export (``format``/``step`` say where; the message holds
            the exporter's own), or the inputs/options are invalid.
        ExportParityError: an artifact's output differs from eager beyond tolerance.
        MissingDependencyError: a format's optional package (onnx, tensorrt) is not installed.

    Example:
        >>> import torch, torchkeep as tk, tempfile
        >>> model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
        >>> report = tk.export(model, torch.randn(1, 10), tempfile.mkdtemp(), formats=["pt2", "torchscript"])
        >>> sorted(report.files), report.inputs[0].shape
        (['pt2', 'torchscript'], (None, 10))
    """
    opts = ExportOptions.from_kwargs(options)

    def notify(fmt: str, stage: str) -> None:
        if progress is not None:
            progress(fmt, stage)

    fmts = _normalize_formats(formats)
    _check_tolerance("rtol", rtol)
    _check_tolerance("atol", atol)
    if not isinstance(model, torch.nn.Module):
        raise ExportError(f"model must be a torch.nn.Module, got {type(model).__name__}", step="inputs")
    source = _source(opts.source_file)
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create output directory {out}: {exc}", step="output") from exc
    versions = _versions()
    notes: list[str] = []
    results: dict[str, FormatResult] = {}
    with _eval_mode(model, notes):
        examples = ExportExamples(
            model,
            example_inputs,
            dynamic_batch=dynamic_batch,
            input_names=opts.input_names,
            output_names=opts.output_names,
        )
        try:
            with torch.no_grad():
                eager_out = examples.call(model, examples.inputs)
        except Exception as exc:
            raise ExportError(
                f"the model failed on the example inputs in eager mode: {summarize_error(exc)}", step="eager"
            ) from exc
        examples.record_outputs(eager_out)
        sizes = _parity.batch_sizes(examples, opts.verify_batch_sizes) if verify else []
        reference = _parity.EagerReference(model, examples) if verify else None
        staging = Path(tempfile.mkdtemp(prefix=".tk-export-", dir=out))

        def manifest(root: Path) -> dict[str, Any]:
            return _manifest(examples, results, root, source=source, versions=versions, sizes=sizes, notes=notes)

        try:
            for fmt in fmts:
                exporter = get_exporter(fmt)
                res = FormatResult(format=fmt, backend=exporter.backend)
                results[fmt] = res
                path = staging / f"model{exporter.suffix}"
                logger.info("%s: exporting", fmt)
                notify(fmt, "export")
                started = time.perf_counter()
                try:
                    show = fmt == "torchscript" and opts.torchscript_warnings
                    with contextlib.nullcontext() if show else capture_warnings(fmt, res.warnings):
                        res.files = exporter.export(model, examples, path, opts)
                    res.file = res.files[0]
                    res.options = exporter.describe_options(opts, res.files)
                    res.export_seconds = time.perf_counter() - started
                    if verify and reference is not None:
                        started = time.perf_counter()
                        notify(fmt, "verify")
                        res.ok = True  # so the staging manifest lists it for the predictor
                        write_manifest(staging, manifest(staging))
                        device = "cuda" if fmt == "tensorrt" else (opts.device or str(examples.inputs[0].device))
                        half = fmt == "tensorrt" and opts.tensorrt_precision == "fp16"
                        with capture_warnings(fmt, res.warnings):
                            runner = _parity.load_runner(res.file, exporter.backend, device)
                            res.parity, res.tolerance = _parity.check_parity(
                                fmt,
                                runner,
                                reference,
                                examples,
                                sizes=sizes,
                                rtol=rtol,
                                atol=atol,
                                seed=opts.verify_seed,
                                device=device,
                                tolerance_dtype=torch.float16 if half else None,
                            )
                        res.verify_seconds = time.perf_counter() - started
                    res.ok = True
                    logger.info("%s: ok (%s)", fmt, ", ".join(f.name for f in res.files))
                    notify(fmt, "ok")
                except MissingDependencyError as exc:
                    if not continue_on_error:
                        raise
                    _record_failure(res, str(exc), "import")
                    notify(fmt, "failed")
                except Exception as exc:
                    err = _as_export_error(fmt, exc)
                    if not continue_on_error:
                        raise err from exc
                    _record_failure(res, str(err), err.step)
                    notify(fmt, "failed")
            for res in results.values():
                if res.ok:
                    moved = []
                    for f in res.files:
                        dest = out / f.name
                        os.replace(f, dest)
                        moved.append(dest)
                    res.files, res.file = moved, moved[0]
            stale = _stale_artifacts(out, results)
            if stale:
                note = (
                    f"{', '.join(stale)} in {out} are left from an earlier export and were not written again; "
                    "export.json no longer lists them (delete them, or export those formats again)"
                )
                logger.warning(note)
                notes.append(note)
            final = {"manifest_version": MANIFEST_VERSION, **manifest(out)}
            write_manifest(out, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return ExportReport(
        output_dir=out,
        results=results,
        inputs=examples.input_specs(),
        outputs=examples.output_specs(),
        manifest=final,
        notes=notes,
    )


def _stale_artifacts(out: Path, results: Mapping[str, FormatResult]) -> list[str]:
    """Files the previous ``export.json`` in ``out`` listed that this export did not write again.

    They stay (torchkeep deletes nothing it did not just write), but a user loading one by its file
    name would get a model from an earlier export: the report and the new manifest say so.
    """
    try:
        previous = read_manifest(out)
    except (TorchkeepError, OSError):  # no earlier export here, or not one of ours
        return []
    written = {f.name for res in results.values() for f in res.files}
    stale: set[str] = set()
    for artifact in previous.get("artifacts", {}).values():
        files = artifact.get("files") if isinstance(artifact, dict) else None
        for name in files if isinstance(files, list) else []:
            ours = isinstance(name, str) and name == os.path.basename(name) and name not in written
            if ours and (out / name).is_file():
                stale.add(name)
    return sorted(stale)


def _record_failure(res: FormatResult, message: str, step: str) -> None:
    logger.warning("%s failed: %s", res.format, message)
    for f in res.files:
        with contextlib.suppress(OSError):
            f.unlink()
    res.ok, res.error, res.step = False, message, step
    res.file, res.files, res.parity = None, [], {}
