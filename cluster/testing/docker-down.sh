#!/usr/bin/env bash
# docker-down.sh — stop the engine that docker-up.sh started (by its PID file) and clean its exec
# root. Images and build cache under LLAVA_DOCKER_STATE stay (pass --purge to delete them too).
set -euo pipefail

STATE="${LLAVA_DOCKER_STATE:-/var/lib/llava-docker}"
RUN="${LLAVA_DOCKER_RUN:-/run/llava-docker}"
PIDFILE="$RUN/dockerd.pid"

if [ -f "$PIDFILE" ]; then
  pid="$(cat "$PIDFILE")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { echo "[docker-down] dockerd $pid did not stop" >&2; exit 1; }
  fi
fi
if mountpoint -q "$RUN/exec/netns/default" 2>/dev/null; then umount "$RUN/exec/netns/default"; fi
rm -rf "$RUN"
if [ "${1:-}" = --purge ]; then rm -rf "$STATE"; fi
echo "[docker-down] stopped" >&2
