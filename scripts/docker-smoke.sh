#!/usr/bin/env bash
# Build the CPU image (Dockerfile) and run it the way a user does: a mounted export directory,
# the HEALTHCHECK reporting healthy, /predict equal to eager PyTorch, a non-root server process.
#
#   scripts/docker-smoke.sh
#
# Works without any image registry: when no Docker engine answers it installs Debian's docker.io
# (root only) and starts `dockerd --iptables=false --bridge=none` (containers then use
# --network host); the base image is Debian bookworm's python3 (3.11), made with debootstrap and
# `docker import`; torch and every other wheel come from a local wheelhouse (the machine's pip
# find-links and PyPI, downloaded by the host's pip) served on 127.0.0.1 during the build, so the
# build itself needs no network. The rootfs tarball and the wheelhouse are cached in $CACHE_DIR,
# so a second run skips debootstrap and downloads.
#
# The image, its container and the wheelhouse server are removed on exit; kept as caches are the
# base image and the Dockerfile's `torch` stage (tagged torchkeep-ci/torch-layer), so that a rerun
# does not reinstall torch. CLEAN_CACHE=1 removes those two images as well.
#
# Environment: PYTHON (a Python with torch and torchkeep, to make the export; default python3),
# CACHE_DIR (default ~/.cache/torchkeep-ci), BASE_IMAGE (use this base instead of the Debian one,
# e.g. python:3.11-slim where a registry is reachable), KEEP_IMAGE=1 (keep the built image),
# WHEEL_PORT (loopback port of the wheelhouse during the build; a fixed one keeps the build cache).
# Exit status 77: no Docker engine could be installed or started (the test suite skips on it).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
CACHE_DIR=${CACHE_DIR:-$HOME/.cache/torchkeep-ci}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEFAULT_BASE=torchkeep-ci/bookworm-python3:latest
BASE_IMAGE=${BASE_IMAGE:-$DEFAULT_BASE}
TAG=torchkeep-serve-smoke:$$
TORCH_LAYER=torchkeep-ci/torch-layer:latest
CONTAINER=torchkeep-serve-smoke-$$
WORK=$(mktemp -d)
T0=$(date +%s)
WHEEL_PID=""
DOCKERD_PID=""
export DOCKER_BUILDKIT=0 # the classic builder is in every engine; buildx may not be installed

log() { echo "docker-smoke: $*"; }
skip() {
    log "SKIP: $*"
    exit 77
}
die() {
    log "FAIL: $*"
    exit 1
}

cleanup() {
    local rc=$?
    set +e
    if docker container inspect "$CONTAINER" > /dev/null 2>&1; then
        [ $rc -eq 0 ] || docker logs --tail 50 "$CONTAINER" 2>&1 | sed 's/^/  container: /'
        docker rm -f "$CONTAINER" > /dev/null 2>&1
    fi
    if [ "${KEEP_IMAGE:-0}" != 1 ] && docker image inspect "$TAG" > /dev/null 2>&1; then
        docker rmi -f "$TAG" > /dev/null 2>&1
    fi
    if [ "${CLEAN_CACHE:-0}" = 1 ]; then
        docker rmi -f "$TORCH_LAYER" "$DEFAULT_BASE" > /dev/null 2>&1
    fi
    [ -z "$WHEEL_PID" ] || kill "$WHEEL_PID" 2> /dev/null
    if [ -n "$DOCKERD_PID" ]; then
        kill "$DOCKERD_PID" 2> /dev/null
        wait "$DOCKERD_PID" 2> /dev/null
    fi
    rm -rf "$WORK"
    log "took $(($(date +%s) - T0)) s (exit $rc)"
}
trap cleanup EXIT

free_port() { "$PYTHON" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }

apt_install() {
    [ "$(id -u)" = 0 ] || return 1
    command -v apt-get > /dev/null || return 1
    log "installing $* (apt-get)"
    apt-get update -qq > "$WORK/apt.log" 2>&1 || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >> "$WORK/apt.log" 2>&1 || return 1
}

