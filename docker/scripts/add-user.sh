#!/usr/bin/env bash
# add-user.sh NAME UID — the non-root user the images run as, and the folders it writes to.
# Vendor bases may already have a user with that UID (Ubuntu 24.04: `ubuntu`): it is reused.
set -euo pipefail
name="$1" uid="$2"
if ! getent passwd "$uid" >/dev/null; then
  getent group "$uid" >/dev/null || groupadd --gid "$uid" "$name"
  useradd --create-home --uid "$uid" --gid "$uid" --shell /bin/bash "$name"
fi
# /cache holds the HF hub cache and DeepSpeed's JIT-built ops; any UID given with `--user` may write.
mkdir -p /workspace /cache
chown "$uid" /workspace /cache
chmod 1777 /cache
