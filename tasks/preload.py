"""A Dask preload for supergen workers started from the command line:

    dask worker tcp://SCHEDULER:8786 --nworkers 3 --name cpu --nthreads 1 \
        --preload-nanny tasks.preload --preload tasks.preload

* In a nanny, it imports the model stack (torch, diffusers, transformers: seconds of CPU per process) and
  switches the nanny to forking its worker, so the workers of one command share one import, and a worker
  restarted after a crash is back in about 0.5 s (2-core CI box) instead of re-importing everything. The
  nanny only imports: no CUDA context and no torch thread pool exist before the fork, which is what makes
  forking safe. (Not yet tried with dask-cuda's CUDA workers.)
* In a worker, it adds the worker's pin resource (`pin-<name>`), which supergen pins tile tasks with; so one
  `--nworkers N` command starts N pinnable workers (names `<name>-0` ... `<name>-<N-1>`).
"""

from __future__ import annotations


def pin_resource(name) -> str:
    """The per-worker resource that pins tile tasks to a worker across restarts. (A `workers=[name]`
    restriction is resolved to the worker's address at submission, so a recomputed task would wait forever
    for the dead address.) Workers get it from this preload or from `--resources pin-NAME=1`."""
    return f"pin-{name}"


def dask_setup(server) -> None:
    from distributed import Nanny

    if isinstance(server, Nanny):
        import dask
        import diffusers

        import tasks.refine  # noqa: F401
        import tasks.stages  # noqa: F401
        from supergen.backends.loading import REGISTRY, backend_class

        for pipeline in REGISTRY:  # every family's pipeline, model and text-encoder modules, and its backend
            getattr(diffusers, pipeline)
            backend_class(pipeline)
        dask.config.set({"distributed.worker.multiprocessing-method": "fork"})
        return
    import os

    threads = os.environ.get("OMP_NUM_THREADS")  # the nanny sets it for its child, but torch was imported
    if threads and threads.isdigit():  # (and read it) before the fork: apply it here
        import torch

        torch.set_num_threads(int(threads))
    res = pin_resource(server.name)
    if res not in server.state.total_resources:  # runs before the worker registers: the scheduler sees it
        server.state.total_resources[res] = 1
        server.state.available_resources[res] = 1
