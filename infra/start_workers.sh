#!/usr/bin/env bash
# Start this host's Dask workers for a supergen cluster: one per GPU, or SUPERGEN_CPU_WORKERS (default 1)
# CPU workers on a host without GPUs.
#   infra/start_workers.sh SCHEDULER_ADDRESS [--name PREFIX] [--tls DIR]
# Each worker gets a unique name (PREFIX-HOST-GPU, or PREFIX-HOST-K on CPUs) and a matching pin resource
# (pin-NAME=1): supergen pins tile tasks through that resource, which a restarted worker re-advertises, so
# cache locality and recovery survive worker restarts. One thread per worker: one tile forward at a time.
# --tls DIR: connect with DIR/ca.pem, DIR/worker.pem and DIR/worker.key (infra/make_certs.sh); the
# scheduler's address is then tls://... . With dask-cuda installed (pip install 'supergen[gpu]') the GPU
# workers are CUDA workers, else plain ones with CUDA_VISIBLE_DEVICES set per worker.
# What a render needs on this host: supergen installed, and any model given by folder path at that same
# path (supergen refuses a render whose model a worker lacks); the store is reached over its URL.
set -euo pipefail
SCHED=${1:?scheduler address, e.g. tls://10.0.0.1:8786}
shift
PREFIX=gpu; TLS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name) PREFIX=$2; shift 2 ;;
    --tls) TLS=(--tls-ca-file "$2/ca.pem" --tls-cert "$2/worker.pem" --tls-key "$2/worker.key")
           export DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True; shift 2 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
HOSTN=$(hostname -s)
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l || true)
if [ "$NGPU" -eq 0 ]; then  # CPU workers forked from one nanny that imported the model stack once
  [ "$PREFIX" = gpu ] && PREFIX=cpu
  exec python3 -m distributed.cli.dask_worker "$SCHED" --nworkers "${SUPERGEN_CPU_WORKERS:-1}" \
    --name "$PREFIX-$HOSTN" --nthreads 1 --no-dashboard --preload-nanny tasks.preload --preload tasks.preload \
    "${TLS[@]}"
fi
pids=()
for ((i = 0; i < NGPU; i++)); do
  NAME="$PREFIX-$HOSTN-$i"
  if python3 -c "import dask_cuda" 2>/dev/null; then
    CMD=(python3 -m dask_cuda.cli worker "$SCHED")
  else
    CMD=(python3 -m distributed.cli.dask_worker "$SCHED")
  fi
  CUDA_VISIBLE_DEVICES=$i "${CMD[@]}" --name "$NAME" --nthreads 1 --resources "pin-$NAME=1" \
    --memory-limit 0 --no-dashboard "${TLS[@]}" &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null' INT TERM
wait
