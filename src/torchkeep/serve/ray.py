"""Ray Serve deployment of the torchkeep server: N replicas, one or many machines.

Each replica builds *our* ASGI app with :func:`torchkeep.serve.create_app` (Ray's late-bound
``serve.ingress``), so routes, dynamic batching, input validation, hot reload (``watch``) and
``/metrics`` are the single-process server's; Ray adds the replicas, an HTTP proxy per node that
spreads requests over them, restarts of dead replicas, autoscaling and rolling updates.

- :func:`build_app` returns a Ray Serve application (``serve.run(build_app("export/"))``).
- :func:`app_builder` is the same for ``serve run`` / ``serve deploy`` configs:
  ``serve run torchkeep.serve.ray:app_builder target=/models/export num_replicas=2``.
- :func:`run` is what ``torchkeep serve TARGET --ray`` runs: a local Ray instance, or one
  joined at ``address``.

A new version reaches every replica in one of two ways: run/deploy the application again with
the new target (Ray's rolling update starts replicas on the new version, then drains the old
ones), or give ``ServeOptions(watch=...)`` a directory every replica can read (each replica's
watcher verifies and swaps the new version in, as in one process).

Ray is imported only inside these functions (the ``ray`` extra).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ServeError, missing_dependency
from . import ServeOptions, create_app

__all__ = ["RayOptions", "app_builder", "build_app", "deployment_class", "run"]

logger = logging.getLogger(__name__)

_METRIC_LINE = re.compile(r"^(torchkeep_[a-z_]+)(?:\{([^}]*)\})? ([0-9.eE+-]+|NaN|[+-]Inf)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def _ray() -> Any:
    try:
        import ray
        from ray import serve  # noqa: F401  (the extra must include Serve, not only the core)
    except ImportError:
        raise missing_dependency("ray", "ray", "torchkeep serve --ray") from None
    return ray


@dataclass(frozen=True, kw_only=True)
class RayOptions:
    """How Ray runs the replicas (the server's own settings stay in :class:`ServeOptions`).

    Attributes:
        num_replicas: fixed number of replicas (ignored when ``autoscaling`` is given).
        autoscaling: a Ray Serve ``autoscaling_config`` (e.g. ``{"min_replicas": 1,
            "max_replicas": 8, "target_ongoing_requests": 32}``), or None for a fixed count.
        num_cpus: CPUs Ray reserves per replica (a scheduling figure; torch threads are
            ``ServeOptions.threads``).
        num_gpus: GPUs per replica (e.g. 1, or 0.5 to put two replicas on one GPU).
        max_ongoing_requests: requests Ray sends one replica at once; our batcher merges them,
            so this should be at least ``max_batch_size``.
        name: the Ray Serve application (and deployment) name.
        route_prefix: where the application is mounted on the Ray HTTP proxy.
        health_check_period_s: how often Ray asks each replica whether it is ready.
        graceful_shutdown_timeout_s: how long a replica being replaced may finish its requests.

    Example:
        >>> RayOptions(num_replicas=2).num_replicas
        2
    """

    num_replicas: int = 1
    autoscaling: Mapping[str, Any] | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_ongoing_requests: int = 64
    name: str = "torchkeep"
    route_prefix: str = "/"
    health_check_period_s: float = 5.0
    graceful_shutdown_timeout_s: float = 20.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, lo, hi in (("num_replicas", 1, 4096), ("max_ongoing_requests", 1, 1_000_000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ServeError(f"{name}={value!r}: expected an integer in [{lo}, {hi}]", option=name)
        for name in ("num_cpus", "num_gpus", "health_check_period_s", "graceful_shutdown_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ServeError(f"{name}={value!r}: expected a number >= 0", option=name)
        if self.autoscaling is not None and not isinstance(self.autoscaling, Mapping):
            raise ServeError(
                f"autoscaling={self.autoscaling!r}: expected a mapping such as "
                '{"min_replicas": 1, "max_replicas": 4}',
                option="autoscaling",
            )
        if not self.name or not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ServeError(f"name={self.name!r}: expected letters, digits, '_', '-' or '.'", option="name")
        if not self.route_prefix.startswith("/"):
            raise ServeError(
                f"route_prefix={self.route_prefix!r}: expected a path starting with '/'", option="route_prefix"
            )

    def deployment_options(self) -> dict[str, Any]:
        """The keyword arguments for Ray's ``Deployment.options``."""
        opts: dict[str, Any] = {
            "name": self.name,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            "health_check_period_s": self.health_check_period_s,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
        }
        if self.autoscaling is not None:
            opts["autoscaling_config"] = dict(self.autoscaling)
        else:
            opts["num_replicas"] = self.num_replicas
        opts.update(self.extra)
        return opts


async def _asgi_get(app: Any, path: str) -> tuple[int, bytes]:
    """GET ``path`` from an ASGI app in this process (no socket): the replica asks its own server."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
    }
    status = [500]
    chunks: list[bytes] = []
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Mapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status[0] = int(message["status"])
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))

    await app(scope, receive, send)
    return status[0], b"".join(chunks)


class _MetricsBridge:
    """Copies one replica's ``/metrics`` counters into Ray's metrics (per-replica tags added by Ray).

    Ray's proxy sends a ``GET /metrics`` to one replica at random, so a scrape through it sees one
    replica; Ray's own Prometheus endpoint (every node's metrics export port) sees all of them.
    """

    def __init__(self) -> None:
        from ray.serve import metrics

        keys = ("route", "status")
        self._requests = metrics.Counter(
            "torchkeep_requests", description="HTTP requests answered, by route and status.", tag_keys=keys
        )
        self._reloads = metrics.Counter("torchkeep_model_reloads", description="Hot reloads.", tag_keys=("result",))
        self._queue = metrics.Gauge("torchkeep_queue_depth", description="Requests waiting for the model.")
        self._seen: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def update(self, text: str) -> None:
        for line in text.splitlines():
            m = _METRIC_LINE.match(line)
            if m is None:
                continue
            name, labels, raw = m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))
            if name == "torchkeep_queue_depth":
                self._queue.set(raw)
                continue
            if name == "torchkeep_requests_total":
                counter, tags = self._requests, {"route": labels.get("route", ""), "status": labels.get("status", "")}
            elif name == "torchkeep_model_reloads_total":
                counter, tags = self._reloads, {"result": labels.get("result", "")}
            else:
                continue
            key = (name, tuple(sorted(tags.items())))
            delta = raw - self._seen.get(key, 0.0)
            if delta > 0:
                counter.inc(delta, tags=tags)
            self._seen[key] = raw


def deployment_class() -> Any:
    """The Ray Serve deployment class (built on first use, since Ray is optional).

    Its constructor takes ``(target, options_json)``; each replica then builds the app with
    :func:`torchkeep.serve.create_app`. Ray asks ``check_health`` (our ``/readyz``) every
    ``health_check_period_s`` and replaces a replica that fails it or dies.

    Example:
        >>> cls = deployment_class()  # doctest: +SKIP
        >>> app = cls.options(num_replicas=2).bind("export/", ServeOptions().to_json())  # doctest: +SKIP
    """
    global _DEPLOYMENT
    if _DEPLOYMENT is not None:
        return _DEPLOYMENT
    _ray()
    from ray import serve

    class TorchkeepServer:
        """One replica: our whole server (batcher, validation, watcher, metrics) in a Ray actor."""

        def __init__(self, target: str, options_json: str) -> None:
            self._target = target
            self._options = ServeOptions.from_json(options_json)
            self._app: Any = None
            self._bridge_task: asyncio.Task[None] | None = None

        def __serve_build_asgi_app__(self) -> Any:
            # Loads the model now: a replica that cannot load it fails to start, and Ray says why.
            self._app = create_app(self._target, options=self._options)
            return self._app

        async def check_health(self) -> None:
            if self._app is None:
                return
            if self._bridge_task is None:
                self._bridge_task = asyncio.get_running_loop().create_task(self._export_metrics())
            status, body = await _asgi_get(self._app, "/readyz")
            if status != 200:
                raise ServeError(f"replica not ready: /readyz answered {status} {body[:200]!r}")

        async def _export_metrics(self) -> None:
            try:
                bridge = _MetricsBridge()
            except Exception as exc:  # metrics must never take a replica down
                logger.warning("Ray metrics bridge disabled: %s: %s", type(exc).__name__, exc)
                return
            while True:
                try:
                    _, body = await _asgi_get(self._app, "/metrics")
                    bridge.update(body.decode())
                except Exception as exc:
                    logger.debug("metrics bridge: %s", exc)
                await asyncio.sleep(5.0)

    _DEPLOYMENT = serve.deployment(serve.ingress()(TorchkeepServer))
    return _DEPLOYMENT


_DEPLOYMENT: Any = None


def build_app(target: str, *, options: ServeOptions | None = None, ray_options: RayOptions | None = None) -> Any:
    """A Ray Serve application serving ``target`` with our app in every replica.

    Args:
        target: what ``torchkeep serve`` takes (model file, export, checkpoint or manager
            directory). Every node must see it at this path (a shared volume on a cluster).
        options: the server's batching, limits and reload settings (the same per replica).
        ray_options: replicas, resources, autoscaling.

    Returns:
        A ``ray.serve.Application`` for ``serve.run``.

    Example:
        >>> from ray import serve  # doctest: +SKIP
        >>> serve.run(build_app("export/", ray_options=RayOptions(num_replicas=2)))  # doctest: +SKIP
    """
    if not isinstance(target, (str, os.PathLike)) or not str(target):
        raise ServeError(f"target={target!r}: expected a path to a model file or directory", option="target")
    opts = options if options is not None else ServeOptions()
    ropts = ray_options if ray_options is not None else RayOptions()
    path = os.path.abspath(str(target))
    if not os.path.exists(path):
        # On a cluster the path may exist only on worker nodes; say so, but let the replicas decide.
        logger.warning("%s does not exist on this machine; the replicas must see it at this path", path)
    return deployment_class().options(**ropts.deployment_options()).bind(path, opts.to_json())


def _coerce(name: str, raw: Any, kind: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    kind_s = str(kind)
    if "tuple" in kind_s:
        return json.loads(text) if text.startswith("[") else tuple(t for t in text.split(",") if t)
    if kind_s.startswith("bool"):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ServeError(f"{name}={raw!r}: expected true or false", option=name)
    if kind_s.startswith("int"):
        return int(text)
    if kind_s.startswith("float"):
        return float(text)
    if "Mapping" in kind_s:
        return json.loads(text)
    if "None" in kind_s and text.lower() in ("", "none", "null"):
        return None
    return text


def app_builder(args: Mapping[str, Any]) -> Any:
    """Application builder for Ray's ``serve run`` / ``serve deploy`` (import path ``torchkeep.serve.ray:app_builder``).

    ``args`` holds ``target`` plus any :class:`ServeOptions` and :class:`RayOptions` field
    (``serve run`` passes ``key=value`` strings; a config file's ``args:`` may use real types).

    Raises:
        ServeError: no target, or an argument that is neither a server nor a Ray option.

    Example:
        >>> # serve run torchkeep.serve.ray:app_builder target=/models/export num_replicas=2 max_batch_size=64
        >>> app = app_builder({"target": "export/", "num_replicas": "2"})  # doctest: +SKIP
    """
    if not isinstance(args, Mapping):
        raise ServeError(f"args={args!r}: expected a mapping such as {{'target': '/models/export'}}", option="args")
    rest = dict(args)
    target = rest.pop("target", None)
    if not target:
        raise ServeError(
            "app_builder: no target; pass target=/path/to/export (serve run) or args: {target: ...} (config)",
            option="target",
        )
    serve_fields = {f.name: f.type for f in dataclasses.fields(ServeOptions)}
    ray_fields = {f.name: f.type for f in dataclasses.fields(RayOptions)}
    serve_kw: dict[str, Any] = {}
    ray_kw: dict[str, Any] = {}
    for key, raw in rest.items():
        try:
            if key in serve_fields:
                serve_kw[key] = _coerce(key, raw, serve_fields[key])
            elif key in ray_fields:
                ray_kw[key] = _coerce(key, raw, ray_fields[key])
            else:
                raise ServeError(
                    f"app_builder: unknown argument {key!r}; known: target, {sorted(serve_fields)}, {sorted(ray_fields)}",
                    option=key,
                )
        except (ValueError, json.JSONDecodeError) as exc:
            if isinstance(exc, ServeError):
                raise
            raise ServeError(f"{key}={raw!r}: {exc}", option=key) from exc
    return build_app(str(target), options=ServeOptions(**serve_kw), ray_options=RayOptions(**ray_kw))


def run(
    target: str,
    *,
    options: ServeOptions | None = None,
    ray_options: RayOptions | None = None,
    address: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    blocking: bool = True,
    num_cpus: int | None = None,
) -> Any:
    """Deploy ``target`` on Ray and serve it on ``host:port`` (``torchkeep serve TARGET --ray``).

    Args:
        target: what ``torchkeep serve`` takes.
        options: the server settings of every replica.
        ray_options: replicas, resources, autoscaling.
        address: a running cluster (``ray://head:10001`` or ``auto``); None starts a local instance.
        host: where Ray's HTTP proxy listens (``0.0.0.0`` in a container).
        port: the proxy's port.
        blocking: serve until interrupted, then shut the application down.
        num_cpus: CPUs of a local instance (None: all of them).

    Returns:
        The application's handle when ``blocking`` is False.

    Raises:
        ServeError: Ray could not start, join the cluster or deploy the application.

    Example:
        >>> run("export/", ray_options=RayOptions(num_replicas=2), port=8000)  # doctest: +SKIP
    """
    ray = _ray()
    from ray import serve

    ropts = ray_options if ray_options is not None else RayOptions()
    app = build_app(target, options=options, ray_options=ropts)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        if not ray.is_initialized():
            if address is None:
                # Replicas run in Ray worker processes: give them this directory on sys.path, as
                # `torchkeep serve --import` has, so that the user's model modules import there too.
                path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
                ray.init(
                    num_cpus=num_cpus,
                    include_dashboard=False,
                    log_to_driver=False,
                    runtime_env={"env_vars": {"PYTHONPATH": path}},
                )
            else:
                ray.init(address=address, log_to_driver=False)
        serve.start(http_options={"host": host, "port": port})
        handle = serve.run(app, name=ropts.name, route_prefix=ropts.route_prefix, blocking=False)
    except Exception as exc:
        raise ServeError(
            f"Ray Serve could not deploy {target} ({type(exc).__name__}: {exc}); "
            "check that the Ray address is right and the replicas' logs (`ray logs`)"
        ) from exc
    logger.info("Ray Serve: %s on http://%s:%d%s", target, host, port, ropts.route_prefix)
    if not blocking:
        return handle
    import signal
    import threading
    import time

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        # `docker stop` / Kubernetes send SIGTERM: shut the application and a local Ray down cleanly.
        signal.signal(signal.SIGTERM, _stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(ropts.name)
        if address is None:
            serve.shutdown()
            ray.shutdown()
    return None
