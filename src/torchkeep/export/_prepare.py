"""Step 1 of :func:`torchkeep.export`: check the arguments and get the model and examples ready.

Everything here runs before any exporter does, so a bad argument fails in a second, not after
minutes of compilation, and nothing is written yet.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import xxhash

from ..errors import ExportError, UsageError
from ..io import _format
from ..models._audit import eval_mode
from ..runtime import BACKEND_TABLE, load_module
from ._examples import ExportExamples
from ._messages import summarize_error
from ._options import ExportOptions
from ._parity import sample_inputs
from ._protocol import Exporter

__all__ = [
    "EXPORTERS",
    "check_tolerance",
    "export_mode",
    "get_exporter",
    "make_output_dir",
    "normalize_formats",
    "prepare_examples",
    "source_entry",
]

logger = logging.getLogger(__name__)

#: format name → exporter class, from the backend table (one row per target).
EXPORTERS: dict[str, Callable[[], Exporter]] = {
    row.format: load_module(row.exporter) for row in BACKEND_TABLE if row.format is not None and row.exporter
}


def get_exporter(name: str) -> Exporter:
    """A fresh exporter for ``name`` (one of :data:`EXPORTERS`).

    Raises:
        UsageError: the name is not a known format.

    Example:
        >>> get_exporter("pt2").suffix
        '.pt2'
    """
    try:
        return EXPORTERS[name]()
    except KeyError:
        raise UsageError(
            f"unknown export format {name!r}; choose from {', '.join(EXPORTERS)}", argument="formats"
        ) from None


def normalize_formats(formats: str | Sequence[str]) -> list[str]:
    """The requested formats, known and without repeats, in the order given."""
    names = [formats] if isinstance(formats, str) else list(formats)
    if not names:
        raise UsageError(f"formats is empty; choose from {', '.join(EXPORTERS)}", argument="formats")
    out: list[str] = []
    for name in names:
        if name not in EXPORTERS:
            raise UsageError(f"unknown export format {name!r}; choose from {', '.join(EXPORTERS)}", argument="formats")
        if name not in out:
            out.append(name)
    return out


def check_tolerance(name: str, value: Any) -> None:
    """Refuse a tolerance that is not a finite number >= 0 (None: the default per dtype)."""
    # checked up front: a bad tolerance would otherwise surface only after every format was built,
    # as a parity failure ("allowed rtol=-1") or a TypeError inside the comparison
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UsageError(
            f"{name}={value!r} is invalid; expected a finite number >= 0 (e.g. {name}=1e-4), or None for the "
            "default per output dtype",
            argument=name,
        )


def source_entry(source_file: str | None) -> dict[str, Any]:
    """``export.json``'s ``source``: the torchkeep file the model came from, with its hash."""
    if source_file is None:
        return {"file": None, "xxh3": None, "model": None}
    h = xxhash.xxh3_64()
    try:
        with open(source_file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
    except OSError as exc:
        raise UsageError(f"source_file {source_file!r} cannot be read: {exc}", argument="source_file") from exc
    model_entry = None
    with contextlib.suppress(Exception):  # a non-torchkeep source file simply has no model entry
        model_entry = _format.open_file(source_file).section("model")
    return {"file": os.path.basename(source_file), "xxh3": h.hexdigest(), "model": model_entry}


def make_output_dir(output_dir: str | os.PathLike[str]) -> Path:
    """Create ``output_dir`` (and parents) if missing."""
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create output directory {out}: {exc}", step="output") from exc
    return out


_TRAINING_SENSITIVE = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.dropout._DropoutNd)


@contextlib.contextmanager
def export_mode(model: torch.nn.Module, notes: list[str]) -> Iterator[None]:
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


def prepare_examples(
    model: torch.nn.Module,
    example_inputs: Any,
    *,
    dynamic_batch: bool,
    dynamic_shapes: Any = None,
    opts: ExportOptions,
) -> ExportExamples:
    """The examples every exporter gets, with outputs learnt from eager runs.

    One run at the example sizes gives output names, dtypes and shapes; with dynamic
    dimensions a second run at other sizes shows which output dimensions follow them.
    """
    examples = ExportExamples(
        model,
        example_inputs,
        dynamic_batch=dynamic_batch,
        dynamic_shapes=dynamic_shapes,
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
    if examples.dims.names:
        point = examples.probe_point()
        try:
            with torch.no_grad():
                probe = sample_inputs(examples, point, torch.Generator().manual_seed(opts.verify_seed))
                examples.record_probe(examples.call(model, probe), point)
        except Exception as exc:  # the model refuses those sizes: fall back to the batch rule
            logger.debug("no probe run at %s (%s); output dim 0 follows the batch", point, exc)
            examples.guess_output_dims()
    return examples
