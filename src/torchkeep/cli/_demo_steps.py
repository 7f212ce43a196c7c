"""The end-to-end demo behind ``torchkeep demo``: every capability, on a small built-in model.

Each step is a function taking a :class:`DemoContext` and adding lines to ``ctx.notes``; the CLI
shows them with progress output. Steps are added here as features land, so the demo always shows
everything that exists. Importing this module registers the demo model class.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..checkpoint import _api, _checkpoint
from ..errors import CorruptCheckpointError
from ..io import _format
from ..manager import CheckpointManager, list_checkpoints
from ..models import _audit, _modelfile
from ..models._registry import register

__all__ = ["STEPS", "DemoContext", "DemoMLP", "run_demo", "train_steps"]

log = logging.getLogger(__name__)


@dataclass
class DemoContext:
    """Shared state between demo steps."""

    workdir: str
    notes: list[str] = field(default_factory=list)
    total_steps: int = 60
    kill_at: int = 25

    def note(self, line: str) -> None:
        """Record one line for the user."""
        self.notes.append(line)

    @property
    def run_dir(self) -> str:
        """The manager directory of the interrupted-and-resumed run."""
        return os.path.join(self.workdir, "run")

    @property
    def export_dir(self) -> str:
        """Where the export step writes its artifacts."""
        return os.path.join(self.workdir, "exported")

    @property
    def model_file(self) -> str:
        """The whole-model file written by the rebuild step."""
        return os.path.join(self.workdir, "model.safetensors")


@register(name="torchkeep-demo-mlp")
class DemoMLP(torch.nn.Module):
    """The seed tutorial's MLP (10 → hidden → 1) with dropout, registered so files rebuild it.

    Example:
        >>> DemoMLP(hidden=8)(torch.zeros(2, 10)).shape
        torch.Size([2, 1])
    """

    def __init__(self, in_features: int = 10, hidden: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(in_features, hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout), torch.nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict one value per row of ``x``."""
        out: torch.Tensor = self.net(x)
        return out


def _make() -> tuple[DemoMLP, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = DemoMLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    return model, opt, sched


def train_steps(run_dir: str, stop: int) -> DemoMLP:
    """Train the demo MLP up to step ``stop``, resuming from ``run_dir`` and checkpointing every step.

    Dropout and the synthetic batches draw from the global RNG, so a resumed run only matches an
    uninterrupted one if the checkpoint restores RNG state exactly.
    """
    model, opt, sched = _make()
    with CheckpointManager(
        run_dir, keep_last=3, keep_best=1, monitor="loss", model=model, optimizer=opt, scheduler=sched
    ) as mgr:
        info = mgr.restore()
        start = int(info.step) if info is not None and info.step is not None else 0
        for step in range(start, stop):
            x = torch.randn(32, 10)
            y = x.sum(dim=1, keepdim=True)
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            mgr.save(step=step + 1, epoch=(step + 1) // 10, metrics={"loss": loss.item()})
    return model


def step_train_and_resume(ctx: DemoContext) -> None:
    """Train straight through; then train in a child process that is SIGKILLed, and resume."""
    reference = train_steps(os.path.join(ctx.workdir, "straight"), ctx.total_steps)

    code = f"from torchkeep.cli._demo_steps import train_steps; train_steps({ctx.run_dir!r}, {ctx.total_steps})"
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        steps = [e.step or 0 for e in _checkpoint_infos(ctx.run_dir)]
        if steps and max(steps) >= ctx.kill_at:
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        raise RuntimeError(f"demo training child ended (exit {proc.returncode}) before it could be killed")
    proc.send_signal(signal.SIGKILL)  # mid-run, possibly mid-save: no checkpoint may be left half-written
    proc.wait()
    newest = max(e.step or 0 for e in _checkpoint_infos(ctx.run_dir))
    ctx.note(f"training process SIGKILLed at step {newest} of {ctx.total_steps}; a new process resumes from it")
    resumed = train_steps(ctx.run_dir, ctx.total_steps)
    same = all(
        torch.equal(a, b) for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True)
    )
    if not same:
        raise RuntimeError("resumed parameters differ from the uninterrupted run")
    ctx.note(f"resumed run is bit-identical to the uninterrupted run after {ctx.total_steps} steps")
    kept = _checkpoint_infos(ctx.run_dir)
    ctx.note(f"retention kept {len(kept)} checkpoints (last 3 + best 1 by loss): steps {[e.step for e in kept]}")


def _checkpoint_infos(run_dir: str) -> list[_checkpoint.CheckpointInfo]:
    """Header info of the readable checkpoints in ``run_dir``, oldest first."""
    if not os.path.isdir(run_dir):
        return []
    return [e.info for e in list_checkpoints(run_dir) if e.info is not None]


def step_verify_and_safety(ctx: DemoContext) -> None:
    """Verify checksums, show that corruption is caught by tensor name and skipped on restore."""
    newest = _checkpoint_infos(ctx.run_dir)[-1]
    assert newest.path is not None
    reader = _format.open_file(newest.path)
    reader.verify()
    ctx.note(f"{len(reader.names)} tensors verified (xxh3) in {os.path.basename(newest.path)}")
    with open(newest.path, "r+b") as f:  # flip one bit of the last tensor byte
        f.seek(-1, os.SEEK_END)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_END)
        f.write(bytes([byte ^ 0x01]))
    try:
        _api.load(newest.path)
    except CorruptCheckpointError as exc:
        ctx.note(f"a flipped bit is caught: {str(exc).split(': ', 1)[-1][:90]}...")
    else:  # pragma: no cover - would be a bug
        raise RuntimeError("corruption was not detected")
    model, opt, sched = _make()
    manager_log = logging.getLogger("torchkeep.manager")
    level = manager_log.level
    manager_log.setLevel(logging.ERROR)  # the warning is shown below as a note, not as a log line
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with CheckpointManager(ctx.run_dir, model=model, optimizer=opt, scheduler=sched) as mgr:
                info = mgr.restore()
    finally:
        manager_log.setLevel(level)
    assert info is not None
    ctx.note(f"restore() skipped the corrupt step {newest.step} ({len(caught)} warning) and used step {info.step}")


