# CPU stand-in for the vendor base images (CI only, built by cluster/testing/docker-base-image.sh).
# Like pytorch/pytorch, rocm/pytorch and the DTK image it provides `python` on PATH with torch
# installed; here torch is the CPU wheel from wheels/ and Debian 12 is the OS.
ARG BASE_IMAGE=local/debian:bookworm-ci
FROM ${BASE_IMAGE}

ARG TORCH_SPEC=torch==2.13.0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Debian's python3 of the snapshot in sources; TORCH_SPEC carries the torch pin.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY wheels/ /tmp/wheels/
# hadolint ignore=DL3013
RUN python3 -m venv "$VIRTUAL_ENV" \
    && pip install --find-links /tmp/wheels "$TORCH_SPEC" \
    && rm -rf /tmp/wheels
