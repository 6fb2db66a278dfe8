#!/usr/bin/env bash
# Image entrypoint: load the vendor toolkit environment, then run a job.
#   (no args) | demo | pretrain ... | finetune ...   -> python -m jobs.submit ARGS (default: demo)
#   stack                                            -> python -m jobs.stack (the installed stack)
#   python ... | bash ... | sh ...                   -> run as given (the docker executor uses this)
# The platform profile itself (cluster.platform: thread counts, visible devices, dtype and attention
# limits) is applied on every rank by cluster.runtime: --platform, or detected (DTK, HIP, CUDA, CPU).
set -euo pipefail
if [ -f /opt/dtk/env.sh ]; then
  # DTK's env script reads unset variables.
  set +u; source /opt/dtk/env.sh; set -u
fi
echo "[entrypoint] host=$(hostname) uid=$(id -u): ${*:-demo}" >&2
case "${1:-demo}" in
  python|python3|bash|sh) exec "$@" ;;
  stack) shift; exec python -m jobs.stack "$@" ;;
  *) exec python -m jobs.submit "${@:-demo}" ;;
esac