def step_rebuild_model(ctx: DemoContext) -> None:
    """Save a registered model; rebuild it in a fresh process with no constructor code; audit a trap."""
    model = DemoMLP(hidden=32).eval()
    _modelfile.save_model(model, ctx.model_file)
    code = (
        "import torch, torchkeep as tk; "
        f"m = tk.load_model({ctx.model_file!r}, import_module=True); "
        "torch.manual_seed(1); x = torch.randn(4, 10); print(repr(m(x).sum().item()))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    torch.manual_seed(1)
    expected = repr(model(torch.randn(4, 10)).sum().item())
    if out != expected:
        raise RuntimeError(f"rebuilt model disagrees: {out} != {expected}")
    ctx.note(
        f"a fresh process rebuilt {type(model).__name__} from {os.path.basename(ctx.model_file)} with identical outputs"
    )

    class Trap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)
            self.scale = torch.ones(4)  # the register_buffer trap: not in state_dict()

    findings = _audit.audit(Trap())
    ctx.note(f"audit caught {len(findings)} trap(s): {findings[0].path} — fix: {findings[0].fix}")


def step_export(ctx: DemoContext) -> None:
    """Export to pt2, ONNX and TorchScript; every artifact is checked against eager at batch 1, 3, 17."""
    from ..export import export

    model = _modelfile.load_model(ctx.model_file)
    report = export(model, (torch.randn(1, 10),), ctx.export_dir, formats=("pt2", "onnx", "torchscript"))
    for fmt, result in report.results.items():
        worst = max((e["max_abs"] for per_batch in result.parity.values() for e in per_batch.values()), default=0.0)
        batches = ", ".join(str(b) for b in sorted(result.parity))
        ctx.note(
            f"{fmt:<11} {os.path.basename(str(result.file))}: matches eager at batch {batches} (max abs err {worst:.1e})"
        )


def step_predict_and_bench(ctx: DemoContext) -> None:
    """Run every artifact through one predictor interface; benchmark them; record the fastest."""
    from ..bench import benchmark
    from ..runtime import load_predictor

    x = torch.randn(32, 10)
    reference = _modelfile.load_model(ctx.model_file)(x)
    for backend in ("pt2", "onnxruntime", "torchscript"):
        out = load_predictor(ctx.export_dir, backend=backend)(x)
        if not torch.allclose(out, reference, rtol=1e-4, atol=1e-5):
            raise RuntimeError(f"{backend} disagrees with eager")
    ctx.note("pt2, onnxruntime and torchscript predictors agree with eager on a batch of 32")
    report = benchmark(ctx.export_dir, batch_sizes=(1, 32), min_time=0.2, max_iters=300, threads=1)
    for batch, backend in sorted(report.fastest().items()):
        row = next(r for r in report.results if r.batch_size == batch and r.backend == backend)
        ctx.note(f"batch {batch:>2}: fastest is {backend} ({row.p50_ms:.3f} ms p50, {row.throughput:,.0f} samples/s)")
    chosen = load_predictor(ctx.export_dir).backend
    ctx.note(f"recorded in export.json: load_predictor({os.path.basename(ctx.export_dir)}/) now picks {chosen}")


def step_serve(ctx: DemoContext) -> None:
    """Serve the export directory in-process; 64 concurrent /predict requests are batched."""
    import asyncio

    import httpx

    from ..serve import ServeOptions, create_app

    app = create_app(ctx.export_dir, options=ServeOptions(max_batch_size=32, max_wait_ms=5))

    async def drive() -> tuple[list[int], str]:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://demo") as client,
        ):
            for _ in range(200):
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            body = {"values": [0.1 * i for i in range(10)]}
            answers = await asyncio.gather(*(client.post("/predict", json=body) for _ in range(64)))
            metrics = (await client.get("/metrics")).text
            return [a.status_code for a in answers], metrics

    codes, metrics = asyncio.run(drive())
    if set(codes) != {200}:
        raise RuntimeError(f"server answered {sorted(set(codes))}")
    batches = [line for line in metrics.splitlines() if line.startswith("torchkeep_batch_size_count")]
    ran = batches[0].split()[-1] if batches else "?"
    ctx.note(f"64 concurrent POST /predict → 64 × 200, run as {ran} model calls (dynamic batching)")


STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("train with CheckpointManager, SIGKILL, resume bit-exactly", step_train_and_resume),
    ("verify checksums; a corrupt checkpoint is caught and skipped", step_verify_and_safety),
    ("rebuild a registered model from its file; audit the register_buffer trap", step_rebuild_model),
    ("export to pt2, ONNX and TorchScript, each verified against eager", step_export),
    ("one predictor API over every runtime; benchmark picks the fastest", step_predict_and_bench),
    ("serve it over HTTP with dynamic batching", step_serve),
]


def run_demo(workdir: str | None = None, *, on_step: Callable[[str, DemoContext], None] | None = None) -> DemoContext:
    """Run every demo step in ``workdir`` (a temporary directory by default).

    Example:
        >>> ctx = run_demo()  # doctest: +SKIP
        >>> print("\\n".join(ctx.notes))  # doctest: +SKIP
    """
    ctx = DemoContext(workdir or tempfile.mkdtemp(prefix="torchkeep-demo-"))
    for title, fn in STEPS:
        if on_step is not None:
            on_step(title, ctx)
        fn(ctx)
    return ctx
