"""What :func:`torchkeep.export` returns: one :class:`FormatResult` per format in an :class:`ExportReport`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import TorchkeepError
from ..io._manifest import read_manifest
from ..runtime import TensorSpec
from ._examples import ExportExamples

__all__ = ["ExportReport", "FormatResult", "build_manifest", "stale_artifacts"]


@dataclass
class FormatResult:
    """What happened to one format.

    Attributes:
        format: the format name.
        ok: written and verified.
        file: the artifact (None when the format failed).
        files: every file written for it.
        error: the failure message when ``ok`` is False.
        step: where it failed (``"export"``, ``"torch.export"``, ``"verify"``, ...).
        parity: batch size (or ``"batch=3,seq=17"`` with other dynamic dimensions) → output
            name → ``{"max_abs": .., "max_rel": ..}``.
        tolerance: output name → ``{"rtol": .., "atol": ..}``.
        options: format options recorded in ``export.json``.
        export_seconds / verify_seconds: time spent.
        warnings: messages the backend emitted while exporting.
    """

    format: str
    ok: bool = False
    file: Path | None = None
    files: list[Path] = field(default_factory=list)
    backend: str = ""
    error: str | None = None
    step: str | None = None
    parity: dict[int | str, dict[str, dict[str, float]]] = field(default_factory=dict)
    tolerance: dict[str, dict[str, float]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    export_seconds: float = 0.0
    verify_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def max_abs_error(self) -> float:
        """The worst absolute error over every batch size and output (nan when unverified)."""
        values = [v["max_abs"] for per in self.parity.values() for v in per.values()]
        return max(values) if values else float("nan")

    @property
    def max_rel_error(self) -> float:
        """The worst relative error over every batch size and output (nan when unverified)."""
        values = [v["max_rel"] for per in self.parity.values() for v in per.values()]
        return max(values) if values else float("nan")


@dataclass
class ExportReport:
    """The result of :func:`torchkeep.export`: one :class:`FormatResult` per format, and the manifest.

    Example:
        >>> import torch, torchkeep as tk, tempfile
        >>> report = tk.export(torch.nn.Linear(4, 2), torch.randn(1, 4), tempfile.mkdtemp(), formats=["pt2"])
        >>> report.ok, report["pt2"].file.name
        (True, 'model.pt2')
    """

    output_dir: Path
    results: dict[str, FormatResult]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    manifest: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def manifest_path(self) -> Path:
        """``output_dir/export.json``."""
        return self.output_dir / "export.json"

    @property
    def ok(self) -> bool:
        """True when every requested format was written and verified."""
        return all(r.ok for r in self.results.values())

    @property
    def failed(self) -> dict[str, FormatResult]:
        """The formats that failed (only with ``continue_on_error=True``)."""
        return {name: r for name, r in self.results.items() if not r.ok}

    @property
    def files(self) -> dict[str, Path]:
        """Format → artifact path, for the formats that succeeded."""
        return {name: r.file for name, r in self.results.items() if r.ok and r.file is not None}

    def __getitem__(self, fmt: str) -> FormatResult:
        return self.results[fmt]

    def __iter__(self) -> Any:
        return iter(self.results.values())

    def table(self) -> str:
        """A plain-text summary: format, status, file, worst abs/rel error, seconds."""
        rows = [("format", "status", "file", "max abs err", "max rel err", "seconds")]
        for r in self.results.values():
            rows.append(
                (
                    r.format,
                    "ok" if r.ok else f"FAILED ({r.step})",
                    r.file.name if r.file else "-",
                    f"{r.max_abs_error:.2e}",
                    f"{r.max_rel_error:.2e}",
                    f"{r.export_seconds + r.verify_seconds:.1f}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)

    def to_json(self) -> dict[str, Any]:
        """The ``export.json`` content."""
        return self.manifest


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


def build_manifest(
    examples: ExportExamples,
    results: Mapping[str, FormatResult],
    root: Path,
    *,
    source: dict[str, Any],
    versions: dict[str, Any],
    points: Sequence[Mapping[str, int]],
    notes: list[str],
) -> dict[str, Any]:
    """The ``export.json`` content, with artifact paths relative to ``root``."""
    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions,
        "source": source,
        "inputs": [s.to_json() for s in examples.input_specs()],
        "outputs": [s.to_json() for s in examples.output_specs()],
        "input_structure": examples.input_structure,
        "output_structure": examples.output_structure,
        "dynamic_batch": examples.dynamic_batch,
        "dynamic_dims": examples.dims.to_json(),
        "verify_batch_sizes": list(dict.fromkeys(_batch_sizes(examples, points))),
        "verify_points": [dict(p) for p in points],
        "notes": notes,
        "artifacts": {name: _artifact_json(res, root) for name, res in results.items()},
    }


def _batch_sizes(examples: ExportExamples, points: Sequence[Mapping[str, int]]) -> list[int]:
    batch = examples.dims.batch_name
    return [p[batch] if batch is not None and batch in p else examples.example_batch for p in points]


def stale_artifacts(out: Path, results: Mapping[str, FormatResult]) -> list[str]:
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
