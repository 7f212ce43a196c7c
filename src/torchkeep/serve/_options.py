"""Server options: one keyword-only dataclass, validated up front, JSON-able for worker processes."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

from ..errors import ServeError

__all__ = ["ServeOptions"]


def _check_range(name: str, value: float, lo: float, hi: float, unit: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ServeError(f"{name}={value!r} is out of range: expected a number in [{lo}, {hi}]{unit}")


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """How the server batches, bounds and checks requests.

    Attributes:
        max_batch_size: most examples run in one model call (requests are merged up to this).
        max_wait_ms: how long the first queued request waits for company before its batch runs.
        max_queue: most requests waiting for the model; one more is answered 503 + Retry-After.
        timeout_ms: a request still unanswered after this long is answered 504.
        max_body_bytes: larger request bodies are refused with 413 while they are being read.
        allow_non_finite: accept NaN/Infinity in float inputs (refused with 422 by default, since
            a NaN input almost always means a client bug and silently yields NaN predictions).
        threads: torch intra-op threads for inference (1 leaves the other cores to the HTTP side).
        backend: runtime backend to load (None: the fastest one recorded in export.json).
        device: where inference runs (``"cpu"``, ``"cuda:0"``).
        watch: a directory to poll for new model versions (hot reload), or None.
        poll_s: how often the watched directory is scanned.
        warmup: run one batch through a model before it serves (readiness, hot-reload check).
        imports: Python modules to import before loading, so that ``@tk.register``-ed model
            classes exist in the server process (model files name their class; loading never
            imports code by itself). Importing runs that module's code: name only your own.
        input_shapes: example input shapes (batch first) for an eager model file, whose input
            specs are otherwise unknown; the batch dimension becomes dynamic.
        input_dtypes: one dtype for all inputs or one per shape (default float32).
        model_name: the name a single model is served under (Open Inference Protocol URLs).
        version_policy: which versions of each repository model load: ``latest[:N]``, ``all``
            or ``specific:1,3``.
        default_model: the repository model ``/predict`` and ``/v1/predict`` serve (default:
            the first by name).
        handlers: request handlers the operator names: ``module:Class`` (every model) or
            ``model=module:Class``. Imported at start: name only your own code.
        grpc_port: also serve the Open Inference Protocol over gRPC on this port.
        grpc_host: the interface gRPC binds (``torchkeep serve`` uses ``--host``).
        body_timeout_s: a request whose body has not fully arrived after this long is answered
            408 and its connection closed (slow clients cannot hold connections forever).
        inline_below_ms: a model whose full batch runs faster than this (measured at start) is
            run on the event loop instead of the inference thread, saving two thread hand-offs
            per batch; 0 always uses the thread. ``torchkeep serve`` sets 0.5.

    Example:
        >>> opts = ServeOptions(max_batch_size=16, max_wait_ms=2.0)
        >>> ServeOptions.from_json(opts.to_json()) == opts
        True
    """

    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    timeout_ms: float = 30_000.0
    max_body_bytes: int = 8 * 1024 * 1024
    allow_non_finite: bool = False
    threads: int = 1
    backend: str | None = None
    device: str = "cpu"
    watch: str | None = None
    poll_s: float = 1.0
    warmup: bool = True
    imports: tuple[str, ...] = ()
    input_shapes: tuple[tuple[int, ...], ...] = ()
    input_dtypes: tuple[str, ...] = ()
    model_name: str = "model"
    version_policy: str = "latest:1"
    default_model: str | None = None
    handlers: tuple[str, ...] = ()
    grpc_port: int | None = None
    grpc_host: str = "127.0.0.1"
    body_timeout_s: float = 30.0
    inline_below_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_body_bytes", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ServeError(f"{name}={value!r}: expected an integer")
        _check_range("max_batch_size", self.max_batch_size, 1, 65536)
        _check_range("max_wait_ms", self.max_wait_ms, 0, 60_000, " milliseconds")
        _check_range("max_queue", self.max_queue, 1, 10_000_000)
        _check_range("timeout_ms", self.timeout_ms, 1, 3_600_000, " milliseconds")
        _check_range("max_body_bytes", self.max_body_bytes, 64, 2**40, " bytes")
        _check_range("threads", self.threads, 1, 1024)
        _check_range("poll_s", self.poll_s, 0.01, 3600, " seconds")
        if isinstance(self.imports, str) or not all(isinstance(m, str) and m for m in self.imports):
            raise ServeError(f"imports={self.imports!r}: expected a list of module names such as ['mypkg.models']")
        object.__setattr__(self, "imports", tuple(self.imports))
        try:
            shapes = tuple(tuple(int(d) for d in shape) for shape in self.input_shapes)
        except (TypeError, ValueError):
            raise ServeError(f"input_shapes={self.input_shapes!r}: expected shapes such as [[1, 10]]") from None
        if any(not shape or min(shape) < 1 for shape in shapes):
            raise ServeError(f"input_shapes={self.input_shapes!r}: every shape needs a batch dim and sizes >= 1")
        object.__setattr__(self, "input_shapes", shapes)
        if len(self.input_dtypes) > 1 and len(self.input_dtypes) != len(shapes):
            raise ServeError(
                f"input_dtypes={self.input_dtypes!r}: give one dtype for all inputs or one per input shape"
            )
        object.__setattr__(self, "input_dtypes", tuple(self.input_dtypes))
        if not isinstance(self.model_name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", self.model_name):
            raise ServeError(f"model_name={self.model_name!r}: expected letters, digits, '_', '.', '-'")
        from ._repository import VersionPolicy

        VersionPolicy.parse(self.version_policy)
        if isinstance(self.handlers, str) or not all(isinstance(h, str) and ":" in h for h in self.handlers):
            raise ServeError(f"handlers={self.handlers!r}: expected entries such as 'mypkg.handlers:TextHandler'")
        object.__setattr__(self, "handlers", tuple(self.handlers))
        if self.grpc_port is not None:
            _check_range("grpc_port", self.grpc_port, 0, 65535)
        _check_range("body_timeout_s", self.body_timeout_s, 0.01, 3600, " seconds")
        _check_range("inline_below_ms", self.inline_below_ms, 0, 100, " milliseconds")
        if not self.device or not isinstance(self.device, str):
            raise ServeError(f"device={self.device!r}: expected a device name such as 'cpu' or 'cuda:0'")

    def to_json(self) -> str:
        """Serialize (passed to ``--workers`` processes through the environment)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> ServeOptions:
        """Inverse of :meth:`to_json`; unknown keys are an error, not ignored."""
        data: Any = json.loads(raw)
        if not isinstance(data, dict):
            raise ServeError(f"server options: expected a JSON object, found {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ServeError(f"server options: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**data)
