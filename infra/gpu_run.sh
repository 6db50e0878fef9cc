#!/usr/bin/env bash
# One device call: install the wheel bundle (infra/build_bundle.sh) and run a GPU script of bench/.
#   bash infra/gpu_run.sh bench/gpu_flow.py --out $OUT/gpu_flow.json
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false \
       PREFECT_HOME=$(mktemp -d) PREFECT_LOGGING_LEVEL=WARNING HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec python3 "$@"
