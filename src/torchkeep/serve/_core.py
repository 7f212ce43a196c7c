"""The serving core: a registry of loaded models and versions, each with its predictor, batcher and specs.

Every front end (``/predict`` + ``/v1``, Open Inference Protocol REST and gRPC, a Ray Serve
deployment) decodes its wire format into numpy arrays and calls :meth:`LoadedModel.infer`;
none of them batches or validates on its own. The core needs no server: build one with
:meth:`ServingCore.from_target`, ``await core.start()``, then ``await core.get(name).infer(...)``.

Registry updates (load, unload, hot reload) replace whole dictionaries (copy-on-write), so a
request resolving a model on the event loop never sees a half-built entry; an unloaded
version stops taking new requests at once and finishes the ones already queued.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ServeError, TorchkeepError, UsageError
from ..runtime._base import Predictor, TensorSpec
from ._batching import Batcher, ModelSlot
from ._handlers import Handler, handler_from_file, import_handler
from ._inputs import Reject, check_array
from ._loading import check_compatible, find_version, load_kwargs, load_slot, time_batch, warm_up
from ._metrics import Metrics
from ._options import ServeOptions
from ._repository import HANDLER_FILE, VersionPolicy, is_repository, model_versions, scan_repository

__all__ = ["LoadedModel", "ServingCore"]

logger = logging.getLogger(__name__)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def _artifact_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                continue
    return total


def _expire(fut: asyncio.Future[Any], timeout_ms: float) -> None:
    if not fut.done():
        fut.set_exception(
            Reject(
                504,
                "timeout",
                f"no answer within {timeout_ms:g} ms (--timeout-ms); the server is overloaded, retry later",
            )
        )


class LoadedModel:
    """One servable model version: its slot (predictor), batcher, handler and client-facing specs.

    Example:
        >>> entry = core.get("bert", "1")  # doctest: +SKIP
        >>> outputs = await entry.infer([np.array([b"a sentence"], dtype=object)])  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        version: str,
        slot: ModelSlot,
        options: ServeOptions,
        *,
        metrics: Metrics | None,
        handler: Handler | None = None,
        directory: str | None = None,
        memory_bytes: int = 0,
    ) -> None:
        self.name = name
        self.version = version
        self.slot = slot
        self.options = options
        self.handler = handler
        self.directory = directory
        self.memory_bytes = memory_bytes
        self.ready = False
        self.refused: dict[str, str] = {}  # hot-reload candidates that failed their checks
        self.batcher = Batcher(
            lambda: self.slot,
            max_batch_size=options.max_batch_size,
            max_wait_ms=options.max_wait_ms,
            max_queue=options.max_queue,
            metrics=metrics,
        )
        self.inputs, self._outputs = self._client_specs(slot.predictor)

    def _client_specs(self, predictor: Predictor) -> tuple[list[TensorSpec], list[TensorSpec] | None]:
        if self.handler is None:
            return list(predictor.inputs), None
        try:
            inputs, outputs = self.handler.setup(predictor.inputs, predictor.outputs)
        except TorchkeepError:
            raise
        except Exception as exc:
            raise ServeError(f"model {self.name!r}: the handler's setup failed ({type(exc).__name__}: {exc})") from exc
        return list(inputs), list(outputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        """Output specs clients receive (the handler's, or the model's)."""
        return self._outputs if self._outputs is not None else self.slot.predictor.outputs

    def swap(self, slot: ModelSlot) -> None:
        """Serve ``slot`` from the next batch on (hot reload); the running batch finishes on the old one."""
        self.slot = slot

    def describe(self) -> dict[str, Any]:
        """Name, version, backend, source and memory, for metadata answers."""
        return {"name": self.name, **self.slot.describe(), "repository_version": self.version}

    def check(self, values: Sequence[Any], *, batched: bool = True) -> list[np.ndarray[Any, Any]]:
        """Validate client values (arrays or nested lists, in input-spec order) against the input specs.

        Raises:
            Reject: 422 naming the input and the expected dtype/shape.
        """
        allow = self.options.allow_non_finite
        arrays = [
            check_array(v, s, batched=batched, allow_non_finite=allow, where=s.name)
            for v, s in zip(values, self.inputs, strict=True)
        ]
        sizes = {a.shape[0] for a in arrays}
        if len(sizes) > 1:
            found = {s.name: a.shape[0] for a, s in zip(arrays, self.inputs, strict=True)}
            raise Reject(422, "invalid_input", f"inputs have different batch sizes {found}; give every input the same")
        return arrays

    async def infer(self, arrays: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        """Run checked client inputs through handler, batcher and model; outputs in :attr:`outputs` order.

        Raises:
            Reject: 400 (handler refused the input), 503 (queue full, not ready), 504 (timeout).
        """
        handler = self.handler
        if handler is not None:
            try:
                arrays = handler.preprocess(arrays)
            except UsageError as exc:
                raise Reject(400, "invalid_input", f"model {self.name!r}: {exc}") from None
        outputs = await self._batched(arrays)
        if handler is not None:
            try:
                outputs = handler.postprocess(outputs)
            except UsageError as exc:
                raise Reject(400, "invalid_input", f"model {self.name!r}: {exc}") from None
        return outputs

    async def _batched(self, arrays: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        loop = asyncio.get_running_loop()
        timeout_ms = self.options.timeout_ms
        n, limit = int(arrays[0].shape[0]), self.options.max_batch_size
        if n <= limit:
            fut = self.batcher.submit(arrays)
            timer = loop.call_later(timeout_ms / 1000.0, _expire, fut, timeout_ms)
            try:
                return await fut
            finally:
                timer.cancel()
        # A batch larger than --max-batch-size runs as several model calls, never one oversized
        # one. Chunks are queued two at a time: requests that arrive meanwhile are served between
        # them instead of waiting behind the whole request. It takes one place of the queue.
        chunks = [[a[s : s + limit] for a in arrays] for s in range(0, n, limit)]
        futs: list[asyncio.Future[list[np.ndarray[Any, Any]]]] = []
        queued_last = False
        try:
            async with asyncio.timeout(timeout_ms / 1000.0):
                for i, chunk in enumerate(chunks):
                    last = i == len(chunks) - 1
                    futs.append(self.batcher.submit(chunk, first=i == 0, last=last))
                    queued_last = last
                    if len(futs) >= 2:
                        await futs[-2]
                parts = await asyncio.gather(*futs)
        except TimeoutError:
            raise Reject(
                504, "timeout", f"no answer within {timeout_ms:g} ms (--timeout-ms); the server is overloaded"
            ) from None
        finally:
            for f in futs:
                if not f.done():
                    f.cancel()  # queued chunks of an abandoned request are skipped, not run
            if futs and not queued_last:
                self.batcher.release()
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]

    def start(self) -> None:
        """Warm the model up (blocking) and start its batcher; then it is ready."""
        if self.options.warmup:
            warm_up(self.slot.predictor, (1, self.options.max_batch_size))
        inline = False
        if self.options.inline_below_ms > 0 and self.handler is None:
            seconds = time_batch(self.slot.predictor, self.options.max_batch_size)
            inline = seconds * 1000 < self.options.inline_below_ms
        self.batcher.start(inline=inline)
        self.ready = True

    def stop(self, drain_s: float = 10.0) -> None:
        """Stop taking requests; finish the queued ones (up to ``drain_s``), then stop the batcher."""
        self.ready = False
        deadline = time.monotonic() + drain_s
        while (self.batcher.depth or self.batcher.busy) and time.monotonic() < deadline:
            time.sleep(0.005)
        self.batcher.stop()


class ServingCore:
    """The registry of loaded models: ``{name: {version: LoadedModel}}``, plus load/unload/reload.

    Args:
        options: batching, limits, repository and handler settings shared by every model.
        repository: the ``name/version/`` directory, or None for one model.

    Example:
        >>> core = ServingCore.from_target("models/", ServeOptions(version_policy="all"))  # doctest: +SKIP
        >>> await core.start()  # doctest: +SKIP
        >>> entry = core.get("mlp", "2")  # doctest: +SKIP
        >>> outputs = await entry.infer(entry.check([[[0.1] * 10]]))  # doctest: +SKIP
    """

    def __init__(self, options: ServeOptions, *, repository: str | None = None) -> None:
        self.options = options
        self.repository = repository
        self.policy = VersionPolicy.parse(options.version_policy)
        self.metrics = Metrics(queue_depth=lambda: self.depth, models=self.memory_table)
        self.models: dict[str, dict[str, LoadedModel]] = {}
        self.states: dict[tuple[str, str], tuple[str, str]] = {}
        self.unloaded: set[str] = set()
        self.ready = False
        self._cli_handlers = self._parse_handlers(options.handlers)
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_target(cls, target: str | Predictor, options: ServeOptions) -> ServingCore:
        """Load ``target``: a repository (every model, per the version policy), one model, or a Predictor.

        Raises:
            ServeError: a bad repository, handler or option; loader errors for a bad model.
        """
        if isinstance(target, Predictor):
            core = cls(options)
            slot = ModelSlot(predictor=target, version="in-process", source=type(target).__name__)
            core._publish(core._entry(options.model_name, "1", slot, directory=None))
            return core
        target = str(target)
        if is_repository(target):
            core = cls(options, repository=target)
            found = scan_repository(target)
            if options.default_model is not None and options.default_model not in found:
                raise ServeError(
                    f"--default-model {options.default_model!r}: not in the repository (models: {sorted(found)})",
                    option="default_model",
                )
            for name in found:
                core._load_versions(name)
            return core
        core = cls(options)
        before = _rss_bytes()
        slot = load_slot(target, **load_kwargs(options))
        handler = core._handler_for(options.model_name, target if os.path.isdir(target) else None)
        entry = core._entry(options.model_name, "1", slot, directory=target, handler=handler)
        entry.memory_bytes = max(_rss_bytes() - before, 0) or _artifact_bytes(slot.source)
        core._publish(entry)
        return core

    @staticmethod
    def _parse_handlers(refs: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for ref in refs:
            name, sep, rest = ref.partition("=")
            if sep and ":" not in name:
                out[name] = rest
            else:
                out["*"] = ref
        return out

    def _handler_for(self, name: str, model_dir: str | None) -> Handler | None:
        ref = self._cli_handlers.get(name) or self._cli_handlers.get("*")
        if ref is not None:
            return import_handler(ref)
        if model_dir is not None:
            path = os.path.join(model_dir, HANDLER_FILE)
            if os.path.isfile(path):
                return handler_from_file(model_dir, path)
        return None

    def _entry(
        self,
        name: str,
        version: str,
        slot: ModelSlot,
        *,
        directory: str | None,
        handler: Handler | None = None,
    ) -> LoadedModel:
        return LoadedModel(
            name, version, slot, self.options, metrics=self.metrics, handler=handler, directory=directory
        )

    def _publish(self, entry: LoadedModel) -> None:
        with self._lock:
            versions = {**self.models.get(entry.name, {}), entry.version: entry}
            self.models = {**self.models, entry.name: dict(sorted(versions.items(), key=lambda kv: _vkey(kv[0])))}
            self.states[(entry.name, entry.version)] = ("READY" if entry.ready else "LOADING", "")

    def _load_versions(self, name: str, *, start: bool = False) -> list[LoadedModel]:
        """Load the versions of ``name`` the policy selects and that are not loaded yet (blocking)."""
        assert self.repository is not None
        model_dir = os.path.join(self.repository, name)
        available = model_versions(model_dir)
        if not available:
            raise Reject(404, "not_found", f"model {name!r} is not in the repository {self.repository}")
        wanted = [str(v) for v in self.policy.select(list(available))]
        loaded: list[LoadedModel] = []
        with self._lock:
            have = self.models.get(name, {})
            for version in wanted:
                if version in have:
                    continue
                path = available[int(version)]
                before = _rss_bytes()
                try:
                    slot = load_slot(path, **load_kwargs(self.options))
                    entry = self._entry(name, version, slot, directory=path, handler=self._handler_for(name, model_dir))
                    if start:
                        entry.start()
                except Exception as exc:
                    self.states[(name, version)] = ("UNAVAILABLE", f"{type(exc).__name__}: {exc}")
                    if not start:
                        raise
                    logger.error("model %s version %s: failed to load: %s", name, version, exc)
                    continue
                entry.memory_bytes = max(_rss_bytes() - before, 0) or _artifact_bytes(path)
                self._publish(entry)
                loaded.append(entry)
            stale = [v for v in have if v not in wanted]
        for version in stale:
            self._remove(name, version)
        return loaded

    # ---- lookups ------------------------------------------------------------------------------

    @property
    def default_name(self) -> str:
        """The model ``/predict`` and ``/v1/predict`` serve."""
        if self.options.default_model is not None:
            return self.options.default_model
        return next(iter(self.models), self.options.model_name)

    def get(self, name: str | None = None, version: str | None = None) -> LoadedModel:
        """The entry for ``name`` (default model when None) at ``version`` (newest loaded when None/"").

        Raises:
            Reject: 404 for an unknown model or version.
        """
        key = self.default_name if name is None else name
        versions = self.models.get(key)
        if not versions:
            known = sorted(self.models)
            raise Reject(404, "not_found", f"unknown model {key!r}; loaded models: {known}")
        if not version:
            return next(reversed(versions.values()))
        entry = versions.get(version)
        if entry is None:
            raise Reject(404, "not_found", f"model {key!r} has no loaded version {version!r}; loaded: {list(versions)}")
        return entry

    def entries(self) -> list[LoadedModel]:
        """Every loaded version, by model name then version."""
        return [e for versions in self.models.values() for e in versions.values()]

    @property
    def depth(self) -> int:
        """Requests waiting in every model's queue."""
        return sum(e.batcher.depth for e in self.entries())

    def memory_table(self) -> list[tuple[str, str, int]]:
        """``(name, version, bytes)`` per loaded version (resident memory growth while it loaded)."""
        return [(e.name, e.version, e.memory_bytes) for e in self.entries()]

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """The repository index: every model version known, with its state (``READY``, ``UNAVAILABLE``, ...)."""
        rows: dict[tuple[str, str], dict[str, str]] = {}
        if self.repository is not None:
            for name, versions in scan_repository(self.repository).items():
                for v in versions:
                    state, reason = self.states.get((name, str(v)), ("UNAVAILABLE", "not loaded"))
                    rows[(name, str(v))] = {"name": name, "version": str(v), "state": state, "reason": reason}
        for e in self.entries():
            rows[(e.name, e.version)] = {"name": e.name, "version": e.version, "state": "READY", "reason": ""}
        out = [rows[k] for k in sorted(rows, key=lambda k: (k[0], _vkey(k[1])))]
        return [r for r in out if r["state"] == "READY"] if ready_only else out

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Warm up every loaded version (off the event loop) and start its batcher; then ready."""
        self._loop = asyncio.get_running_loop()
        if self.options.threads:
            import torch

            torch.set_num_threads(self.options.threads)
        for entry in self.entries():
            await asyncio.to_thread(entry.start)
            self.states[(entry.name, entry.version)] = ("READY", "")
        self.ready = True

    async def stop(self) -> None:
        """Stop every batcher; running batches finish."""
        self.ready = False
        for entry in self.entries():
            entry.ready = False
            await asyncio.to_thread(entry.batcher.stop)

    async def load(self, name: str) -> list[LoadedModel]:
        """Repository extension ``load``: load (or reload) ``name``'s versions per the policy.

        Raises:
            Reject: 400 without a repository, 404 for an unknown model, 400 when loading failed.
        """
        if self.repository is None:
            raise Reject(400, "invalid_request", "this server serves one model, not a repository; nothing to load")
        self.unloaded.discard(name)
        try:
            return await asyncio.to_thread(self._load_versions, name, start=True)
        except Reject:
            raise
        except TorchkeepError as exc:
            raise Reject(400, "load_failed", f"model {name!r}: {exc}") from None

    async def unload(self, name: str) -> None:
        """Repository extension ``unload``: stop serving ``name``; queued requests still finish.

        Raises:
            Reject: 404 for a model that is not loaded.
        """
        versions = self.models.get(name)
        if not versions:
            raise Reject(404, "not_found", f"model {name!r} is not loaded; loaded models: {sorted(self.models)}")
        self.unloaded.add(name)
        # Removed from the registry here, on the event loop: a request that resolved the model
        # before this line has already queued its work, and that work is drained below.
        with self._lock:
            self.models = {k: v for k, v in self.models.items() if k != name}
            for version in versions:
                self.states[(name, version)] = ("UNAVAILABLE", "unloaded")
        for entry in versions.values():
            await asyncio.to_thread(entry.stop)

    def _remove(self, name: str, version: str) -> None:
        with self._lock:
            versions = dict(self.models.get(name, {}))
            entry = versions.pop(version, None)
            self.models = (
                {**self.models, name: versions} if versions else {k: v for k, v in self.models.items() if k != name}
            )
            self.states[(name, version)] = ("UNAVAILABLE", "not selected by the version policy")
        if entry is not None:
            entry.stop()

    def poll_once(self) -> bool:
        """Hot reload (blocking): new versions per policy, removed ones dropped, changed ones reloaded.

        Returns True when anything changed.
        """
        changed = False
        if self.repository is not None:
            for name in scan_repository(self.repository):
                if name in self.unloaded:
                    continue
                try:
                    changed |= bool(self._load_versions(name, start=True))
                except Exception as exc:  # one broken model must not stop the others
                    logger.error("hot reload: model %s: %s", name, exc)
        for entry in self.entries():
            if entry.directory is not None:
                changed |= self.reload_entry(entry)
        return changed

    def reload_entry(self, entry: LoadedModel) -> bool:
        """Swap in a newer build of ``entry``'s folder (checked and warmed up first); True when swapped."""
        assert entry.directory is not None
        try:
            path, label = find_version(entry.directory)
        except TorchkeepError:
            return False
        current = entry.slot
        refused = entry.refused
        if label == current.version or label in refused:
            return False
        try:
            slot = load_slot(path, **load_kwargs(self.options))
            check_compatible(current.predictor.inputs, slot.predictor.inputs)
            warm_up(slot.predictor, (1, min(4, self.options.max_batch_size)))
        except Exception as exc:
            refused[label] = f"{type(exc).__name__}: {exc}"
            self.metrics.observe_reload(False)
            logger.error("hot reload: refused %s (%s); still serving %s", path, exc, current.version)
            return False
        entry.swap(slot)
        self.metrics.observe_reload(True)
        logger.warning("hot reload: model %s now serves %s (was %s)", entry.name, slot.version, current.version)
        return True


def _vkey(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (0, version)
