# syntax=docker/dockerfile:1.7
# Two images from one file (docker-compose.yml builds both):
#   docker build --target gateway -t xplain-gateway .   python:3.11-slim, FastAPI, no torch
#   docker build --target worker  -t xplain-worker  .   CUDA runtime + torch (one per GPU)
# A CPU-only worker: --build-arg WORKER_BASE=debian:bookworm-slim
#                    --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Dependencies are installed before the source is copied, so editing code rebuilds one layer.

ARG PYTHON_IMAGE=python:3.11-slim
ARG WORKER_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS gateway
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv/xplain
COPY pyproject.toml README.md ./
RUN mkdir app && touch app/__init__.py \
 && pip install ".[gateway]" && pip uninstall -y xplain && rm -rf app build *.egg-info
COPY app ./app
RUN pip install --no-deps . && rm -rf build *.egg-info \
 && useradd --system --uid 10001 --no-create-home xplain
COPY docker/wait_for_redis.py /usr/local/lib/xplain/wait_for_redis.py
COPY docker/gateway-entrypoint.sh /usr/local/bin/gateway-entrypoint
USER xplain
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"]
ENTRYPOINT ["gateway-entrypoint"]

# ---------------------------------------------------------------------------------------------
FROM ${WORKER_BASE} AS worker
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
WORKDIR /srv/xplain
# torch from the index of the wanted build (CUDA or CPU), at the versions the tests use
COPY requirements/torch-cpu.txt requirements/torch.txt
RUN pip install --index-url "${TORCH_INDEX_URL}" -r requirements/torch.txt
COPY pyproject.toml README.md ./
RUN mkdir app workers && touch app/__init__.py workers/__init__.py \
 && pip install ".[worker,hub]" && pip uninstall -y xplain && rm -rf app workers build *.egg-info
COPY app ./app
COPY workers ./workers
RUN pip install --no-deps . && rm -rf build *.egg-info \
 && useradd --system --uid 10001 --create-home xplain
COPY docker/wait_for_redis.py /usr/local/lib/xplain/wait_for_redis.py
COPY docker/worker_healthcheck.py /usr/local/lib/xplain/worker_healthcheck.py
COPY docker/worker-entrypoint.sh /usr/local/bin/worker-entrypoint
USER xplain
# torchvision weights are looked up here (mount a volume holding the cache); never downloaded
ENV TORCH_HOME=/home/xplain/.cache/torch XPLAIN_DEVICE=auto
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "/usr/local/lib/xplain/worker_healthcheck.py"]
ENTRYPOINT ["worker-entrypoint"]
