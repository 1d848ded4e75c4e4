# PyTorch model server (python -m service). `requirements` lists the runtime dependencies of
# pyproject.toml, `builder` makes /opt/venv with them at the versions locked in constraints.txt (torch
# build per TORCH_VARIANT), and `runtime` copies the venv and the app onto a fresh base and runs as a
# non-root user. The README's "Docker" section has the whole story; `make docker-build` wraps this.
#
#   CPU (default):  docker build -t serve:cpu .
#   CUDA:           docker build --build-arg TORCH_VARIANT=cuda -t serve:cuda .
#                   docker run --gpus all -e SERVE_DEVICE=cuda -p 8000:8000 serve:cuda
#
# Build args:
#   BASE_IMAGE            any Debian-like image with python3 (3.11+) and its venv module
#   TORCH_VARIANT         cpu | cuda (the torch version is the pin in pyproject.toml and constraints.txt)
#   TORCH_INDEX_URL       cpu variant: extra index for the CPU wheel; empty = none (the wheel in docker/wheels/)
#   TORCH_CUDA_INDEX_URL  cuda variant: empty = PyPI (the CUDA build on Linux x86_64), or a cu index,
#                         e.g. https://download.pytorch.org/whl/cu128
#   OFFLINE               1 = no index at all: every wheel from docker/wheels/ (make docker-wheels fills it)
# Optional files in the context: docker/wheels/*.whl (pip --find-links), docker/host-ca.crt (PIP_CERT,
# for a TLS-intercepting proxy; it stays in the builder stage).
# This file uses no BuildKit-only syntax, so the classic builder builds it too.

ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------------
# The runtime dependencies ([project].dependencies, not the dev extras) as a requirements file: the
# builder copies only this file, so editing other parts of pyproject.toml keeps its cached layers.
FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml /tmp/pyproject.toml
RUN python3 -c 'import tomllib; f = open("/tmp/pyproject.toml", "rb"); \
print("\n".join(tomllib.load(f)["project"]["dependencies"]))' > /tmp/requirements.txt \
 && cat /tmp/requirements.txt

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_CUDA_INDEX_URL=
ARG OFFLINE=

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=60 \
    PYTHONDONTWRITEBYTECODE=1

# Only what the dependency install reads, so editing the app does not re-run it.
# (host-ca.cr[t] is a glob: the file may be absent.)
COPY docker/wheels/ /tmp/wheels/
COPY docker/install-deps.sh docker/host-ca.cr[t] constraints.txt /tmp/build/
COPY --from=requirements /tmp/requirements.txt /tmp/build/requirements.txt
# torch/include: C++ headers, only for building extensions / torch.compile, which serving does not use.
RUN TORCH_VARIANT="$TORCH_VARIANT" OFFLINE="$OFFLINE" \
    TORCH_INDEX_URL="$TORCH_INDEX_URL" TORCH_CUDA_INDEX_URL="$TORCH_CUDA_INDEX_URL" \
    sh /tmp/build/install-deps.sh \
 && rm -rf /opt/venv/lib/python3*/site-packages/torch/include

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="serve" \
      org.opencontainers.image.description="FastAPI server for PyTorch models with dynamic batching" \
      serve.torch-variant="${TORCH_VARIANT}"

RUN groupadd --gid 10001 serve \
 && useradd --uid 10001 --gid serve --create-home --home-dir /home/serve \
        --shell /usr/sbin/nologin serve

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
COPY pyproject.toml ./
COPY models/ models/
COPY training/ training/
COPY service/ service/
COPY weights/ weights/
COPY docker/healthcheck.py /usr/local/lib/serve/healthcheck.py
RUN /opt/venv/bin/python -m compileall -q models training service

# The app runs from /app (not installed into the venv); PYTHONPATH keeps `python -m service`
# working whatever the working directory. NVIDIA_DRIVER_CAPABILITIES matters only with a GPU; the
# GPU itself is granted by the runtime (docker --gpus, compose device reservation, k8s device plugin).
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    SERVE_HOST=0.0.0.0 \
    SERVE_PORT=8000 \
    SERVE_WEIGHTS_DIR=/app/weights

USER 10001:10001
EXPOSE 8000

# Ready = every model loaded and warmed; loading can take a while on a cold start.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/lib/serve/healthcheck.py"]

CMD ["python", "-m", "service"]
