#!/usr/bin/env bash
# install-site.sh — install llava-cluster into a site's own Python environment (conda or venv) that
# already holds the platform's torch and DeepSpeed, as on SCNet (docs/scnet.md):
#
#   module load compiler/dtk/24.04          # or 25.04: the DTK your DAS wheels were built for
#   conda activate llava                    # the env with Hygon's DAS torch / deepspeed / flash-attn
#   bash scripts/install-site.sh            # the dcu lock, then this project, then the stack check
#
# torch, deepspeed and flash-attn are never installed, upgraded or removed here: their versions are
# recorded first, held as constraints, and compared afterwards. Options:
#   --lock FILE   the pins to install (default: docker/lock/dcu-py310.txt, the dcu stack)
#   --test        also install the test tools (pytest, vermin)
# PYTHON (default: python) is the interpreter of the environment; PIP_INDEX_URL etc. work as usual
# (e.g. a mirror: PIP_INDEX_URL=https://pypi.tuna.tsinghua.edu.cn/simple).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
lock="$ROOT/docker/lock/dcu-py310.txt"
extras=""
while [ $# -gt 0 ]; do
  case "$1" in
    --lock) lock="$2"; shift 2 ;;
    --test) extras="[test]"; shift ;;
    *) echo "install-site: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
say() { echo "[install-site] $*" >&2; }

"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null \
  || { say "ERROR: $PYTHON is not Python >= 3.10 (activate the site's env, or set PYTHON=)"; exit 1; }
"$PYTHON" -c 'import torch' 2>/dev/null \
  || { say "ERROR: torch does not import in $("$PYTHON" -c 'import sys; print(sys.prefix)'): load the DTK module" \
           "(module load compiler/dtk/<version>) and activate the env with the site's torch first"; exit 1; }

keep="$(mktemp)"
trap 'rm -f "$keep"' EXIT
"$PYTHON" "$ROOT/docker/scripts/held_packages.py" record "$keep"
say "keeping the site's $(tr '\n' ' ' < "$keep")"
# the project with its dependencies at the lock's versions, the site's packages held where they are
"$PYTHON" -m pip install -q -c "$keep" -c "$lock" -e "$ROOT$extras"
"$PYTHON" "$ROOT/docker/scripts/held_packages.py" compare "$keep"
"$PYTHON" -c 'import torchvision' 2>/dev/null \
  || say "WARNING: no torchvision here: the processors of LLaVA-OneVision, Qwen-VL, InternVL and SmolVLM need" \
         "the one matching the site's torch (the DAS torchvision of the DTK; with PyPI's torch 2.1.2," \
         "torchvision==0.16.2); LLaVA-1.5 and LLaVA-NeXT train without it"
"$PYTHON" -m jobs.stack --check
say "done: python -m jobs.stack shows the stack; python -m jobs.submit ... runs jobs"
