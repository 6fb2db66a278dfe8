#!/usr/bin/env bash
# install-stack.sh LOCK — install the pinned training stack into the image's python, around the
# torch (and for DCU, DeepSpeed) that the base image ships. Index URLs come from the BuildKit
# secret pip-index (/run/secrets/pip-index, lines KEY=VALUE, see docker/pip-index.env): they may
# hold credentials, and build args stay in the image history. Its keys:
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST   a pip mirror for everything
#   TORCH_INDEX_URL  index for TORCH_SPEC (e.g. https://download.pytorch.org/whl/cu128);
#                    wheels in /tmp/wheels (the build context's wheels/) are always looked at
# Other inputs (build args, all optional):
#   TORCH_SPEC       e.g. torch==2.13.0: install torch first (else keep the base image's torch)
#   DEEPSPEED_SPEC   e.g. deepspeed==0.19.8 when the lock leaves DeepSpeed to the base (DCU)
#   DS_BUILD_OPS     auto (prebuild cpu_adam, fused_adam, utils when nvcc/hipcc exist), 1 (all), 0
#   GPU_ARCH_LIST    archs to build ops for (no GPU at build time): TORCH_CUDA_ARCH_LIST with nvcc
#                    (default 8.0;8.6;8.9;9.0), PYTORCH_ROCM_ARCH with hipcc (default gfx90a;gfx942)
#   FLASH_ATTN_SPEC  e.g. flash-attn==2.8.3 (built against the installed torch); empty: sdpa only
# The platform's torch, DeepSpeed and flash-attn are held (held_packages.py): the build fails if
# the lock would change them. The image then runs `python -m jobs.stack --check` on the result.
set -euo pipefail
lock="$1"
wheels=/tmp/wheels
# Some vendor images have only `python3`; the entrypoint and the launcher run `python`.
command -v python >/dev/null || ln -s "$(command -v python3)" /usr/local/bin/python
pip() { python -m pip "$@"; }

index=/run/secrets/pip-index
if [ -f "$index" ]; then
  while IFS='=' read -r key value; do
    case "$key" in
      PIP_INDEX_URL|PIP_EXTRA_INDEX_URL|PIP_TRUSTED_HOST|TORCH_INDEX_URL) export "$key=$value" ;;
      ''|'#'*) ;;
      *) echo "install-stack: $index: unknown key '$key' (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST, TORCH_INDEX_URL)" >&2; exit 1 ;;
    esac
  done < <(cat "$index"; echo)
fi

if [ -n "${TORCH_SPEC:-}" ]; then
  pip install --find-links "$wheels" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"
fi
torch_version="$(python -c 'import torch; print(torch.__version__)')" \
  || { echo "install-stack: the base image has no torch: set TORCH_SPEC" >&2; exit 1; }
# Nothing below may replace the platform's torch (nor the base's DeepSpeed or flash-attn: DCU).
keep=/tmp/keep-platform.txt
python "$(dirname "$0")/held_packages.py" record "$keep"

if command -v nvcc >/dev/null; then
  export TORCH_CUDA_ARCH_LIST="${GPU_ARCH_LIST:-8.0;8.6;8.9;9.0}"
elif command -v hipcc >/dev/null; then
  export PYTORCH_ROCM_ARCH="${GPU_ARCH_LIST:-gfx90a;gfx942}"
fi
case "${DS_BUILD_OPS:-auto}" in
  auto) if command -v nvcc >/dev/null || command -v hipcc >/dev/null; then
          export DS_BUILD_CPU_ADAM=1 DS_BUILD_FUSED_ADAM=1 DS_BUILD_UTILS=1
        fi
        unset DS_BUILD_OPS ;;
  0|1) export DS_BUILD_OPS ;;
  *) echo "install-stack: DS_BUILD_OPS must be auto, 0 or 1" >&2; exit 1 ;;
esac

# Build tools first: sdists in the lock (deepspeed) build against the installed torch.
mapfile -t build_tools < <(grep -E '^(setuptools|wheel)==' "$lock")
pip install -c "$keep" "${build_tools[@]}"
if [ -n "${DEEPSPEED_SPEC:-}" ]; then
  pip install --no-build-isolation -c "$keep" "$DEEPSPEED_SPEC"
  python "$(dirname "$0")/held_packages.py" record "$keep"
fi
pip install --no-build-isolation -c "$keep" -r "$lock"
if [ -n "${FLASH_ATTN_SPEC:-}" ]; then
  pip install --no-build-isolation -c "$keep" "$FLASH_ATTN_SPEC"
fi
python "$(dirname "$0")/held_packages.py" compare "$keep"
python -c 'import submitit, docker' \
  && echo "install-stack: kept $(tr '\n' ' ' < "$keep")+ $(wc -l < "$lock") pinned lines installed"
rm -f "$keep"