# 1. A Docker engine.
ensure_engine() {
    if docker info > /dev/null 2>&1; then return 0; fi
    if ! command -v dockerd > /dev/null; then
        apt_install docker.io || skip "no Docker engine and docker.io cannot be installed (needs root and apt)"
    fi
    if ! command -v docker > /dev/null; then skip "docker.io installed no docker client"; fi
    [ "$(id -u)" = 0 ] || skip "no Docker engine answers and starting dockerd needs root"
    mkdir -p "$CACHE_DIR"
    log "starting dockerd (no iptables, no bridge: containers use --network host)"
    dockerd --iptables=false --bridge=none > "$CACHE_DIR/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 1 60); do
        if docker info > /dev/null 2>&1; then return 0; fi
        kill -0 "$DOCKERD_PID" 2> /dev/null || break
        sleep 0.5
    done
    tail -20 "$CACHE_DIR/dockerd.log" | sed 's/^/  dockerd: /'
    DOCKERD_PID=""
    skip "dockerd did not start"
}

# 2. A Python 3.11 base image from Debian packages (only when no other base was asked for).
ensure_base() {
    if docker image inspect "$BASE_IMAGE" > /dev/null 2>&1; then return 0; fi
    [ "$BASE_IMAGE" = "$DEFAULT_BASE" ] || die "base image $BASE_IMAGE is not here (docker pull it first)"
    local tarball="$CACHE_DIR/bookworm-python3-minbase.tar"
    if [ ! -s "$tarball" ]; then
        command -v debootstrap > /dev/null || apt_install debootstrap || die "debootstrap is missing and cannot be installed"
        log "debootstrap bookworm (minbase + python3, python3-venv, python3-pip) from $DEBIAN_MIRROR"
        mkdir -p "$CACHE_DIR"
        local rootfs="$WORK/rootfs"
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip bookworm "$rootfs" "$DEBIAN_MIRROR" \
            > "$WORK/debootstrap.log" 2>&1 || {
            tail -20 "$WORK/debootstrap.log"
            die "debootstrap failed"
        }
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -c . > "$tarball.tmp" && mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
    fi
    log "docker import $tarball -> $BASE_IMAGE"
    docker import --change 'CMD ["python3"]' "$tarball" "$BASE_IMAGE" > /dev/null
    docker run --rm --network none "$BASE_IMAGE" python3 -c \
        'import sys; assert sys.version_info[:2] == (3, 11), sys.version; print("base python", sys.version.split()[0])'
}

# 3. Every wheel the image needs, in a local directory served on 127.0.0.1 for the build.
ensure_wheelhouse() {
    WHEELS="$CACHE_DIR/wheels"
    mkdir -p "$WHEELS"
    log "wheelhouse $WHEELS (torch from pip's find-links, the rest from the index)"
    "$PYTHON" -m pip download --quiet --only-binary=:all: -d "$WHEELS" -c "$REPO/constraints.txt" \
        "torch==2.13.0" setuptools wheel "$REPO[serve,onnx]" > "$WORK/pip-download.log" 2>&1 || {
        tail -20 "$WORK/pip-download.log"
        die "pip download failed"
    }
    rm -f "$WHEELS"/torchkeep-*
    # The URL is part of the build arguments, hence of the build cache key: keep it fixed.
    local port=${WHEEL_PORT:-38517}
    if ! "$PYTHON" -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])))" "$port" 2> /dev/null; then
        port=$(free_port)
    fi
    "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WHEELS" "$port" > "$WORK/wheels-http.log" 2>&1 &
    WHEEL_PID=$!
    WHEEL_URL="http://127.0.0.1:$port/"
    for _ in $(seq 1 40); do
        if curl -fsS "$WHEEL_URL" > /dev/null 2>&1; then return 0; fi
        sleep 0.25
    done
    die "the wheelhouse server on $WHEEL_URL did not start"
}

ensure_engine
ensure_base
ensure_wheelhouse

log "docker build (base $BASE_IMAGE)"
TB=$(date +%s)
PIP_LOCAL="--no-index --find-links $WHEEL_URL"
docker build --network host --target torch -t "$TORCH_LAYER" -f "$REPO/Dockerfile" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg "TORCH_PIP_ARGS=$PIP_LOCAL" \
    "$REPO" > "$WORK/build-torch.log" 2>&1 || {
    tail -30 "$WORK/build-torch.log"
    die "docker build of the torch stage failed"
}
grep -q "Using cache" "$WORK/build-torch.log" && log "torch stage: from the cache ($TORCH_LAYER)"
docker build --network host -t "$TAG" -f "$REPO/Dockerfile" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg "TORCH_PIP_ARGS=$PIP_LOCAL" \
    --build-arg "PIP_ARGS=$PIP_LOCAL" \
    "$REPO" > "$WORK/build.log" 2>&1 || {
    tail -30 "$WORK/build.log"
    die "docker build failed"
}
log "built $TAG in $(($(date +%s) - TB)) s"

