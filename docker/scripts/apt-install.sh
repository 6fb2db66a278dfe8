#!/usr/bin/env bash
# apt-install.sh PKG... — install Debian/Ubuntu packages in an image layer, optionally through a
# mirror ($APT_MIRROR, e.g. https://mirrors.tuna.tsinghua.edu.cn replaces the archive hosts).
set -euo pipefail
if [ -n "${APT_MIRROR:-}" ]; then
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    sed -i -E "s#https?://(archive|security|ports)\.ubuntu\.com#${APT_MIRROR}#g; s#https?://deb\.debian\.org#${APT_MIRROR}#g" "$f"
  done
fi
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
rm -rf /var/lib/apt/lists/*
