"""Ray Serve: a real local Ray instance (2 CPUs), 2 replicas of our app, load over 127.0.0.1.

One test walks the whole life of a deployment (starting Ray costs ~20 s, so it is paid once):
steady load, a replica killed mid-load and replaced, a rolling update to a new version. Every
load loop is bounded in requests and in time. Ray and Serve are shut down even on failure.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray
import torch
from ray import serve

from torchkeep.errors import ServeError
from torchkeep.serve import ServeOptions
from torchkeep.serve.ray import RayOptions, app_builder, build_app

from .conftest import SeedMLP, eager_out, export_onnx, free_port

ROOT = Path(__file__).resolve().parents[2]
APP = "tk-test"
CLIENTS = 6
XS = np.random.default_rng(3).standard_normal((32, 10)).astype(np.float32)


@dataclass
class Load:
    """Results of one bounded load run: per request (time sent, status or error, which model answered)."""

    statuses: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    matched: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def failed(self) -> int:
        return len(self.errors) + sum(1 for s in self.statuses if s != 200)


def _drive(base: str, expected: dict[str, np.ndarray], stop: threading.Event, per_client: int, out: Load) -> None:
    """``CLIENTS`` threads, each sending up to ``per_client`` requests until ``stop`` is set."""

    def client(k: int) -> None:
        with httpx.Client(base_url=base, timeout=30.0) as c:
            for n in range(per_client):
                if stop.is_set():
                    return
                i = (k * 7 + n) % len(XS)
                try:
                    r = c.post("/predict", json={"values": XS[i].tolist()})
                except httpx.HTTPError as exc:
                    with out.lock:
                        out.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                with out.lock:
                    out.statuses.append(r.status_code)
                    if r.status_code != 200:
                        continue
                    got = np.asarray(r.json()["prediction"], dtype=np.float32)
                    for name, want in expected.items():
                        if np.allclose(got, want[i : i + 1], rtol=1e-4, atol=1e-5):
                            out.matched[name] = out.matched.get(name, 0) + 1
                            break
                    else:
                        out.wrong.append(f"input {i}: {got.tolist()}")

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))


def _background(
    base: str, expected: dict[str, np.ndarray], per_client: int
) -> tuple[threading.Thread, threading.Event, Load]:
    stop, out = threading.Event(), Load()
    thread = threading.Thread(target=_drive, args=(base, expected, stop, per_client, out), daemon=True)
    thread.start()
    return thread, stop, out


def _replicas() -> set[str]:
    return {
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{APP}#")
    }


def _running_replicas() -> int:
    app = serve.status().applications.get(APP)
    if app is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture
def ray_serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    port = free_port()
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}}
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _version(tmp_path: Path, name: str, seed: int) -> tuple[Path, np.ndarray]:
    torch.manual_seed(seed)
    model = SeedMLP().eval()
    (tmp_path / name).mkdir()
    path = export_onnx(model, torch.randn(1, 10), tmp_path / name / "model.onnx")
    return path, eager_out(model, XS)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_two_replicas_survive_a_killed_replica_and_roll_out_a_new_version(tmp_path: Path, ray_serve: str) -> None:
    v1, out1 = _version(tmp_path, "v1", seed=1)
    v2, out2 = _version(tmp_path, "v2", seed=2)
    assert not np.allclose(out1, out2)
    ropts = RayOptions(num_replicas=2, num_cpus=0.5, health_check_period_s=1.0, graceful_shutdown_timeout_s=10.0)
    sopts = ServeOptions(max_batch_size=16, max_wait_ms=2.0)
    serve.run(build_app(str(v1), options=sopts, ray_options=ropts), name=APP, route_prefix="/")
    base = ray_serve
    assert _running_replicas() == 2
    first = _replicas()
    assert len(first) == 2

    # Same routes, validation and metadata as one process: it is our app in every replica.
    meta = httpx.get(base + "/v1/metadata", timeout=10).json()
    assert meta["inputs"] == [{"name": "x", "shape": [None, 10], "dtype": "float32"}]
    assert meta["batching"]["max_batch_size"] == 16
    bad = httpx.post(base + "/predict", json={"values": [1.0, 2.0]}, timeout=10)
    assert bad.status_code == 422, bad.text
    assert bad.json()["error"]["type"]

    # 1. Steady load: every answer correct, no 5xx.
    steady = Load()
    _drive(base, {"v1": out1}, threading.Event(), 20, steady)
    assert len(steady.statuses) == CLIENTS * 20 and steady.failed == 0, (steady.statuses, steady.errors)
    assert steady.matched == {"v1": CLIENTS * 20} and not steady.wrong

    # 2. Kill one replica's actor mid-load; Ray starts a replacement and traffic recovers.
    thread, stop, during = _background(base, {"v1": out1}, per_client=400)
    time.sleep(1.0)
    victim = sorted(first)[0]
    sent_before_kill = len(during.statuses) + len(during.errors)
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    t_kill = time.monotonic()
    _wait(
        lambda: victim not in _replicas() and len(_replicas()) == 2 and _running_replicas() == 2, 120, "a new replica"
    )
    recovery_s = time.monotonic() - t_kill
    stop.set()
    thread.join(60)
    assert not thread.is_alive()
    assert not during.wrong
    # At most the requests in flight at the kill can fail: one per client.
    assert during.failed <= CLIENTS, (during.failed, during.errors[:5], sorted(set(during.statuses)))
    after = Load()
    _drive(base, {"v1": out1}, threading.Event(), 10, after)
    assert after.failed == 0 and after.matched == {"v1": CLIENTS * 10}, (after.statuses, after.errors)
    print(
        f"\nray kill: {sent_before_kill} requests before the kill, {len(during.statuses) + len(during.errors)} in all "
        f"during it, {during.failed} failed (in flight on the killed replica); replacement running after "
        f"{recovery_s:.1f} s; {len(after.statuses)} after recovery, 0 failed"
    )

    # 3. Roll out a new version under load: no request fails; old and new answer during the switch.
    thread, stop, rollout = _background(base, {"v1": out1, "v2": out2}, per_client=2000)
    time.sleep(0.5)
    t0 = time.monotonic()
    serve.run(build_app(str(v2), options=sopts, ray_options=ropts), name=APP, route_prefix="/")
    _wait(lambda: _running_replicas() == 2 and not (_replicas() & first), 120, "the old replicas to stop")
    rollout_s = time.monotonic() - t0
    time.sleep(1.0)
    stop.set()
    thread.join(60)
    assert not thread.is_alive()
    assert rollout.failed == 0, (rollout.errors[:5], sorted(set(rollout.statuses)))
    assert not rollout.wrong
    assert rollout.matched.get("v2", 0) > 0
    final = Load()
    _drive(base, {"v2": out2}, threading.Event(), 5, final)
    assert final.failed == 0 and final.matched == {"v2": CLIENTS * 5}
    print(
        f"rollout: {len(rollout.statuses)} requests during the update ({rollout.matched}), 0 failed; "
        f"new version on every replica after {rollout_s:.1f} s"
    )

    # 4. Metrics: each replica's counters reach Ray's Prometheus endpoint, labelled by replica.
    metrics_url = f"http://127.0.0.1:{ray._private.worker.global_worker.node.metrics_export_port}/metrics"

    def replicas_exporting() -> set[str]:
        text = httpx.get(metrics_url, timeout=10).text
        return {
            m.group(1)
            for line in text.splitlines()
            if line.startswith("ray_torchkeep_requests_total{")
            and 'route="/predict"' in line
            and 'status="200"' in line
            for m in [re.search(r'replica="([^"]+)"', line)]
            if m is not None and float(line.rsplit(" ", 1)[1]) > 0
        }

    _wait(lambda: len(replicas_exporting()) >= 2, 60, "two replicas' request counters in Ray's metrics")


def test_app_builder_takes_serve_run_arguments(tmp_path: Path) -> None:
    v1, _ = _version(tmp_path, "v1", seed=1)
    app = app_builder({"target": str(v1), "num_replicas": "3", "max_batch_size": "8", "num_cpus": "0.25"})
    deployment = app._bound_deployment  # the Application's deployment, as `serve build` reads it
    assert deployment.num_replicas == 3
    assert deployment.ray_actor_options["num_cpus"] == 0.25
    target, options_json = app._bound_deployment.init_args
    assert target == os.path.abspath(v1)
    assert ServeOptions.from_json(options_json).max_batch_size == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "no target"),
        ({"target": "x", "replicas": "2"}, "unknown argument 'replicas'"),
        ({"target": "x", "num_replicas": "two"}, "num_replicas='two'"),
        ({"target": "x", "num_replicas": "0"}, "num_replicas=0"),
        ({"target": "x", "warmup": "maybe"}, "expected true or false"),
        ({"target": "x", "max_batch_size": "0"}, "max_batch_size"),
    ],
)
def test_app_builder_refuses_bad_arguments(args: dict[str, str], message: str) -> None:
    with pytest.raises(ServeError, match=message):
        app_builder(args)


def test_ray_options_are_checked() -> None:
    with pytest.raises(ServeError, match="route_prefix"):
        RayOptions(route_prefix="v1")
    with pytest.raises(ServeError, match="num_gpus"):
        RayOptions(num_gpus=-1)
    with pytest.raises(ServeError, match="autoscaling"):
        RayOptions(autoscaling=[1, 2])  # type: ignore[arg-type]
    auto = RayOptions(autoscaling={"min_replicas": 1, "max_replicas": 4}).deployment_options()
    assert "num_replicas" not in auto and auto["autoscaling_config"]["max_replicas"] == 4


def _checked_config(raw: dict[str, Any], tmp_path: Path) -> None:
    """A Serve config as Ray reads it: its schema, then its builder with its args (target swapped for a real model)."""
    import importlib

    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(raw)
    (app_cfg,) = config.applications
    module, _, attr = app_cfg.import_path.partition(":")
    assert (module, attr) == ("torchkeep.serve.ray", "app_builder")
    builder = getattr(importlib.import_module(module), attr)
    v1, _ = _version(tmp_path, "v1", seed=1)
    app = builder({**app_cfg.args, "target": str(v1)})
    assert app._bound_deployment.name == "torchkeep"


def test_example_serve_config_is_valid(tmp_path: Path) -> None:
    import yaml

    raw = yaml.safe_load((ROOT / "examples" / "ray" / "serve-config.yaml").read_text())
    _checked_config(raw, tmp_path)


def test_example_kuberay_rayservice_embeds_a_valid_serve_config(tmp_path: Path) -> None:
    import yaml

    service = yaml.safe_load((ROOT / "examples" / "ray" / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService" and service["apiVersion"] == "ray.io/v1"
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__
    _checked_config(yaml.safe_load(service["spec"]["serveConfigV2"]), tmp_path)


@pytest.mark.slow
def test_cli_refuses_workers_with_ray(tmp_path: Path) -> None:
    import subprocess
    import sys

    v1, _ = _version(tmp_path, "v1", seed=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "torchkeep", "serve", str(v1), "--ray", "--workers", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--replicas" in proc.stdout + proc.stderr
