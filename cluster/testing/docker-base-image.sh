#!/usr/bin/env bash
# docker-base-image.sh — make the CPU stand-ins for the vendor base images, without a registry.
#
#   1. local/debian:bookworm-ci   debootstrap minbase + this host's apt sources and CA certificates
#   2. local/llava-standin:cpu    docker/standin.Dockerfile on (1): python venv + the CPU torch wheel,
#                                 i.e. what pytorch/pytorch, rocm/pytorch and the DTK image provide
#
# Needs the engine of docker-up.sh (DOCKER_HOST set) and root. Skips an image that already exists
# (pass --rebuild to remake both). The torch wheel is taken from $PIP_FIND_LINKS (or /opt/wheels)
# and copied into wheels/ of the build context (gitignored).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BASE=local/debian:bookworm-ci
STANDIN=local/llava-standin:cpu
WHEELS_FROM="${PIP_FIND_LINKS:-/opt/wheels}"
TORCH_WHEEL_GLOB="torch-2.13.0+cpu-*.whl"
log() { echo "[docker-base-image] $*" >&2; }

[ "$(id -u)" = 0 ] || { log "ERROR: must run as root (debootstrap)"; exit 1; }
if [ "${1:-}" = --rebuild ]; then docker image rm -f "$STANDIN" "$BASE" >/dev/null 2>&1 || true; fi

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  mirror="$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
  rootfs="$(mktemp -d /var/tmp/bookworm-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  log "debootstrap bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
  rm -f "$rootfs/etc/apt/sources.list"
  cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/"
  mkdir -p "$rootfs/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
  tar --numeric-owner -C "$rootfs" -c . | docker import -c 'ENV LANG=C.UTF-8' \
    -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' - "$BASE" >/dev/null
  log "made $BASE"
fi

mkdir -p "$ROOT/wheels"
# shellcheck disable=SC2086
cp -u $WHEELS_FROM/$TORCH_WHEEL_GLOB "$ROOT/wheels/"
if ! docker image inspect "$STANDIN" >/dev/null 2>&1; then
  log "building $STANDIN"
  docker build -q --network host -f "$ROOT/docker/standin.Dockerfile" -t "$STANDIN" "$ROOT" >/dev/null
  log "made $STANDIN"
fi
