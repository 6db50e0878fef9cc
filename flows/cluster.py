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


def make_cluster(n_workers: int | None = None, processes: bool = True, dashboard_address: str = "127.0.0.1:0"):
    """A local cluster bound to loopback: one worker per GPU, or `n_workers` (default 2) CPU workers."""
    if gpu_count() > 0:
        return _pinned_cuda_cluster()(host="127.0.0.1", threads_per_worker=1, dashboard_address=dashboard_address,
                                      n_workers=n_workers)
    from distributed import Nanny, Scheduler, SpecCluster, Worker

    # A LocalCluster with string worker names and one pin resource each, so tile tasks stay pinned to a
    # worker across nanny restarts (see pin_resource); LocalCluster's int names also break recomputation.
    cls = Nanny if processes else Worker
    workers = {f"cpu-{i}": {"cls": cls, "options": {"nthreads": 1, "host": "127.0.0.1",
                                                     "resources": {pin_resource(f"cpu-{i}"): 1}}}
               for i in range(n_workers or 2)}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": dashboard_address}}
    return SpecCluster(scheduler=scheduler, workers=workers, name="supergen-local")


def _pinned_cuda_cluster():
    """LocalCUDACluster whose workers are named gpu-<device> and carry their pin resource, like the CPU
    cluster and infra/start_gpu_workers.sh (dask-cuda names workers by device number and gives them none).
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


def connect(address: str, timeout: float = 10.0):
    """A client for an existing scheduler; a clear error within `timeout` seconds if it is unreachable."""
    from distributed import Client

    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise ConnectionError(f"cannot reach the Dask scheduler at {address} within {timeout:.0f} s: {e}") from None


def announce(cluster_or_client) -> str:
    """Print and return the Dask dashboard address (users open it to watch the tile tasks)."""
    link = getattr(cluster_or_client, "dashboard_link", "")
    print(f"Dask dashboard: {link}", file=sys.stderr)
    return link
