#!/usr/bin/env bash
# Smoke test of the Docker entrypoint without Docker: `torchkeep serve` on 127.0.0.1, wait for
# /readyz, POST /predict like the tutorial's curl, compare with the model's own answer, stop.
#
#   scripts/serve-smoke.sh                 # builds a small model in a temp dir and serves it
#   scripts/serve-smoke.sh MODEL VALUES    # serves MODEL; VALUES is the JSON list to send
#
# Environment: PYTHON (default python3), TORCHKEEP (default "$PYTHON -m torchkeep"), PORT.
set -euo pipefail

PYTHON=${PYTHON:-python3}
TORCHKEEP=${TORCHKEEP:-"$PYTHON -m torchkeep"}
WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ $# -ge 1 ]; then
    TARGET=$1
    VALUES=${2:-"[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]"}
    EXPECTED=""
else
    # The tutorials' 10 -> 32 -> 1 MLP, exported, and the answer eager PyTorch gives.
    "$PYTHON" - "$WORK" <<'PY'
import json, sys, warnings
import torch
from torch import nn

work = sys.argv[1]
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1)).eval()
x = torch.linspace(0.1, 1.0, 10)
try:
    import torchkeep as tk
    tk.export(model, (x[None],), f"{work}/model", formats=("onnx",))
except AttributeError:  # before tk.export exists
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x[None],), f"{work}/model.onnx", input_names=["x"], output_names=["output"],
                          dynamic_axes={"x": {0: "batch"}, "output": {0: "batch"}}, dynamo=False)
    open(f"{work}/target", "w").write(f"{work}/model.onnx")
else:
    open(f"{work}/target", "w").write(f"{work}/model")
with torch.no_grad():
    json.dump({"values": x.tolist(), "prediction": model(x[None]).tolist()}, open(f"{work}/expected.json", "w"))
PY
    TARGET=$(cat "$WORK/target")
    VALUES=$("$PYTHON" -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))['values']))" "$WORK/expected.json")
    EXPECTED="$WORK/expected.json"
fi

PORT=${PORT:-$("$PYTHON" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")}
URL="http://127.0.0.1:$PORT"
# shellcheck disable=SC2086  # TORCHKEEP may be a command with arguments
$TORCHKEEP serve "$TARGET" --host 127.0.0.1 --port "$PORT" > "$WORK/server.log" 2>&1 &
SERVER_PID=$!

for _ in $(seq 1 240); do
    if curl -fsS "$URL/readyz" > /dev/null 2>&1; then break; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then echo "serve-smoke: server exited:"; cat "$WORK/server.log"; exit 1; fi
    sleep 0.25
done
curl -fsS "$URL/readyz" > /dev/null || { echo "serve-smoke: not ready after 60 s"; cat "$WORK/server.log"; exit 1; }

curl -fsS -X POST "$URL/predict" -H "Content-Type: application/json" -d "{\"values\": $VALUES}" > "$WORK/answer.json"
echo "serve-smoke: answer $(cat "$WORK/answer.json")"
if [ -n "$EXPECTED" ]; then
    "$PYTHON" - "$WORK/answer.json" "$EXPECTED" <<'PY'
import json, sys
got = json.load(open(sys.argv[1]))["prediction"]
want = json.load(open(sys.argv[2]))["prediction"]
assert len(got) == len(want) == 1, (got, want)
for g, w in zip(got[0], want[0]):
    assert abs(g - w) <= 1e-4 + 1e-4 * abs(w), (got, want)
PY
fi
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$URL/predict" -H "Content-Type: application/json" -d '{"values": "oops"}')
[ "$code" = "422" ] || { echo "serve-smoke: bad input answered $code, expected 422"; exit 1; }
curl -fsS "$URL/metrics" > "$WORK/metrics.txt"
grep -q 'torchkeep_requests_total{route="/predict",status="200"} 1' "$WORK/metrics.txt" \
    || { echo "serve-smoke: /metrics does not count the request"; cat "$WORK/metrics.txt"; exit 1; }
echo "serve-smoke: OK ($TARGET)"