# 4. A small export directory and the answers eager PyTorch gives.
"$PYTHON" - "$WORK" << 'PY'
import json, sys
import torch
from torch import nn
import torchkeep as tk

work = sys.argv[1]
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1)).eval()
x = torch.linspace(0.1, 1.0, 10)
batch = torch.randn(5, 10)
tk.export(model, (x[None],), f"{work}/export", formats=("onnx",))
with torch.no_grad():
    json.dump({"values": x.tolist(), "prediction": model(x[None]).tolist(),
               "batch": batch.tolist(), "batch_prediction": model(batch).tolist()},
              open(f"{work}/expected.json", "w"))
PY
# The server runs as uid 10001: it must be able to read the mounted directory.
chmod -R a+rX "$WORK"

PORT=$(free_port)
URL="http://127.0.0.1:$PORT"
log "docker run (export mounted read-only, --network host, port $PORT)"
docker run -d --name "$CONTAINER" --network host -v "$WORK/export:/models/model:ro" \
    "$TAG" /models/model --host 127.0.0.1 --port "$PORT" > /dev/null

status=""
for _ in $(seq 1 180); do
    status=$(docker inspect -f '{{.State.Health.Status}}' "$CONTAINER" 2> /dev/null || echo gone)
    [ "$status" = healthy ] && break
    [ "$status" = unhealthy ] && die "the HEALTHCHECK reports unhealthy"
    [ "$(docker inspect -f '{{.State.Running}}' "$CONTAINER" 2> /dev/null)" = true ] || die "the container exited"
    sleep 1
done
[ "$status" = healthy ] || die "not healthy after 180 s (status: $status)"
log "HEALTHCHECK: healthy after $(($(date +%s) - TB)) s since the build started"

VALUES=$("$PYTHON" -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))['values']))" "$WORK/expected.json")
BATCH=$("$PYTHON" -c "import json,sys; print(json.dumps({'inputs': json.load(open(sys.argv[1]))['batch']}))" "$WORK/expected.json")
curl -fsS -X POST "$URL/predict" -H "Content-Type: application/json" -d "{\"values\": $VALUES}" > "$WORK/answer.json"
curl -fsS -X POST "$URL/v1/predict" -H "Content-Type: application/json" -d "$BATCH" > "$WORK/batch.json"
"$PYTHON" - "$WORK" << 'PY'
import json, sys
work = sys.argv[1]
want = json.load(open(f"{work}/expected.json"))
got = json.load(open(f"{work}/answer.json"))["prediction"]
outputs = json.load(open(f"{work}/batch.json"))["outputs"]
got_batch = next(iter(outputs.values()))

def close(a, b):
    assert len(a) == len(b), (a, b)
    for ra, rb in zip(a, b):
        for x, y in zip(ra, rb):
            assert abs(x - y) <= 1e-4 + 1e-4 * abs(y), (a, b)

close(got, want["prediction"])
close(got_batch, want["batch_prediction"])
print(f"docker-smoke: /predict {got} == eager {want['prediction']}; /v1/predict batch of {len(got_batch)} == eager")
PY
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$URL/predict" -H "Content-Type: application/json" -d '{"values": "oops"}')
[ "$code" = 422 ] || die "bad input answered $code, expected 422"

# The server process (PID 1 in the container) must not be root, as seen from the host too.
uid=$(docker exec "$CONTAINER" python -c "print([l.split()[1] for l in open('/proc/1/status') if l.startswith('Uid:')][0])")
host_pid=$(docker inspect -f '{{.State.Pid}}' "$CONTAINER")
host_uid=$(awk '/^Uid:/ {print $2}' "/proc/$host_pid/status")
[ "$uid" != 0 ] && [ "$host_uid" != 0 ] || die "the server runs as root (uid $uid, host uid $host_uid)"
log "server process uid $uid (host view: $host_uid), user $(docker inspect -f '{{.Config.User}}' "$TAG")"

size=$(docker image inspect -f '{{.Size}}' "$TAG")
log "image size $((size / 1000000)) MB ($TAG, base $BASE_IMAGE)"
log "OK"
