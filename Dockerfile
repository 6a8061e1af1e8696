# syntax=docker/dockerfile:1.7
# Two images from one file:
#   docker build --target operator  -t ghcr.io/tunerag/operator:0.1.0 .
#   docker build --target workloads -t ghcr.io/tunerag/workloads:0.1.0 .
# Both run as the non-root UID/GID 65532 and keep nothing of the build tooling.

# ---------------------------------------------------------------------------------------------
# operator: kopf + kubernetes + pydantic on python:3.11-slim.
# ---------------------------------------------------------------------------------------------
FROM python:3.11.18-slim-bookworm AS operator-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Dependencies first (a layer that changes only with the lock file), then the package itself,
# constrained to the same pins.
COPY requirements/operator.lock requirements/operator.lock
RUN pip install --no-cache-dir -r requirements/operator.lock
COPY operator/ operator/
RUN pip install --no-cache-dir -c requirements/operator.lock ./operator

FROM python:3.11.18-slim-bookworm AS operator
RUN groupadd --gid 65532 tunerag \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin tunerag
COPY --from=operator-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 65532:65532
# /healthz and /metrics
EXPOSE 8080 9090
ENTRYPOINT ["tunerag-operator"]

# ---------------------------------------------------------------------------------------------
# workloads: fine-tuning, indexing and the model server on the CUDA runtime. The torch wheels in
# requirements/workloads.lock bundle CUDA 13 libraries; the CUDA 13 base declares that requirement
# (NVIDIA_REQUIRE_CUDA), so a host driver that is too old fails at container start, not mid-training.
# Ubuntu 22.04 ships Python 3.10, so a standalone CPython 3.11 comes from uv (pinned) into /opt/python.
# ---------------------------------------------------------------------------------------------
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM nvidia/cuda:13.0.0-runtime-ubuntu22.04 AS workloads-build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1
RUN uv python install 3.11.18 \
 && uv venv --python 3.11.18 /opt/venv
WORKDIR /src
COPY requirements/workloads.lock requirements/workloads.lock
RUN uv pip install --python /opt/venv/bin/python -r requirements/workloads.lock
COPY workloads/ workloads/
RUN uv pip install --python /opt/venv/bin/python -c requirements/workloads.lock ./workloads
# The finetune workload draws its run report with tunerag_operator.report, which imports the
# standard library only (a test keeps it so): the operator distribution comes without its
# dependencies (no kopf here; its console scripts are not for this image).
COPY operator/ operator/
RUN uv pip install --python /opt/venv/bin/python --no-deps ./operator

FROM nvidia/cuda:13.0.0-runtime-ubuntu22.04 AS workloads
RUN groupadd --gid 65532 tunerag \
 && useradd --uid 65532 --gid 65532 --create-home --home-dir /home/tunerag --shell /usr/sbin/nologin tunerag
COPY --from=workloads-build /opt/python /opt/python
COPY --from=workloads-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/tunerag \
    HF_HOME=/tmp/huggingface
USER 65532:65532
WORKDIR /home/tunerag
# No ENTRYPOINT: the operator sets each Job's command (the finetune, index or serve entry point).
CMD ["python"]
