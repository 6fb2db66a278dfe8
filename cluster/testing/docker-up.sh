#!/usr/bin/env bash
# docker-up.sh — start one private Docker engine on this machine (Debian bookworm, root), with the
# compose v2 plugin and hadolint of docker-tools.sh.
#
#   docker-up.sh            then:  eval "$(cluster/testing/docker-up.sh)"
#
# Prints `export KEY=VALUE` lines (DOCKER_HOST, DOCKER_CONFIG, PATH) on stdout; progress on stderr.
# No bridge and no iptables (they change the host firewall and break the Slurm test namespaces):
# containers and builds use host networking. Idempotent: a running engine is reused.
#
# Environment knobs (all optional):
#   LLAVA_DOCKER_STATE=/var/lib/llava-docker   data root (images, build cache)
#   LLAVA_DOCKER_RUN=/run/llava-docker         exec root, socket, pid file
#   LLAVA_DOCKER_INSTALL=1                     apt-get install missing Debian packages
set -euo pipefail

STATE="${LLAVA_DOCKER_STATE:-/var/lib/llava-docker}"
RUN="${LLAVA_DOCKER_RUN:-/run/llava-docker}"
INSTALL="${LLAVA_DOCKER_INSTALL:-1}"
SOCK="$RUN/docker.sock"
PIDFILE="$RUN/dockerd.pid"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { echo "[docker-up] $*" >&2; }
die() { log "ERROR: $*"; [ -f "$RUN/dockerd.log" ] && tail -n 20 "$RUN/dockerd.log" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (dockerd needs it)"

need=(docker.io containerd runc iptables debootstrap)
missing=(); for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$INSTALL" = 1 ] || die "missing packages: ${missing[*]}"
  log "apt-get install ${missing[*]}"
  while fuser /var/lib/dpkg/lock-frontend >/dev/null 2>&1; do sleep 2; done
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

config="$("$HERE/docker-tools.sh")"

export DOCKER_HOST="unix://$SOCK"
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  log "engine already running (pid $(cat "$PIDFILE"))"
else
  mkdir -p "$RUN" "$STATE/data"
  log "starting dockerd (data root $STATE/data, socket $SOCK)"
  setsid /usr/sbin/dockerd --iptables=false --ip6tables=false --bridge=none \
    --data-root "$STATE/data" --exec-root "$RUN/exec" -H "unix://$SOCK" --pidfile "$PIDFILE" \
    >"$RUN/dockerd.log" 2>&1 </dev/null &
  end=$((SECONDS + 60))
  until /usr/bin/docker version >/dev/null 2>&1; do
    [ $SECONDS -ge $end ] && die "dockerd did not answer within 60 s"
    sleep 0.5
  done
  log "engine up: $(/usr/bin/docker version --format '{{.Server.Version}}')"
fi

echo "export DOCKER_HOST=unix://$SOCK"
echo "export DOCKER_CONFIG=$config"
echo "export PATH=$(dirname "$config")/bin:\$PATH"
