"""Which runtime is fastest? Every CPU backend on three models, at batch 1 and 32.

Models: the tutorial's MLP (10 → 32 → 1; its benchmark ran 1000 iterations at batch 32), a small
CNN (3×32×32 images → 10 classes) and a small transformer encoder (2 layers, d_model 128, 4 heads,
sequence 32). Each is exported as torch.export (pt2), AOTInductor (aoti), TorchScript (trace) and
ONNX (run by ONNX Runtime), then measured with ``tk.benchmark`` against eager PyTorch in the same
run: warm-up, then up to ``--iters`` calls per backend and batch size (or ``--min-time`` seconds).

    python benchmarks/runtimes.py                      # full: ~5 minutes on 2 busy cores
    python benchmarks/runtimes.py --quick              # seconds: MLP only, no AOTInductor
    python benchmarks/runtimes.py --plot docs/runtimes.png --markdown

``--threads`` defaults to 1: on a small shared machine, multi-threaded intra-op pools measure the
scheduler more than the runtime. ``--device cuda`` runs the torch backends and ONNX Runtime's CUDA
provider on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch
from rich.console import Console
from torch import nn

import torchkeep as tk
from torchkeep.bench import plot_reports
from torchkeep.io._manifest import write_manifest


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(3, 16), block(16, 32), block(32, 64))
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=128, nhead=4, dim_feedforward=256, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(128, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))


class WideMLP(nn.Module):
    """Wide enough that int8 weights matter: 256 → 1024 → 1024 → 10."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


MODELS: dict[str, tuple[type[nn.Module], tuple[int, ...]]] = {
    "MLP 10→32→1": (MLP, (10,)),
    "Wide MLP 256→1024→1024→10": (WideMLP, (256,)),
    "CNN 3×32×32": (CNN, (3, 32, 32)),
    "Transformer encoder": (Encoder, (32, 128)),
}


def export_all(model: nn.Module, sample: tuple[int, ...], directory: Path, aoti: bool) -> dict[str, float]:
    """Write pt2, onnx, torchscript (and aoti) plus export.json; returns export seconds per format."""
    directory.mkdir(parents=True, exist_ok=True)
    x = torch.randn(4, *sample)
    batch = {0: torch.export.Dim("batch", min=1, max=1024)}
    seconds: dict[str, float] = {}
    artifacts: dict[str, Any] = {}
    start = time.perf_counter()
    ep = torch.export.export(model, (x,), dynamic_shapes=(batch,))
    torch.export.save(ep, directory / "model.pt2")
    seconds["pt2"] = time.perf_counter() - start
    artifacts["pt2"] = {"ok": True, "file": "model.pt2", "backend": "pt2"}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(directory / "model.onnx"),
            dynamo=True,
            input_names=["x"],
            dynamic_shapes=(batch,),
            verbose=False,
        )
    seconds["onnx"] = time.perf_counter() - start
    artifacts["onnx"] = {"ok": True, "file": "model.onnx", "backend": "onnxruntime"}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, x, check_trace=False).save(str(directory / "model.torchscript.pt"))
    seconds["torchscript"] = time.perf_counter() - start
    artifacts["torchscript"] = {"ok": True, "file": "model.torchscript.pt", "backend": "torchscript"}
    if aoti:
        start = time.perf_counter()
        torch._inductor.aoti_compile_and_package(ep, package_path=str(directory / "model.aoti.pt2"))
        seconds["aoti"] = time.perf_counter() - start
        artifacts["aoti"] = {"ok": True, "file": "model.aoti.pt2", "backend": "aoti"}
    with torch.no_grad():
        out = model(x)
    write_manifest(
        directory,
        {
            "inputs": [{"name": "x", "shape": [None, *sample], "dtype": "float32"}],
            "outputs": [{"name": "output", "shape": [None, *out.shape[1:]], "dtype": "float32"}],
            "input_structure": "positional",
            "output_structure": "tensor",
            "dynamic_batch": True,
            "artifacts": artifacts,
        },
    )
    return seconds


#: targets exported with tk.export (verified) next to the hand-made ones, and the fp32 backend each
#: reduced-precision one is compared with.
NEW_TARGETS = ("openvino", "onnx-int8", "onnx-fp16", "torchscript-int8")
FP32_OF = {"onnxruntime-int8": "onnxruntime", "onnxruntime-fp16": "onnxruntime", "torchscript-int8": "torchscript"}


def export_new_targets(model: nn.Module, sample: tuple[int, ...], directory: Path) -> tk.ExportReport:
    """OpenVINO and the int8/fp16 variants through tk.export, each verified against eager."""
    return tk.export(
        model,
        torch.randn(4, *sample),
        directory,
        formats=NEW_TARGETS,
        continue_on_error=True,
        verify_batch_sizes=(1, 32),
    )


