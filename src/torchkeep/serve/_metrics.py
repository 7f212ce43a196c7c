"""Prometheus metrics, written in the text exposition format (no extra dependency).

Updates come from the event loop (requests) and the inference thread (batches); one lock keeps
each update and the rendering consistent. Label values are bounded (known routes, status
codes), so the series count cannot grow with traffic.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence

__all__ = ["Histogram", "Metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics: ``le`` buckets, ``_sum``, ``_count``).

    Example:
        >>> h = Histogram((1.0, 2.0))
        >>> h.observe(1.5)
        >>> h.count, h.total
        (1, 1.5)
    """

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Add one observation."""
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.count += 1
        self.total += value

    def render(self, name: str, labels: str = "") -> list[str]:
        """Exposition lines for this histogram (``labels``: ``key="v",`` prefix or empty)."""
        lines, acc = [], 0
        for bound, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            lines.append(f'{name}_bucket{{{labels}le="{_num(bound)}"}} {acc}')
        lines.append(f'{name}_bucket{{{labels}le="+Inf"}} {self.count}')
        suffix = f"{{{labels.rstrip(',')}}}" if labels else ""
        lines.append(f"{name}_sum{suffix} {self.total!r}")
        lines.append(f"{name}_count{suffix} {self.count}")
        return lines


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and x >= 1 else repr(float(x))


class Metrics:
    """Request counts by route and status, latency, batch sizes, queue depth, reloads.

    Example:
        >>> m = Metrics()
        >>> m.observe_request("/predict", 200, 0.003)
        >>> "torchkeep_requests_total" in m.render()
        True
    """

    def __init__(
        self,
        queue_depth: Callable[[], int] | None = None,
        models: Callable[[], list[tuple[str, str, int]]] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.batch_size = Histogram(_BATCH_BUCKETS)
        self.inference = Histogram(_LATENCY_BUCKETS)
        self.reloads: dict[str, int] = {"ok": 0, "refused": 0}
        self.queue_depth = queue_depth
        self.models = models

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        with self._lock:
            key = (route, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            hist = self.latency.get(route)
            if hist is None:
                hist = self.latency[route] = Histogram(_LATENCY_BUCKETS)
            hist.observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one model call: examples in it and how long it ran."""
        with self._lock:
            self.batch_size.observe(size)
            self.inference.observe(seconds)

    def observe_reload(self, ok: bool) -> None:
        """Count one hot-reload attempt."""
        with self._lock:
            self.reloads["ok" if ok else "refused"] += 1

    def render(self) -> str:
        """The whole registry in Prometheus text format 0.0.4."""
        with self._lock:
            lines = [
                "# HELP torchkeep_requests_total HTTP requests answered, by route and status code.",
                "# TYPE torchkeep_requests_total counter",
            ]
            for (route, status), n in sorted(self.requests.items()):
                lines.append(f'torchkeep_requests_total{{route="{route}",status="{status}"}} {n}')
            lines += [
                "# HELP torchkeep_request_duration_seconds Time from request start to response, by route.",
                "# TYPE torchkeep_request_duration_seconds histogram",
            ]
            for route, hist in sorted(self.latency.items()):
                lines += hist.render("torchkeep_request_duration_seconds", f'route="{route}",')
            lines += [
                "# HELP torchkeep_batch_size Examples per model call.",
                "# TYPE torchkeep_batch_size histogram",
                *self.batch_size.render("torchkeep_batch_size"),
                "# HELP torchkeep_inference_duration_seconds Time per model call.",
                "# TYPE torchkeep_inference_duration_seconds histogram",
                *self.inference.render("torchkeep_inference_duration_seconds"),
                "# HELP torchkeep_queue_depth Requests waiting for the model.",
                "# TYPE torchkeep_queue_depth gauge",
                f"torchkeep_queue_depth {self.queue_depth() if self.queue_depth else 0}",
                "# HELP torchkeep_model_reloads_total Hot-reload attempts, by result.",
                "# TYPE torchkeep_model_reloads_total counter",
            ]
            for result, n in sorted(self.reloads.items()):
                lines.append(f'torchkeep_model_reloads_total{{result="{result}"}} {n}')
            lines += [
                "# HELP torchkeep_model_memory_bytes Resident memory each loaded model version added when it loaded.",
                "# TYPE torchkeep_model_memory_bytes gauge",
            ]
            for name, version, size in self.models() if self.models else []:
                lines.append(f'torchkeep_model_memory_bytes{{model="{name}",version="{version}"}} {size}')
        return "\n".join(lines) + "\n"
