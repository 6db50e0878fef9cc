#!/usr/bin/env bash
# Start one Dask worker per GPU of this host for a supergen cluster.
#   infra/start_gpu_workers.sh tcp://SCHEDULER:8786 [NAME_PREFIX]
# Each worker gets a unique name (PREFIX-HOST-GPU) and a matching pin resource (pin-NAME=1): supergen pins
# tile tasks through that resource, which a restarted worker re-advertises, so cache locality and
# recovery survive worker restarts. One thread per worker: one tile forward at a time per GPU.
# With dask-cuda installed (pip install 'supergen[gpu]') the workers are CUDA workers, else plain ones
# with CUDA_VISIBLE_DEVICES set per worker.
set -euo pipefail
SCHED=${1:?scheduler address, e.g. tcp://10.0.0.1:8786}
PREFIX=${2:-gpu}
HOSTN=$(hostname -s)
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
[ "$NGPU" -gt 0 ] || { echo "no GPUs found on $HOSTN (nvidia-smi -L)" >&2; exit 1; }
pids=()
for ((i = 0; i < NGPU; i++)); do
  NAME="$PREFIX-$HOSTN-$i"
  if python3 -c "import dask_cuda" 2>/dev/null; then
    CMD=(python3 -m dask_cuda.cli worker "$SCHED")
  else
    CMD=(python3 -m distributed.cli.dask_worker "$SCHED")
  fi
  CUDA_VISIBLE_DEVICES=$i "${CMD[@]}" --name "$NAME" --nthreads 1 --resources "pin-$NAME=1" \
    --memory-limit 0 --no-dashboard &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null' INT TERM
wait
