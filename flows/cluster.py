"""Clusters: LocalCUDACluster (one worker per GPU) when GPUs exist, LocalCluster otherwise, or an existing
scheduler by address (a multi-node dask-cuda deployment started with infra/ scripts)."""

from __future__ import annotations

import os
import sys

from tasks.preload import pin_resource


def gpu_count() -> int:
    if os.environ.get("SUPERGEN_FORCE_CPU") == "1":
        return 0
    try:
        from dask_cuda.utils import get_n_gpus  # ImportError without dask-cuda; NVML error without a driver

        return int(get_n_gpus())
    except Exception:
        return 0


def make_cluster(n_workers: int | None = None, processes: bool = True, dashboard_address: str = "127.0.0.1:0",
                 quiet: bool = False):
    """A local cluster bound to loopback: one worker per GPU, or `n_workers` (default 2) CPU workers.
    `quiet`: the worker processes log warnings and errors only (LocalCUDACluster's default already).

    Its worker processes end with this process, also when it is killed: each exits when the pipe from its
    nanny, which lives here, closes (distributed's parent-alive pipe). They take no SIGINT: a terminal's
    Ctrl-C is for this process, which stops them (flows/worker_process.py)."""
    from .worker_process import started_without_sigint

    if gpu_count() > 0:
        return started_without_sigint(lambda: _pinned_cuda_cluster()(
            host="127.0.0.1", threads_per_worker=1, dashboard_address=dashboard_address, n_workers=n_workers))
    import logging

    from distributed import Nanny, Scheduler, SpecCluster, Worker

    # A LocalCluster with string worker names and one pin resource each, so tile tasks stay pinned to a
    # worker across nanny restarts (see pin_resource); LocalCluster's int names also break recomputation.
    cls = Nanny if processes else Worker
    extra = {"silence_logs": logging.WARNING} if quiet else {}
    if processes:  # the worker process exits as soon as its worker closed
        extra["preload"] = ["flows.worker_process"]
    workers = {f"cpu-{i}": {"cls": cls, "options": {"nthreads": 1, "host": "127.0.0.1", **extra,
                                                     "resources": {pin_resource(f"cpu-{i}"): 1}}}
               for i in range(n_workers or 2)}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": dashboard_address}}
    return started_without_sigint(lambda: SpecCluster(scheduler=scheduler, workers=workers, name="supergen-local"))


def _pinned_cuda_cluster():
    """LocalCUDACluster whose workers are named gpu-<device> and carry their pin resource, like the CPU
    cluster and infra/start_workers.sh (dask-cuda names workers by device number and gives them none).
    Built on first use: dask-cuda is only installed where there are GPUs."""
    from dask_cuda import LocalCUDACluster

    class PinnedCUDACluster(LocalCUDACluster):
        def new_worker_spec(self):
            spec = super().new_worker_spec()  # {device: worker spec}; the key stays the device number
            for device, worker in spec.items():
                name = f"gpu-{device}"
                opts = worker["options"]
                opts["name"] = name
                opts["resources"] = {**(opts.get("resources") or {}), pin_resource(name): 1}
            return spec

    return PinnedCUDACluster


TLS_FILES = {"ca-file": "ca.pem", "client.cert": "client.pem", "client.key": "client.key"}  # infra/make_certs.sh


def use_tls_dir(folder: str) -> None:
    """This process's Dask TLS credentials: `folder`'s ca.pem, client.pem and client.key (the layout
    infra/make_certs.sh writes), set in Dask's config (`distributed.comm.tls.*`), where a process without
    the option (a Prefect worker running a deployment) reads them from DASK_DISTRIBUTED__COMM__TLS__*."""
    import dask

    dask.config.set({f"distributed.comm.tls.{k}": os.path.join(folder, f) for k, f in TLS_FILES.items()}
                    | {"distributed.comm.require-encryption": True})


def tls_problem(address: str) -> str | None:
    """Why this process cannot open a tls:// connection (credentials not configured, unreadable, not a
    certificate and key that belong together), or None. Checked before anything starts."""
    import ssl

    import dask

    if not address.startswith("tls://"):
        return None
    files = {k: dask.config.get(f"distributed.comm.tls.{k}", None) for k in TLS_FILES}
    missing = [k for k, f in files.items() if not f]
    if missing:
        return (f"the scheduler at {address} speaks TLS, and this client has no {', '.join(missing)}: pass --tls-dir "
                "DIR (ca.pem, client.pem, client.key from infra/make_certs.sh) or set "
                "DASK_DISTRIBUTED__COMM__TLS__CA_FILE, __CLIENT__CERT and __CLIENT__KEY")
    for k, f in files.items():
        if not os.path.isfile(f) or not os.access(f, os.R_OK):
            return f"TLS {k} {f} is not a readable file"
    try:
        ssl.create_default_context(cafile=files["ca-file"]).load_cert_chain(files["client.cert"], files["client.key"])
    except (ssl.SSLError, ValueError) as e:
        return (f"TLS credentials {files['client.cert']} / {files['client.key']} / {files['ca-file']} do not load "
                f"({e}): a PEM certificate, its own key, and the cluster's CA")
    return None


def connect(address: str, timeout: float = 10.0):
    """A client for an existing scheduler (tls:// with this process's credentials, `use_tls_dir`); a clear
    error within `timeout` seconds if it is unreachable or refuses us."""
    import socket
    from urllib.parse import urlsplit

    from distributed import Client
    from distributed.comm.core import CommClosedError
    from distributed.security import Security

    problem = tls_problem(address)
    if problem:
        raise ConnectionError(problem)
    parts = urlsplit(address)
    if parts.scheme in ("tcp", "tls") and parts.hostname and parts.port:
        try:  # a refused or black-holed address answers in seconds; the client would retry until `timeout`
            socket.create_connection((parts.hostname, parts.port), timeout=min(3.0, timeout)).close()
        except OSError as e:
            raise ConnectionError(f"cannot reach the Dask scheduler at {address}: {e}") from None
    security = Security() if parts.scheme == "tls" else None  # the credentials of Dask's config
    try:
        return Client(address, timeout=timeout, set_as_default=False, security=security)
    except CommClosedError as e:
        if "SSL" in str(e) or "TLS certificate" in str(e):  # the handshake: a certificate of another CA
            detail = str(e).rpartition("SSLError: ")[2].split(". Check your")[0]
            raise ConnectionError(f"the Dask scheduler at {address} and this client do not accept each other's TLS "
                                  f"certificates ({detail}): both must be signed by the cluster's CA "
                                  "(infra/make_certs.sh)") from None
        hint = ("; a scheduler that requires TLS closes plain connections: use its tls:// address"
                if parts.scheme == "tcp" else "")
        raise ConnectionError(f"the Dask scheduler at {address} closed the connection{hint} ({e})") from None
    except (OSError, TimeoutError) as e:
        raise ConnectionError(f"cannot reach the Dask scheduler at {address} within {timeout:.0f} s: {e}") from None


def announce(cluster_or_client) -> str:
    """Print and return the Dask dashboard address (users open it to watch the tile tasks)."""
    link = getattr(cluster_or_client, "dashboard_link", "")
    print(f"Dask dashboard: {link}", file=sys.stderr)
    return link
