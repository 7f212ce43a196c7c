"""examples/cpp: the exported AOTInductor package and TorchScript file, run from C++ with the wheel's LibTorch."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.utils
from torch import nn

import torchkeep as tk

ROOT = Path(__file__).resolve().parents[2]
# The build is cached across runs (it takes a minute or two: LibTorch's headers are large). CMake
# refuses a build directory made for another source directory, so the key names the checkout too.
_SOURCE_KEY = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
BUILD = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    / "torchkeep"
    / f"cpp-{torch.__version__}-{_SOURCE_KEY}"
)


def _tools() -> None:
    if shutil.which("cmake") and shutil.which("g++") and shutil.which("make"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("needs cmake, g++ and make (apt-get install cmake g++ make)")
    subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", "cmake", "g++", "make"], check=True, timeout=600)


def _parse(stdout: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    lines = stdout.split()
    i = 0
    while i < len(lines):
        label, count = lines[i], int(lines[i + 1])
        out[label] = torch.tensor([float(v) for v in lines[i + 2 : i + 2 + count]], dtype=torch.float64)
        i += 2 + count
    return out


@pytest.mark.slow
def test_cpp_example_matches_eager(tmp_path: Path) -> None:
    _tools()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1)).eval()
    report = tk.export(model, torch.randn(2, 10), tmp_path, formats=["aoti", "torchscript"])
    assert report.ok
    BUILD.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["cmake", "-S", str(ROOT / "examples" / "cpp"), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release",
         f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    subprocess.run(["cmake", "--build", str(BUILD), "-j2"], check=True, capture_output=True, timeout=900)
    proc = subprocess.run(
        [str(BUILD / "tk_run"), str(report["aoti"].file), str(report["torchscript"].file), "3,10"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    got = _parse(proc.stdout)
    x = torch.arange(30, dtype=torch.float32).div(30).view(3, 10)
    with torch.no_grad():
        want = model(x).double().view(-1)
    assert set(got) == {"aoti", "torchscript"}
    for label, values in got.items():
        torch.testing.assert_close(values, want, rtol=1e-5, atol=1e-6, msg=label)
    usage = subprocess.run([str(BUILD / "tk_run")], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage" in usage.stderr
