# llava-cluster, NVIDIA CUDA image (the default; the ROCm and DCU ones are docker/*.Dockerfile).
#   docker build -t llava-cluster:cuda .
#   docker build --secret id=pip-index,src=$HOME/.config/llava/pip-index.env \
#     --build-arg APT_MIRROR=https://mirrors.tuna.tsinghua.edu.cn -t llava-cluster:cuda .
# The base image ships python + a CUDA build of torch and nvcc; its torch is kept unless
# TORCH_SPEC names another (from TORCH_INDEX_URL or a wheel put in wheels/).
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-devel
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
COPY docker/lock/py311.txt /opt/llava/lock.txt
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
LABEL org.opencontainers.image.title="llava-cluster (cuda)" \
      org.opencontainers.image.description="LLaVA training jobs: pinned torch/DeepSpeed/transformers stack" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      io.llava-cluster.platform="cuda" \
      io.llava-cluster.lock="docker/lock/py311.txt"
