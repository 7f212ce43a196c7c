"""``export.json``: the manifest of an export directory, shared by export, runtime, bench, serve.

Schema (version 1)::

    {
      "manifest_version": 1,
      "created_at": "2026-11-23T14:00:00+00:00",
      "versions": {"torchkeep": ..., "torch": ..., "onnx": ..., "onnxruntime": ..., "tensorrt": ...},
      "source": {"file": "model.safetensors" | null, "xxh3": "<16 hex>" | null, "model": {registry entry} | null},
      "inputs":  [{"name": "x", "shape": [null, 10], "dtype": "float32"}, ...],   # TensorSpec.to_json
      "outputs": [{"name": "output", "shape": [null, 1], "dtype": "float32"}, ...],
      "input_structure": "positional" | "dict",      # how the model takes its inputs
      "output_structure": "tensor" | "tuple" | "dict",
      "dynamic_batch": true,
      "verify_batch_sizes": [1, 3, 17],                # batch sizes the parity check ran
      "notes": ["the model was in training mode; ..."], # things the user should know
      "artifacts": {
        "<format>": {                                  # pt2, onnx, torchscript, aoti, tensorrt
          "ok": true, "file": "model.pt2", "files": ["model.pt2"], "backend": "pt2",
          "error": null,                               # the exporter's message when ok is false
          "step": null,                                # where it failed: "torch.export", "verify", ...
          "options": {...},                            # e.g. {"opset": 18}, {"method": "trace"}
          "parity": {"<batch size>": {"<output name>": {"max_abs": 0.0, "max_rel": 0.0}}},
          "tolerance": {"<output name>": {"rtol": 1e-4, "atol": 1e-5}},
          "export_seconds": 1.2, "verify_seconds": 0.1,
          "warnings": ["TracerWarning: ..."]           # what the exporter warned, once each
        }
      },
      "benchmark": {                                   # written by tk.benchmark, optional
        "created_at": "...", "device": "cpu", "threads": 2,
        "results": [{"backend": "onnxruntime", "batch_size": 32, "p50_ms": 0.1, "p90_ms": 0.1,
                     "p99_ms": 0.2, "throughput": 1e5, "speedup_vs_eager": 2.0, "peak_mem_mb": 1.0}],
        "fastest": {"<batch size>": "<backend>"}
      }
    }

Writers replace the file atomically; readers treat it as hostile JSON (size-bounded).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import CheckpointNotFoundError, CorruptCheckpointError
from ._storage import atomic_write

__all__ = ["MANIFEST_NAME", "MANIFEST_VERSION", "read_manifest", "write_manifest"]

MANIFEST_NAME = "export.json"
MANIFEST_VERSION = 1
_MAX_BYTES = 16 * 1024 * 1024


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse ``directory/export.json``.

    Raises:
        CheckpointNotFoundError: the directory has no export.json.
        CorruptCheckpointError: it is not valid JSON of the expected shape.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> write_manifest(d, {"artifacts": {}})
        >>> read_manifest(d)["manifest_version"]
        1
    """
    path = os.path.join(os.fspath(directory), MANIFEST_NAME)
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise CheckpointNotFoundError(
            f"{directory}: no {MANIFEST_NAME}; is this a directory written by tk.export / `torchkeep export`?",
            path=path,
        ) from None
    if size > _MAX_BYTES:
        raise CorruptCheckpointError(f"{path}: {size} bytes is too large for a manifest", path=path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, RecursionError) as exc:
        raise CorruptCheckpointError(f"{path}: not valid JSON ({exc})", path=path) from None
    if not isinstance(data, dict) or not isinstance(data.get("artifacts", {}), dict):
        raise CorruptCheckpointError(f"{path}: expected an object with an 'artifacts' object", path=path)
    return data


def write_manifest(directory: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """Atomically (re)write ``directory/export.json``."""
    data = {"manifest_version": MANIFEST_VERSION, **manifest}
    raw = json.dumps(data, indent=2, sort_keys=False, allow_nan=False).encode("utf-8")
    with atomic_write(os.path.join(os.fspath(directory), MANIFEST_NAME)) as f:
        f.write(raw + b"\n")
