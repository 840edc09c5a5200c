# syntax=docker/dockerfile:1
# ledgerflow's worker image: `docker build -t ledgerflow:0.1.0 .`, then k8s/ (kustomize) runs it.
# Two stages: wheels are built (with a compiler, for any dependency without a binary wheel) in
# the first; the second installs them and carries no build tools, runs as a non-root user, and
# needs nothing writable but its data volume and /tmp (the pods mount the root read-only).
# The base is pinned to an exact release; pin its digest too where builds must be repeatable
# (`docker buildx imagetools inspect python:3.11.14-slim-bookworm` prints it).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY canonical ./canonical
COPY streams ./streams
COPY agents ./agents
COPY tables ./tables
COPY connectors ./connectors
# `ledgerflow bench` is a command of the image too: its harness, not its peers or results.
COPY bench/__init__.py bench/harness.py ./bench/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    LEDGERFLOW_DATA_DIR=/var/lib/ledgerflow \
    LEDGERFLOW_WEB_BIND=0.0.0.0
RUN groupadd --system --gid 10001 ledgerflow \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin ledgerflow \
    && mkdir -p /var/lib/ledgerflow \
    && chown 10001:10001 /var/lib/ledgerflow
# The wheels are mounted for the install only: they stay out of the image's layers.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels ledgerflow \
    && pip check
USER 10001:10001
WORKDIR /var/lib/ledgerflow
EXPOSE 6066
ENTRYPOINT ["ledgerflow"]
CMD ["worker", "-l", "info"]
