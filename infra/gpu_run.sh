#!/usr/bin/env bash
# One device call: install the wheel bundle and run one GPU script of bench/.
#   bash infra/gpu_run.sh bench/gpu_flow.py --out $OUT/gpu_flow.json
set -euo pipefail
source "$(dirname "$0")/gpu_env.sh"
exec python3 "$@"
