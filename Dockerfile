# syntax=docker/dockerfile:1
# 小爱视频 / xiaoai-video: the bot, its generation worker and the admin console (/healthz, /metrics) in one image.
#
#   docker build -t xiaoai-video .                       # torch from PyPI: its Linux wheels bundle CUDA
#   docker build -t xiaoai-video:cu126 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .   # another CUDA build (older drivers)
#   docker build -t xiaoai-video:cpu \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .     # no GPU: demo model and tests only
#
# The host needs only the NVIDIA driver and the NVIDIA container toolkit (`docker run --gpus all`, or the GPU
# reservation in compose.yaml). Secrets come only from the environment (`--env-file /etc/xiaoai/env`), never from
# the image or config.yaml. Volumes: /app/var (SQLite file, videos, images, channel state) and /models
# (checkpoint and translator folders, read-only). README: "容器与服务 / Containers and services".

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG TORCH_VERSION=2.13.0
# Empty: PyPI. Otherwise a PyTorch wheel index, added next to PyPI (its build of TORCH_VERSION wins).
ARG TORCH_INDEX_URL=
ARG XIAOAI_UID=10001

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    XIAOAI_CONFIG=/app/config.yaml \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

# fonts-noto-cjk: the visible "AI生成" label on every video (generation/labels.py); tini: PID 1 that forwards
# SIGTERM to the bot and reaps the worker process. Debian's security updates are wanted, so no version pins.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates fonts-noto-cjk fontconfig tini \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid "${XIAOAI_UID}" xiaoai \
 && useradd --system --uid "${XIAOAI_UID}" --gid xiaoai --home-dir /app --shell /usr/sbin/nologin xiaoai

WORKDIR /app

# Dependencies first (a code change does not reinstall them): torch for the chosen CUDA build, then the
# project's requirements pinned by the lock file (used as constraints, so the dev extras are not installed).
COPY requirements.lock ./
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -c requirements.lock "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md config.yaml ./
COPY bot ./bot
COPY plugins ./plugins
COPY generation ./generation
RUN pip install -c requirements.lock . \
 && pip check \
 && mkdir -p /app/var /models \
 && chown -R xiaoai:xiaoai /app/var

# Numeric, so runtimes that check "not root" (Kubernetes runAsNonRoot) can tell without /etc/passwd.
USER ${XIAOAI_UID}:${XIAOAI_UID}

VOLUME ["/app/var", "/models"]

# The admin console of `xiaoai run` (admin.port). Inside the container it must listen on 0.0.0.0 for a
# published port to reach it (compose.yaml sets XIAOAI__ADMIN__HOST); publish it on the host's 127.0.0.1 only.
EXPOSE 8766

# /healthz needs no token. The proxy handler is emptied so an HTTP(S)_PROXY in the environment is not asked
# for 127.0.0.1. Start period: loading and compiling the model takes a minute or more on first start.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8766/healthz', timeout=8)"]

ENTRYPOINT ["tini", "--"]
CMD ["xiaoai", "run"]
