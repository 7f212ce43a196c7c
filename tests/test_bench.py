"""tk.benchmark and `torchkeep bench`: end to end with a tiny budget (never asserting speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from torch import nn

import torchkeep as tk
from torchkeep.io._manifest import read_manifest, write_manifest

TINY = {"min_time": 0.01, "max_iters": 20, "warmup": 1, "rounds": 2}


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1)).eval()


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """The tutorial MLP as pt2 + onnx + torchscript with an export.json (as tk.export lays it out)."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("bench") / "exported"
    directory.mkdir()
    model = _mlp()
    x = torch.randn(4, 10)
    batch = {0: torch.export.Dim("batch", min=1, max=1024)}
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=(batch,)), directory / "model.pt2")
    torch.jit.trace(model, x).save(str(directory / "model.torchscript.pt"))
    torch.onnx.export(
        model,
        (x,),
        str(directory / "model.onnx"),
        dynamo=True,
        input_names=["x"],
        dynamic_shapes=(batch,),
        verbose=False,
    )
    write_manifest(
        directory,
        {
            "inputs": [{"name": "x", "shape": [None, 10], "dtype": "float32"}],
            "outputs": [{"name": "output", "shape": [None, 1], "dtype": "float32"}],
            "input_structure": "positional",
            "output_structure": "tensor",
            "artifacts": {
                "pt2": {"ok": True, "file": "model.pt2", "backend": "pt2"},
                "onnx": {"ok": True, "file": "model.onnx", "backend": "onnxruntime"},
                "torchscript": {"ok": True, "file": "model.torchscript.pt", "backend": "torchscript"},
                "aoti": {"ok": False, "file": None, "error": "compiler missing"},
            },
            "custom": {"kept": True},
        },
    )
    return directory, model


def test_benchmark_end_to_end(export_dir: tuple[Path, nn.Module], tmp_path: Path) -> None:
    directory, model = export_dir
    report = tk.benchmark([directory, model], batch_sizes=(1, 4), **TINY, title="tiny MLP")
    assert isinstance(report, tk.BenchReport)
    got = {(r.backend, r.batch_size) for r in report.results}
    assert got == {(b, bs) for b in ("pt2", "onnxruntime", "torchscript", "eager") for bs in (1, 4)}
    for r in report.results:
        assert r.error is None
        assert 2 <= r.iterations <= 20  # rounds x min_iters at least, max_iters at most
        assert 0 < r.p50_ms <= r.p90_ms <= r.p99_ms
        assert r.throughput > 0
        assert r.cpu_ms >= 0
        assert r.speedup_vs_eager is not None
        assert r.speedup_vs_eager > 0
    assert next(r for r in report.results if r.backend == "eager").speedup_vs_eager == 1.0

    # table
    console = Console(record=True, width=140)
    console.print(report.table())
    text = console.export_text()
    for word in ("tiny MLP", "onnxruntime", "torchscript", "pt2", "eager", "p99 ms", "★"):
        assert word in text
    # JSON: strict (no NaN), and round-trips through json
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert data["device"] == "cpu"
    assert set(data["fastest"]) == {"1", "4"}
    assert len(data["results"]) == 8
    again = tk.BenchReport.from_json(data)
    assert again.fastest() == report.fastest()
    assert [r.p50_ms for r in again.results] == [r.p50_ms for r in report.results]
    # PNG
    png = tmp_path / "bench.png"
    assert report.plot(png) == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000

    # export.json now holds the results, other keys untouched, and load_predictor follows it.
    manifest = read_manifest(directory)
    assert manifest["custom"] == {"kept": True}
    bench = manifest["benchmark"]
    assert bench["fastest"] == {str(k): v for k, v in report.fastest().items()}
    assert {r["backend"] for r in bench["results"]} == {"pt2", "onnxruntime", "torchscript", "eager"}
    # The fastest artifact present here (eager may win but has no file in this directory).
    at_4 = sorted(
        (r for r in bench["results"] if r["batch_size"] == 4 and r["backend"] != "eager"), key=lambda r: r["p50_ms"]
    )
    assert tk.load_predictor(directory, batch_size=4).backend == at_4[0]["backend"]


def test_module_only_and_budgets() -> None:
    model = _mlp()
    report = tk.benchmark(
        model, example_inputs=[torch.zeros(1, 10)], batch_sizes=(3,), min_time=10.0, max_iters=7, warmup=0, rounds=1
    )
    (row,) = report.results
    assert (row.backend, row.batch_size, row.iterations) == ("eager", 3, 7)  # count budget ends it
    report = tk.benchmark(
        model, example_inputs=[torch.zeros(1, 10)], batch_sizes=(1,), min_time=0.0, min_iters=4, rounds=2
    )
    assert report.results[0].iterations == 4  # time budget spent at once: min_iters still run
    with pytest.raises(tk.PredictorError, match="no target knows its input specs"):
        tk.benchmark(model, batch_sizes=(1,), **TINY)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_sizes": ()}, "batch_sizes"),
        ({"batch_sizes": (0, 4)}, "positive ints"),
        ({"min_time": -1.0}, "min_time=-1.0"),
        ({"max_iters": 0}, "max_iters=0"),
    ],
)
def test_bad_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(tk.PredictorError, match=message):
        tk.benchmark(_mlp(), example_inputs=[torch.zeros(1, 10)], **kwargs)


def test_no_targets() -> None:
    with pytest.raises(tk.PredictorError, match="no targets"):
        tk.benchmark([])


def test_a_failing_backend_gets_a_row_not_a_crash() -> None:
    good = tk.load_predictor(_mlp(), example_inputs=[torch.zeros(1, 10)])

    class Broken:
        backend = "onnxruntime"
        inputs = good.inputs
        outputs = good.outputs
        device = "cpu"

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            raise tk.PredictorError("out of memory (simulated)")

    report = tk.benchmark([good, Broken()], batch_sizes=(2,), **TINY)
    broken = next(r for r in report.results if r.backend == "onnxruntime")
    assert broken.error == "out of memory (simulated)"
    assert report.fastest() == {2: "eager"}
    console = Console(record=True, width=140)
    console.print(report.table())
    assert "failed: out of memory" in console.export_text()
    assert json.dumps(report.to_json(), allow_nan=False)


@pytest.mark.slow
def test_cli_bench(export_dir: tuple[Path, nn.Module], tmp_path: Path) -> None:
    directory, _ = export_dir
    png = tmp_path / "cli.png"
    args = [sys.executable, "-m", "torchkeep", "bench", str(directory), "--batch-size", "1", "--batch-size", "2"]
    budget = ["--min-time", "0.01", "--max-iters", "10", "--warmup", "1", "--threads", "1"]
    proc = subprocess.run(
        [*args, *budget, "--json", "--plot", str(png), "--no-record"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {(r["backend"], r["batch_size"]) for r in data["results"]} == {
        (b, bs) for b in ("pt2", "onnxruntime", "torchscript") for bs in (1, 2)
    }
    assert data["threads"] == 1
    assert png.read_bytes()[:4] == b"\x89PNG"
    proc = subprocess.run(
        [*args, *budget], capture_output=True, text=True, check=False, env={**_env(), "COLUMNS": "120"}
    )
    assert proc.returncode == 0, proc.stderr
    assert "fastest" in proc.stdout
    assert "p50 ms" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "torchkeep", "bench", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "no such file or export directory" in proc.stderr


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_plot_without_matplotlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    report = tk.benchmark(_mlp(), example_inputs=[torch.zeros(1, 10)], batch_sizes=(1,), **TINY)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(tk.MissingDependencyError, match=r"torchkeep\[bench\]"):
        report.plot(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
