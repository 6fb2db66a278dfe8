# llava-cluster, Hygon DCU image (SCNet), on the DTK PyTorch image.
#   docker build -f docker/dcu.Dockerfile -t llava-cluster:dcu .
# The base ships python 3.10, DTK (/opt/dtk) and Hygon's DAS builds of torch and DeepSpeed, matched
# to the DTK version: both are kept, and the build fails if the lock would change them (TORCH_SPEC /
# DEEPSPEED_SPEC install them only on a base without). transformers 5 disables torch < 2.6, so the
# stack is the dcu lock, docker/lock/dcu-py310.txt (transformers 4.55.4: DAS torch 2.1 and 2.4).
# Run with /opt/hyhal mounted.
ARG BASE_IMAGE=image.sourcefind.cn:5000/dcu/admin/base/pytorch:2.4.1-ubuntu22.04-dtk25.04-py3.10
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG APT_MIRROR=""
COPY docker/scripts/apt-install.sh docker/scripts/add-user.sh /opt/llava/bin/
RUN /opt/llava/bin/apt-install.sh ca-certificates gcc g++ git libaio-dev ninja-build \
    && /opt/llava/bin/add-user.sh llava 1000

# The pinned stack: before the project code, so editing the code does not reinstall it.
ARG TORCH_SPEC=""
ARG DEEPSPEED_SPEC=""
ARG DS_BUILD_OPS=auto
ARG GPU_ARCH_LIST
ARG FLASH_ATTN_SPEC=""
ARG MAX_JOBS=4
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY docker/scripts/install-stack.sh docker/scripts/held_packages.py /opt/llava/bin/
COPY docker/lock/dcu-py310.txt /opt/llava/lock.txt
COPY wheels/ /tmp/wheels/
# Index URLs (they may hold credentials) come as a BuildKit secret, never as build args (those
# stay in the image history): docker build --secret id=pip-index,src=FILE (docker/pip-index.env).
RUN --mount=type=secret,id=pip-index \
    /opt/llava/bin/install-stack.sh /opt/llava/lock.txt && rm -rf /tmp/wheels

# The project itself.
COPY pyproject.toml README.md /tmp/src/
COPY llava_core /tmp/src/llava_core
COPY cluster /tmp/src/cluster
COPY jobs /tmp/src/jobs
# ... and a loud failure when the stack cannot train on this base (transformers not seeing torch...)
RUN python -m pip install --no-deps --no-build-isolation /tmp/src && rm -rf /tmp/src \
    && python -m jobs.stack --check
COPY docker/entrypoint.sh /opt/llava/bin/

ENV HF_HOME=/cache/huggingface TORCH_EXTENSIONS_DIR=/cache/torch_extensions \
    XDG_CACHE_HOME=/cache MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /workspace
USER 1000
ENTRYPOINT ["/opt/llava/bin/entrypoint.sh"]
CMD ["demo"]

ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
ARG BASE_IMAGE
LABEL org.opencontainers.image.title="llava-cluster (dcu)" \
      org.opencontainers.image.description="LLaVA training jobs: pinned torch/DeepSpeed/transformers stack" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      io.llava-cluster.platform="dcu" \
      io.llava-cluster.lock="docker/lock/dcu-py310.txt"
