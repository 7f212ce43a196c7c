#!/usr/bin/env bash
# Every GPU path in one run (under 8 minutes on one modern GPU), then a summary:
#   1. pytest -m gpu          the GPU-marked tests (CUDA checkpoints, loaders, TensorRT, serving)
#   2. tensorrt               tk.export to a TensorRT engine (parity checked by the export),
#                             then the engine through load_predictor vs eager at batch 1, 7 and 32
#   3. runtimes benchmark     benchmarks/runtimes.py --quick --device cuda
#   4. manager benchmark      benchmarks/manager.py --quick --device cuda
#
#   scripts/gpu-check.sh                 # uses .venv/bin/python when it exists
#   PYTHON=python3 scripts/gpu-check.sh
#
# No GPU, or a CPU-only torch build: it stops at once with exit status 2 and says why; it never
# reports a skipped GPU path as passed. A failing step makes the exit status 1 (the others still run).
# Environment: PYTHON; GPU_CHECK_INSTALL=1 pip-installs a missing tensorrt first; OUT (a directory
# for the logs and benchmark JSON, default a temporary one that is kept).
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT=${OUT:-$(mktemp -d -t torchkeep-gpu-check.XXXXXX)}
mkdir -p "$OUT"
T0=$(date +%s)
declare -a NAMES=() RESULTS=() TIMES=()

fatal() {
    echo "gpu-check: FATAL: $*" >&2
    echo "gpu-check: nothing was checked; this script needs an NVIDIA GPU and a CUDA build of torch" >&2
    exit 2
}

# 0. A GPU, a driver, and a torch that can use them. Loud, and before anything else.
if ! command -v nvidia-smi > /dev/null 2>&1; then
    fatal "nvidia-smi not found (no NVIDIA driver on this machine)"
fi
if ! nvidia-smi -L > "$OUT/nvidia-smi.txt" 2>&1 || ! grep -q '^GPU ' "$OUT/nvidia-smi.txt"; then
    cat "$OUT/nvidia-smi.txt" >&2
    fatal "nvidia-smi lists no GPU"
fi
if ! "$PYTHON" - > "$OUT/torch-cuda.txt" 2>&1 << 'PY'; then
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (CUDA build: {torch.version.cuda}) cannot use the GPU; install a CUDA "
             "build, e.g. pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"compute capability {torch.cuda.get_device_capability(0)}")
PY
    cat "$OUT/torch-cuda.txt" >&2
    fatal "torch cannot use the GPU"
fi
echo "gpu-check: $(head -1 "$OUT/nvidia-smi.txt")"
echo "gpu-check: $(tail -1 "$OUT/torch-cuda.txt")"

if ! "$PYTHON" -c "import tensorrt" > /dev/null 2>&1 && [ "${GPU_CHECK_INSTALL:-0}" = 1 ]; then
    echo "gpu-check: installing tensorrt (GPU_CHECK_INSTALL=1)"
    "$PYTHON" -m pip install --quiet "tensorrt>=10.0" > "$OUT/pip-tensorrt.log" 2>&1 || tail -5 "$OUT/pip-tensorrt.log"
fi

# One step: a name, a time limit in seconds, a command. Its output goes to $OUT/<name>.log.
step() {
    local name=$1 limit=$2
    shift 2
    local t=$(date +%s) rc
    echo "gpu-check: == $name (limit ${limit} s)"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    tail -15 "$OUT/$name.log" | sed 's/^/    /'
    NAMES+=("$name")
    TIMES+=("$(($(date +%s) - t))")
    if [ $rc -eq 0 ]; then
        RESULTS+=("ok")
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        RESULTS+=("FAILED (over ${limit} s)")
    else
        RESULTS+=("FAILED (exit $rc)")
    fi
}

# 1. The GPU-marked tests. -rs lists every skip with its reason: a skip here is a missing piece.
step pytest-gpu 200 "$PYTHON" -m pytest -m gpu -q -rs -p no:cacheprovider tests

# 2. TensorRT: export (through ONNX to an engine, with the export's own parity check), load, compare with eager.
step tensorrt 150 "$PYTHON" - "$OUT/trt-export" << 'PY'
import sys
import time

import numpy as np
import torch
from torch import nn

import torchkeep as tk
from torchkeep.runtime import load_predictor

out = sys.argv[1]
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).eval().cuda()
t = time.perf_counter()
report = tk.export(model, (torch.randn(4, 64, device="cuda"),), out, formats=("tensorrt",))
print(report.table())
if not report.ok:
    sys.exit("tensorrt: the export or its parity check failed (table above)")
print(f"export + parity: {time.perf_counter() - t:.1f} s")
predictor = load_predictor(out, backend="tensorrt", device="cuda")
assert predictor.backend == "tensorrt", predictor.backend
worst = 0.0
for batch in (1, 7, 32):
    x = torch.randn(batch, 64, device="cuda")
    with torch.no_grad():
        want = model(x).cpu().numpy()
    got = predictor(x)
    got = got[0] if isinstance(got, (list, tuple)) else got
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    assert got.shape == want.shape, (batch, got.shape, want.shape)
    err = float(np.max(np.abs(got - want)))
    worst = max(worst, err)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    print(f"batch {batch}: max |tensorrt - eager| = {err:.2e}")
print(f"tensorrt predictor parity OK (worst {worst:.2e})")
PY

# 3 and 4. The benchmarks on the GPU (quick sizes: the point is that every path runs).
step runtimes-bench 150 "$PYTHON" benchmarks/runtimes.py --quick --device cuda --json "$OUT/runtimes.json"
step manager-bench 120 "$PYTHON" benchmarks/manager.py --quick --device cuda

echo
echo "gpu-check summary ($(head -1 "$OUT/nvidia-smi.txt" | cut -d'(' -f1); logs in $OUT)"
failed=0
for i in "${!NAMES[@]}"; do
    printf '  %-16s %-24s %4s s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${TIMES[$i]}"
    [ "${RESULTS[$i]}" = ok ] || failed=1
done
skips=$(grep -c '^SKIPPED' "$OUT/pytest-gpu.log" 2> /dev/null || true)
[ "${skips:-0}" = 0 ] || echo "  note: pytest -m gpu skipped ${skips} test(s); see $OUT/pytest-gpu.log"
echo "  total $(($(date +%s) - T0)) s"
exit $failed
