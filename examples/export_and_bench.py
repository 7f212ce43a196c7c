"""Export a model for deployment, verified; load any artifact with one interface; benchmark them.

Run: python examples/export_and_bench.py   (TORCHKEEP_EXAMPLE_QUICK=1: a short benchmark)

The tutorial's path — save the state_dict, trace to TorchScript, export ONNX, run it with ONNX
Runtime, time the two with a loop — in three calls:

1. ``tk.export`` writes a ``torch.export`` program, an ONNX file and TorchScript, each loaded
   back and checked against the eager model at several batch sizes (errors in ``export.json``);
2. ``tk.load_predictor`` runs any of them the same way (here the ONNX file, on ONNX Runtime),
   under inference mode, with named input/output specs;
3. ``tk.benchmark`` measures p50/p90/p99 latency and throughput per backend and batch size,
   eager PyTorch included, and records the fastest backend in ``export.json``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

import torchkeep as tk

QUICK = os.environ.get("TORCHKEEP_EXAMPLE_QUICK") == "1"


@tk.register(name="example-mymodel")
class MyModel(nn.Module):
    """The tutorial's model: 10 inputs, one hidden layer, 1 output."""

    def __init__(self, in_dim: int = 10, out_dim: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 32), nn.ReLU(), nn.Linear(32, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def main() -> None:
    console = Console(width=120)
    torch.manual_seed(0)
    model = MyModel()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "exported")

        console.print("[bold]1. export[/bold] (pt2, onnx, torchscript), each verified against eager")
        report = tk.export(model, torch.randn(1, 10), out, formats=["pt2", "onnx", "torchscript"])
        console.print(report.table())
        console.print(f"files: {sorted(p.name for p in out.iterdir())}")

        console.print("\n[bold]2. load_predictor[/bold]: one interface for every artifact")
        x = torch.randn(4, 10)
        expected = model.eval()(x)
        for name in ("model.onnx", "model.pt2", "model.torchscript.pt"):
            predictor = tk.load_predictor(out / name)
            got = predictor(x)  # outputs mirror the model: one tensor here
            diff = (got - expected).abs().max().item()
            spec = predictor.inputs[0]
            console.print(f"  {name:22s} {predictor.backend:12s} input {spec.name} {spec.shape}  max |diff| {diff:.1e}")

        console.print("\n[bold]3. benchmark[/bold] (eager vs every artifact)")
        bench = tk.benchmark(
            [model, out],  # an nn.Module runs as the eager baseline
            batch_sizes=(1, 32),
            min_time=0.05 if QUICK else 1.0,
            warmup=3 if QUICK else 10,
            rounds=1 if QUICK else 3,
            threads=1,
            title="MyModel, CPU",
        )
        console.print(bench.table())
        console.print(f"fastest per batch size: {bench.fastest()}")


if __name__ == "__main__":
    main()
