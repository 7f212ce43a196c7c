# torchkeep serve — CPU image.
#
#   docker build -t torchkeep-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/export:/models/model:ro" torchkeep-serve
#   curl -X POST http://localhost:8000/predict -H "Content-Type: application/json" \
#        -d '{"values": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]}'
#
# The model is mounted at /models/model (an export directory, a model file's directory, or a
# checkpoint directory), or baked into a derived image:
#   FROM torchkeep-serve
#   COPY --chown=torchkeep export/ /models/model/
# Extra server flags go after the image name, e.g. `... torchkeep-serve /models/model --host 0.0.0.0
# --max-batch-size 64 --watch /models/model` (CMD below is the default argument list).
#
# Build arguments (the defaults are what a machine with internet access needs):
#   BASE_IMAGE       any image with python3 (3.10+) and its venv module   [python:3.11-slim]
#   TORCH_PIP_ARGS   where pip finds torch: the PyTorch CPU index, or e.g.
#                    "--no-index --find-links http://127.0.0.1:8080/" for a local wheelhouse
#   PIP_ARGS         where pip finds everything else (default: PyPI)
#   EXTRAS           torchkeep extras installed in the image              [serve,onnx]
# scripts/docker-smoke.sh builds it offline from a Debian base and a local wheelhouse.
ARG BASE_IMAGE=python:3.11-slim
# Stage `torch`: the interpreter's venv with torch only (the slow, large layer), buildable on its
# own (`--target torch`) so that a CI cache can keep it while the image itself is rebuilt.
FROM ${BASE_IMAGE} AS torch

ARG TORCH_VERSION=2.13.0
ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"

# A virtual environment works the same on python:3.11-slim and on a distribution's python3
# (where pip refuses system-wide installs, PEP 668).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# torch first, from the PyTorch CPU index: a bare `pip install torch` pulls the multi-GB CUDA build.
RUN python3 -m venv /opt/venv && pip install ${TORCH_PIP_ARGS} "torch==${TORCH_VERSION}"

FROM torch
ARG PIP_ARGS=""
ARG EXTRAS="serve,onnx"

WORKDIR /opt/torchkeep
COPY pyproject.toml README.md constraints.txt ./
COPY src ./src
# The package with its serving extras at the tested versions; torch is already satisfied.
RUN pip install ${PIP_ARGS} -c constraints.txt ".[${EXTRAS}]" && rm -rf /opt/torchkeep/src /root/.cache

# Never serve as root.
RUN useradd --create-home --uid 10001 torchkeep && mkdir -p /models && chown torchkeep /models
USER torchkeep
WORKDIR /home/torchkeep

EXPOSE 8000
# /readyz is 200 only once the model is loaded and warmed up; no curl needed in the image. The
# port is read from the server's own command line, so `--port N` (e.g. with --network host) works.
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; a = open('/proc/1/cmdline', 'rb').read().decode().split('\\0'); p = a[a.index('--port') + 1] if '--port' in a else '8000'; u.urlopen('http://127.0.0.1:' + p + '/readyz', timeout=2)"]

ENTRYPOINT ["torchkeep", "serve"]
CMD ["/models/model", "--host", "0.0.0.0", "--port", "8000"]
