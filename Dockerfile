# syntax=docker/dockerfile:1
# SorterBot Cloud, CPU image.
#
#   docker build -t sorterbot-cloud .
#   docker run --rm -p 5000:5000 -e PG_CONN=postgresql://... sorterbot-cloud
#   docker compose up --build          # with a Postgres+pgvector container
#
# Stage 1 builds a virtual environment (PyTorch CPU wheels from PyTorch's own index,
# the rest from requirements-runtime.txt, the service's own closure, without the CUDA
# wheels; the development set of requirements.txt stays out of the image). The models'
# weights are the repository's weights/ files, copied with the code: nothing is downloaded
# at build or run time.
# Stage 2 copies the environment and the code; the code directory is owned
# by root and read-only; the service runs as an unprivileged user and writes only
# under DATA_DIR.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_HOME=/opt/torch-cache
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1
COPY requirements-runtime.txt /tmp/requirements-runtime.txt
# torch/torchvision are installed above (CPU build); the CUDA wheels of the pinned set are not needed.
RUN grep -Ev '^(torch|torchvision|triton|nvidia-|cuda-)' /tmp/requirements-runtime.txt > /tmp/requirements-cpu.txt \
 && pip install -r /tmp/requirements-cpu.txt

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    TORCH_HOME=/opt/torch-cache \
    MODE=local \
    DATA_DIR=/var/lib/sorterbot \
    OMP_NUM_THREADS=2 \
    PORT=5000 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache
RUN groupadd --system --gid 10001 sorterbot \
 && useradd --system --uid 10001 --gid sorterbot --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin sorterbot \
 && mkdir -p /var/lib/sorterbot && chown sorterbot:sorterbot /var/lib/sorterbot
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md config.yaml ./
COPY sorterbot_cloud/ sorterbot_cloud/
COPY weights/ weights/
# Editable install: settings resolve config.yaml and weights/ relative to /app. The ONNX graphs the
# service runs (INFERENCE_RUNTIME=onnxruntime, the default) are exported from the weights here.
RUN pip install --no-cache-dir --no-deps -e . \
 && python -m compileall -q sorterbot_cloud \
 && sorterbot-cloud detector export >/dev/null \
 && chown -R root:root /app /opt/venv \
 && chmod -R a-w,a+rX /app
USER sorterbot:sorterbot
VOLUME ["/var/lib/sorterbot"]
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '5000'), timeout=4)"]
# One worker process (models load once, after the fork) with threads; scale out with more containers.
# 12 threads: the admission line's 2 in flight + 8 queued + 2 for triggers and health checks
# (docs/capacity.rst); fewer threads would queue requests inside gunicorn, unbounded.
# /dev/shm for gunicorn's heartbeat files: nothing else in the image needs to be writable.
# The config module sets gunicorn's request limits and the worker answering gunicorn's own errors as JSON problem details.
CMD ["gunicorn", "--config", "python:sorterbot_cloud.ops.gunicorn_conf", "--bind", "0.0.0.0:5000", "--workers", "1", \
     "--threads", "12", "--timeout", "120", \
     "--graceful-timeout", "30", "--worker-tmp-dir", "/dev/shm", "sorterbot_cloud.api:create_app()"]
