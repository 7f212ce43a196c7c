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
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1

# torch first, from the PyTorch CPU index: a bare `pip install torch` pulls the multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /opt/torchkeep
COPY pyproject.toml README.md ./
COPY src ./src
# The package with its serving extras; torch is already satisfied, so nothing re-downloads it.
RUN pip install ".[serve,onnx]" && rm -rf /opt/torchkeep/src /root/.cache

# Never serve as root.
RUN useradd --create-home --uid 10001 torchkeep && mkdir -p /models && chown torchkeep /models
USER torchkeep
WORKDIR /home/torchkeep

EXPOSE 8000
# /readyz is 200 only once the model is loaded and warmed up; no curl needed in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]

ENTRYPOINT ["torchkeep", "serve"]
CMD ["/models/model", "--host", "0.0.0.0", "--port", "8000"]
