#!/usr/bin/env bash
# Start the Dask scheduler of a supergen cluster (one per cluster, on a host every worker and client reaches).
#   infra/start_scheduler.sh [--host HOST] [--port PORT] [--dashboard-port PORT] [--tls DIR]
# --tls DIR: TLS with mutual authentication, from DIR/ca.pem, DIR/scheduler.pem and DIR/scheduler.key
# (infra/make_certs.sh makes them): the address becomes tls://HOST:PORT, and every worker and client must
# show a certificate the same CA signed; plain tcp:// connections are refused. Without it the scheduler
# takes any connection, and a Dask scheduler runs whatever pickled code it is sent: keep such a cluster on
# a network only its own hosts reach.
# A worker that stops answering (its host cut off, powered down) is removed after SUPERGEN_WORKER_TTL
# (default 60s; Dask's own default is 5 minutes) plus the time the scheduler gives up reaching its nanny
# (SUPERGEN_CONNECT_TIMEOUT, default 10s; Dask's is 30s); supergen then re-plans the render on the workers left.
# Render with:  supergen render ... --cluster tls://HOST:PORT --tls-dir DIR --store s3://bucket/prefix
set -euo pipefail
HOST=0.0.0.0; PORT=8786; DASH=8787; TLS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --host) HOST=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --dashboard-port) DASH=$2; shift 2 ;;
    --tls) TLS=(--protocol tls --tls-ca-file "$2/ca.pem" --tls-cert "$2/scheduler.pem" --tls-key "$2/scheduler.key")
           export DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True; shift 2 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
export DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL=${SUPERGEN_WORKER_TTL:-60s}
export DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=${SUPERGEN_CONNECT_TIMEOUT:-10s}
exec python3 -m distributed.cli.dask_scheduler --host "$HOST" --port "$PORT" --dashboard-address ":$DASH" "${TLS[@]}"
