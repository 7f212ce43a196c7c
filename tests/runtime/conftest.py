"""Test models and their artifacts, written directly with torch's exporters (not tk.export).

Each model gets an "export directory": pt2, onnx and torchscript files plus an export.json with
the specs, the way tk.export lays it out. Built once per session: exporting costs seconds.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from torchkeep.io._manifest import write_manifest


class MLP(nn.Module):
    """The tutorial's model: 10 → 32 → 1."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class Encoder(nn.Module):
    """A small transformer encoder over a sequence of 8 feature vectors of size 32."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))


class TwoHeads(nn.Module):
    """Two named inputs, a dict of two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = torch.tanh(self.a(x)) * scale
        return {"logits": self.b(hidden), "hidden": hidden}


@dataclass
class Case:
    name: str
    model: nn.Module
    make: Callable[[int], tuple[torch.Tensor, ...]]
    input_names: list[str]
    output_names: list[str]
    output_structure: str
    directory: Path = field(default_factory=Path)
    files: dict[str, Path] = field(default_factory=dict)

    def example(self, batch: int) -> tuple[torch.Tensor, ...]:
        return self.make(batch)


CASES: dict[str, Callable[[], Case]] = {
    "mlp": lambda: Case("mlp", MLP(), lambda b: (torch.randn(b, 10),), ["x"], ["output"], "tensor"),
    "cnn": lambda: Case("cnn", CNN(), lambda b: (torch.randn(b, 3, 16, 16),), ["image"], ["logits"], "tensor"),
    "encoder": lambda: Case("encoder", Encoder(), lambda b: (torch.randn(b, 8, 32),), ["x"], ["output"], "tensor"),
    "twoheads": lambda: Case(
        "twoheads",
        TwoHeads(),
        lambda b: (torch.randn(b, 4), torch.rand(b, 1) + 0.5),
        ["x", "scale"],
        ["logits", "hidden"],
        "dict",
    ),
}


def _spec(name: str, t: torch.Tensor) -> dict[str, Any]:
    return {"name": name, "shape": [None, *t.shape[1:]], "dtype": str(t.dtype).removeprefix("torch.")}


def build(case: Case, directory: Path, formats: tuple[str, ...] = ("pt2", "onnx", "torchscript")) -> Case:
    """Write the case's artifacts and export.json into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    model = case.model.eval()
    examples = case.example(4)
    batch = torch.export.Dim("batch", min=1, max=1024)
    dynamic = {n: {0: batch} for n in case.input_names}
    # torch.export names the inputs after forward's parameters; keep ours equal to them.
    ep = torch.export.export(model, examples, dynamic_shapes=tuple(dynamic.values()))
    artifacts: dict[str, Any] = {}
    if "pt2" in formats:
        torch.export.save(ep, directory / "model.pt2")
        artifacts["pt2"] = {"ok": True, "file": "model.pt2", "backend": "pt2"}
    if "onnx" in formats:
        with warnings.catch_warnings():
            # Inputs that share the batch Dim make the exporter note that it merges their names.
            warnings.filterwarnings("ignore", "# The axis name", UserWarning)
            torch.onnx.export(
                model,
                examples,
                str(directory / "model.onnx"),
                dynamo=True,
                input_names=case.input_names,
                output_names=case.output_names,
                dynamic_shapes=tuple(dynamic.values()),
                verbose=False,
            )
        artifacts["onnx"] = {"ok": True, "file": "model.onnx", "backend": "onnxruntime"}
    if "torchscript" in formats:
        with warnings.catch_warnings():
            # The transformer's fast-path checks are data-dependent; tracing takes the eval path.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(model, examples, strict=False, check_trace=False)
        traced.save(str(directory / "model.torchscript.pt"))
        artifacts["torchscript"] = {"ok": True, "file": "model.torchscript.pt", "backend": "torchscript"}
    if "aoti" in formats:
        torch._inductor.aoti_compile_and_package(ep, package_path=str(directory / "model.aoti.pt2"))
        artifacts["aoti"] = {"ok": True, "file": "model.aoti.pt2", "backend": "aoti"}
    with torch.no_grad():
        out = model(*examples)
    outs = list(out.values()) if isinstance(out, dict) else [out]
    write_manifest(
        directory,
        {
            "source": {"file": None, "xxh3": None, "model": None},
            "inputs": [_spec(n, t) for n, t in zip(case.input_names, examples, strict=True)],
            "outputs": [_spec(n, t) for n, t in zip(case.output_names, outs, strict=True)],
            "input_structure": "positional",
            "output_structure": case.output_structure,
            "dynamic_batch": True,
            "artifacts": artifacts,
        },
    )
    case.directory = directory
    case.files = {fmt: directory / entry["file"] for fmt, entry in artifacts.items()}
    return case


@pytest.fixture(scope="session")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    """Every test model with pt2, onnx and torchscript artifacts (built once)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("exports")
    return {name: build(make(), root / name) for name, make in CASES.items()}


@pytest.fixture(scope="session")
def aoti_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """The MLP as an AOTInductor package (compiling takes ~20 s, so only this one)."""
    torch.manual_seed(0)
    return build(CASES["mlp"](), tmp_path_factory.mktemp("aoti") / "mlp", formats=("aoti",))
