#!/usr/bin/env bash
# Start the Dask scheduler of a supergen cluster (one per cluster, any host the workers can reach).
#   infra/start_scheduler.sh [HOST] [PORT] [DASHBOARD_PORT]
# Prints nothing itself; the scheduler logs its address and dashboard. Render with:
#   supergen render ... --cluster tcp://HOST:PORT --store s3://bucket/prefix
set -euo pipefail
HOST=${1:-0.0.0.0}; PORT=${2:-8786}; DASH=${3:-8787}
exec python3 -m distributed.cli.dask_scheduler --host "$HOST" --port "$PORT" --dashboard-address ":$DASH"