def precision_table(title: str, report: tk.BenchReport, export: tk.ExportReport) -> list[str]:
    """Rows: reduced-precision backend, batch, parity error vs eager, p50, speed-up vs its fp32 twin."""
    rows = {(r.backend, r.batch_size): r for r in report.results if r.error is None}
    out = []
    for res in export:
        backend = res.backend
        if backend not in FP32_OF:
            continue
        for (b, bs), r in sorted(rows.items()):
            if b != backend:
                continue
            base = rows.get((FP32_OF[backend], bs))
            speed = f"{base.p50_ms / r.p50_ms:.2f}×" if base is not None and r.p50_ms > 0 else "-"
            err = f"{res.max_abs_error:.2e} abs, {res.max_rel_error:.2e} rel" if res.ok else f"failed ({res.step})"
            out.append(f"| {title} | {backend} | {bs} | {err} | {r.p50_ms:.3f} | {speed} vs {FP32_OF[backend]} |")
    return out


def markdown(reports: list[tk.BenchReport]) -> str:
    lines = [
        "| model | backend | batch | p50 ms | p90 ms | p99 ms | samples/s | CPU ms | vs eager | peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for report in reports:
        fastest = report.fastest()
        for r in sorted(report.results, key=lambda r: (r.batch_size, r.p50_ms)):
            if r.error is not None:
                lines.append(f"| {report.title} | {r.backend} | {r.batch_size} | failed: {r.error[:40]} ||||||")
                continue
            name = f"**{r.backend}**" if fastest.get(r.batch_size) == r.backend else r.backend
            speed = "" if r.speedup_vs_eager is None else f"{r.speedup_vs_eager:.2f}×"
            mem = "" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.1f}"
            lines.append(
                f"| {report.title} | {name} | {r.batch_size} | {r.p50_ms:.3f} | {r.p90_ms:.3f} | {r.p99_ms:.3f} "
                f"| {r.throughput:,.0f} | {r.cpu_ms:.3f} | {speed} | {mem} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the two MLPs, no AOTInductor, tiny budget (a minute)")
    ap.add_argument("--no-aoti", action="store_true", help="skip AOTInductor (its compile takes ~20-60 s per model)")
    ap.add_argument("--batch-size", type=int, action="append", help="batch sizes (default 1 and 32)")
    ap.add_argument("--iters", type=int, default=1000, help="timed calls per backend and batch size (count budget)")
    ap.add_argument("--min-time", type=float, default=5.0, help="seconds per backend and batch size (time budget)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--plot", default=None, help="save the chart here (PNG)")
    ap.add_argument("--markdown", action="store_true", help="also print a markdown table (for docs/performance.md)")
    ap.add_argument("--json", default=None, help="save every report here (JSON), to plot again with --from-json")
    ap.add_argument("--from-json", default=None, help="skip measuring: load reports saved with --json")
    args = ap.parse_args()
    if args.quick:
        args.iters, args.min_time, args.no_aoti = min(args.iters, 100), min(args.min_time, 0.2), True
    batch_sizes = tuple(args.batch_size or (1, 32))
    models = {k: MODELS[k] for k in list(MODELS)[:2]} if args.quick else MODELS
    console = Console()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    reports: list[tk.BenchReport] = []
    if args.from_json:
        reports = [tk.BenchReport.from_json(d) for d in json.loads(Path(args.from_json).read_text())]
        models = {}
    precision_rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (title, (cls, sample)) in enumerate(models.items()):
            model = cls().eval()
            with console.status(f"exporting {title}…"):
                seconds = export_all(model, sample, Path(tmp) / f"m{i}", aoti=not args.no_aoti and args.device == "cpu")
                new = export_new_targets(model, sample, Path(tmp) / f"n{i}") if args.device == "cpu" else None
            console.print(f"{title}: exported in " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
            if new is not None:
                console.print(new.table())
            with console.status(f"benchmarking {title}…") as status:
                report = tk.benchmark(
                    [Path(tmp) / f"m{i}", *([Path(tmp) / f"n{i}"] if new is not None else []), model],
                    batch_sizes=batch_sizes,
                    warmup=20,
                    max_iters=args.iters,
                    min_time=args.min_time,
                    threads=args.threads,
                    device=args.device,
                    title=title,
                    progress=lambda label, bs, t=title: status.update(f"benchmarking {t}: {label} at batch {bs}…"),
                )
            reports.append(report)
            console.print(report.table())
            if new is not None:
                precision_rows += precision_table(title, report, new)
    seed = next((r for r in reports if r.title.startswith("MLP")), None)
    if seed is not None and 32 in batch_sizes:
        # The tutorial's own measure: total time of 1000 calls at batch 32.
        rows = {r.backend: r for r in seed.results if r.batch_size == 32 and r.error is None}
        for stat in ("p50_ms", "mean_ms"):
            console.print(
                f"tutorial comparison, 1000 calls at batch 32 (from {stat[:-3]}): "
                + ", ".join(
                    f"{b} {getattr(rows[b], stat):.3f} s" for b in ("torchscript", "onnxruntime", "eager") if b in rows
                )
            )
    for report in reports if args.from_json else []:
        console.print(report.table())
    console.print(f"machine: {os.cpu_count()} CPUs, load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_json() for r in reports], indent=1))
    if args.plot:
        plot_reports(reports, args.plot)
        console.print(f"plot saved to {args.plot}")
    if precision_rows:
        header = "| model | backend | batch | parity error vs eager | p50 ms | speed-up |\n|---|---|---:|---|---:|---|"
        console.print("reduced precision vs fp32 (same run):")
        print(header + "\n" + "\n".join(precision_rows))
    if args.markdown:
        print(markdown(reports))


if __name__ == "__main__":
    main()
