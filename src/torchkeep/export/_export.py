"""``tk.export``: prepare → export each format → verify each artifact → write ``export.json``.

Crash safety: artifacts are written into a hidden staging directory inside ``output_dir`` and
checked there; only then are they moved next to ``export.json`` (``os.replace``, same
filesystem) and the manifest is written atomically. A failed export (without
``continue_on_error``) leaves ``output_dir`` exactly as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ExportError, MissingDependencyError, PredictorError, UsageError
from ..io._env import environment
from ..io._manifest import MANIFEST_VERSION, write_manifest
from ..runtime import BACKEND_TABLE, backend_row
from . import _parity
from ._examples import ExportExamples
from ._messages import capture_warnings, summarize_error
from ._options import ExportOptions
from ._prepare import (
    check_tolerance,
    export_mode,
    get_exporter,
    make_output_dir,
    normalize_formats,
    prepare_examples,
    source_entry,
)
from ._protocol import Exporter
from ._report import ExportReport, FormatResult, build_manifest, stale_artifacts

__all__ = ["export"]

logger = logging.getLogger(__name__)

# The runtimes an export.json records the versions of: every package a backend row names, and
# the ONNX toolchain the onnx exporter uses.
_RECORDED_PACKAGES = ("onnx", "onnxscript", *dict.fromkeys(b.package for b in BACKEND_TABLE if b.package))


def export(
    model: torch.nn.Module,
    example_inputs: Any,
    output_dir: str | os.PathLike[str],
    *,
    formats: str | Sequence[str] = ("pt2", "onnx"),
    dynamic_batch: bool = True,
    dynamic_shapes: Any = None,
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
        dynamic_batch: keep dim 0 dynamic (ignored when ``dynamic_shapes`` is given).
        dynamic_shapes: which dimensions are dynamic: torch.export's own spec (passed through),
            or names — ``"batch,seq"`` for every batched input, or per input
            ``{"input_ids": "batch,seq"}``. Each is verified at several sizes (see
            :mod:`torchkeep.export._dims`).
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
            the exporter's own).
        UsageError: the model, inputs or options are invalid (nothing is written).
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
    fmts = normalize_formats(formats)
    check_tolerance("rtol", rtol)
    check_tolerance("atol", atol)
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"model must be a torch.nn.Module, got {type(model).__name__}", argument="model")
    source = source_entry(opts.source_file)
    out = make_output_dir(output_dir)
    notes: list[str] = []
    with export_mode(model, notes):
        examples = prepare_examples(
            model, example_inputs, dynamic_batch=dynamic_batch, dynamic_shapes=dynamic_shapes, opts=opts
        )
        run = _Run(
            model=model,
            examples=examples,
            opts=opts,
            out=out,
            staging=Path(tempfile.mkdtemp(prefix=".tk-export-", dir=out)),
            source=source,
            notes=notes,
            points=examples.dims.points(opts.verify_batch_sizes, opts.verify_dims) if verify else [],
            reference=_parity.EagerReference(model, examples) if verify else None,
            rtol=rtol,
            atol=atol,
            continue_on_error=continue_on_error,
            progress=progress,
        )
        try:
            for fmt in fmts:
                run.export_format(fmt)
            return run.publish()
        finally:
            shutil.rmtree(run.staging, ignore_errors=True)


@dataclass
class _Run:
    """One call of :func:`export`: the shared inputs of every step and the results so far."""

    model: torch.nn.Module
    examples: ExportExamples
    opts: ExportOptions
    out: Path
    staging: Path
    source: dict[str, Any]
    notes: list[str]
    points: list[dict[str, int]]
    reference: _parity.EagerReference | None
    rtol: float | None
    atol: float | None
    continue_on_error: bool
    progress: Callable[[str, str], None] | None
    results: dict[str, FormatResult] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=lambda: environment(_RECORDED_PACKAGES))

    def notify(self, fmt: str, stage: str) -> None:
        if self.progress is not None:
            self.progress(fmt, stage)

    def manifest(self, root: Path) -> dict[str, Any]:
        return build_manifest(
            self.examples,
            self.results,
            root,
            source=self.source,
            versions=self.versions,
            points=self.points,
            notes=self.notes,
        )

    def export_format(self, fmt: str) -> None:
        """Write and verify one format; a failure raises, or is recorded with ``continue_on_error``."""
        exporter = get_exporter(fmt)
        res = FormatResult(format=fmt, backend=exporter.backend)
        self.results[fmt] = res
        try:
            self._write(exporter, res)
            if self.reference is not None:
                self._verify(exporter, res, self.reference)
            res.ok = True
            logger.info("%s: ok (%s)", fmt, ", ".join(f.name for f in res.files))
            self.notify(fmt, "ok")
        except MissingDependencyError as exc:
            if not self.continue_on_error:
                raise
            self._failed(res, str(exc), "import")
        except UsageError:
            raise  # a bad argument is wrong for every format, not a failure of this one
        except Exception as exc:
            err = _as_export_error(fmt, exc)
            if not self.continue_on_error:
                raise err from exc
            self._failed(res, str(err), err.step)

    def _write(self, exporter: Exporter, res: FormatResult) -> None:
        logger.info("%s: exporting", res.format)
        self.notify(res.format, "export")
        started = time.perf_counter()
        show = res.format == "torchscript" and self.opts.torchscript_warnings
        with contextlib.nullcontext() if show else capture_warnings(res.format, res.warnings):
            res.files = exporter.export(self.model, self.examples, self.staging / f"model{exporter.suffix}", self.opts)
        res.file = res.files[0]
        res.options = exporter.describe_options(self.opts, res.files)
        res.export_seconds = time.perf_counter() - started

    def _verify(self, exporter: Exporter, res: FormatResult, reference: _parity.EagerReference) -> None:
        started = time.perf_counter()
        self.notify(res.format, "verify")
        res.ok = True  # so the staging manifest lists it for the predictor
        write_manifest(self.staging, self.manifest(self.staging))
        row = backend_row(exporter.backend)
        device = "cuda" if row.cuda_only else (self.opts.device or str(self.examples.inputs[0].device))
        half = res.format == "tensorrt" and self.opts.tensorrt_precision == "fp16"
        special = _parity.Tolerance.choose(res.format, row.precision, self.opts.tolerances)
        with capture_warnings(res.format, res.warnings):
            runner = _parity.load_runner(res.files[0], exporter.backend, device)
            res.parity, res.tolerance = _parity.check_parity(
                res.format,
                runner,
                reference,
                self.examples,
                points=self.points,
                rtol=self.rtol,
                atol=self.atol,
                seed=self.opts.verify_seed,
                device=device,
                tolerance_dtype=torch.float16 if half else None,
                special=special,
            )
        if special is not None and special.scaled:
            for entry in res.tolerance.values():
                entry["atol_relative_to_max_abs"] = 1.0
        res.verify_seconds = time.perf_counter() - started

    def _failed(self, res: FormatResult, message: str, step: str | None) -> None:
        logger.warning("%s failed: %s", res.format, message)
        for f in res.files:
            with contextlib.suppress(OSError):
                f.unlink()
        res.ok, res.error, res.step = False, message, step
        res.file, res.files, res.parity = None, [], {}
        self.notify(res.format, "failed")

    def publish(self) -> ExportReport:
        """Move the verified artifacts next to ``export.json`` and write it (atomically)."""
        for res in self.results.values():
            if res.ok:
                moved = []
                for f in res.files:
                    dest = self.out / f.name
                    os.replace(f, dest)
                    moved.append(dest)
                res.files, res.file = moved, moved[0]
        stale = stale_artifacts(self.out, self.results)
        if stale:
            note = (
                f"{', '.join(stale)} in {self.out} are left from an earlier export and were not written again; "
                "export.json no longer lists them (delete them, or export those formats again)"
            )
            logger.warning(note)
            self.notes.append(note)
        final = {"manifest_version": MANIFEST_VERSION, **self.manifest(self.out)}
        write_manifest(self.out, final)
        return ExportReport(
            output_dir=self.out,
            results=self.results,
            inputs=self.examples.input_specs(),
            outputs=self.examples.output_specs(),
            manifest=final,
            notes=self.notes,
        )


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
