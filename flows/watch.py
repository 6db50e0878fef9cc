"""Waiting on a stage's tasks while watching the workers they are pinned to.

A pinned task whose worker is gone for good (its host powered off or cut from the network) waits forever:
its pin resource is the lost worker's alone. A worker process that died comes back under its name within
seconds (its nanny restarts it) and re-advertises the resource, so only an absence longer than a grace
period counts as lost. The scheduler drops a silent host only after `distributed.scheduler.worker-ttl` and
a failed attempt to reach its nanny (infra/start_scheduler.sh: 60 s and 10 s), so a host cut off is
reported after those plus the grace.
"""

from __future__ import annotations

import os
import threading
import time

from distributed import Client

GRACE_S = float(os.environ.get("SUPERGEN_WORKER_GRACE_S", "20"))  # how long a worker may be away and return


class WorkerLost(RuntimeError):
    """Workers a stage had placed work on left the cluster and did not come back."""

    def __init__(self, lost: list, grace_s: float = GRACE_S):
        self.lost = sorted(lost, key=str)
        super().__init__(f"worker(s) {', '.join(map(str, self.lost))} left the cluster and did not return "
                         f"within {grace_s:g} s")


class Watch:
    """The workers (by name) a stage placed work on; `wait` returns when futures finish, and raises
    `WorkerLost` when one of those workers has been missing from the scheduler for `grace_s` (with
    `any_of`, when all of them have: the work may run on any, and Dask moves it off a dead one)."""

    def __init__(self, client: Client, workers, grace_s: float | None = None, poll_s: float = 1.0,
                 any_of: bool = False):
        self.client, self.workers = client, [str(w) for w in workers]
        self.grace_s = GRACE_S if grace_s is None else grace_s
        self.poll_s, self.any_of = poll_s, any_of
        self.missing: dict[str, float] = {}  # name -> when it was first seen missing

    def check(self) -> None:
        """Raise `WorkerLost` if a watched worker has been away for the grace period (and, between polls,
        the Ctrl-C some library swallowed: flows/interrupt.py)."""
        from . import interrupt
        from .refine import worker_names

        interrupt.check()
        present, now = {str(w) for w in worker_names(self.client)}, time.monotonic()
        for w in self.workers:
            if w in present:
                self.missing.pop(w, None)
            else:
                self.missing.setdefault(w, now)
        lost = [w for w, since in self.missing.items() if now - since >= self.grace_s]
        if lost and (not self.any_of or len(lost) == len(self.workers)):
            raise WorkerLost(lost, self.grace_s)

    def wait(self, futures: list) -> None:
        """Until every future is finished (done, failed or cancelled), checking the workers meanwhile. Done
        callbacks wake it the moment the last one finishes (no polling latency on the step's critical path)."""
        pending = [f for f in futures if not f.done()]
        if not pending:
            return
        left, lock, finished = [len(pending)], threading.Lock(), threading.Event()

        def one_done(_future) -> None:
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    finished.set()

        for f in pending:
            f.add_done_callback(one_done)
        while not finished.wait(self.poll_s):
            self.check()


def finished(client: Client, workers: list, future, any_of: bool = False):
    """The result of `future`, pinned to `workers` (with `any_of`, to one of them), once it is done;
    `WorkerLost` (the task cancelled) should those workers (with `any_of`, all of them) leave for good."""
    try:
        Watch(client, workers, any_of=any_of).wait([future])
    except WorkerLost:
        client.cancel(future)
        raise
    return future.result()


def scheduler_lost(client: Client, e: BaseException) -> bool:
    """Whether `e` came of losing the scheduler: a future cancelled because the client's connection went
    (which holds even once the client has reconnected to a restarted scheduler), or a client not connected."""
    seen = e
    while seen is not None:
        if getattr(seen, "reason", None) == "scheduler-connection-lost":
            return True
        seen = seen.__cause__ or seen.__context__
    return client.status != "running"
