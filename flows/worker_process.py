"""The worker processes of a local cluster belong to the nanny that started them, in the command's
process, and behave so (`make_cluster` applies both):

* Ctrl-C is the command's. A terminal sends SIGINT to its whole foreground process group, worker
  processes included: each raised KeyboardInterrupt in its own event loop and died with a traceback, and
  its nanny then logged a CancelledError traceback while the command was stopping the cluster anyway.
  `started_without_sigint` builds the cluster with SIGINT blocked in the constructing thread: the
  cluster's IO-loop thread inherits the block, so do the threads that spawn worker processes (also those
  a nanny restarts later) and the processes themselves (a blocked signal stays blocked across exec; Python
  never unblocks it). The command's main thread takes SIGINT again right after, a Ctrl-C meanwhile
  included: it is held, then taken, not lost.
* Once its worker has closed, the process ends at once (this module is also the workers' Dask preload).
  Local workers are spawned processes, which end through `sys.exit`: a full interpreter finalization that
  garbage-collects the model stack's heap (torch, diffusers, transformers). That takes seconds, on a busy
  machine longer than the grace a nanny gives a closing worker (0.8 x its 5 s close timeout); the nanny
  then SIGKILLed it and logged "Worker process still alive after 4.0 seconds, killing" on every shutdown.
  A forked child skips that teardown (os._exit); `_exit_now` does the same here, after everything else
  registered to run at exit has run.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading

_closed = False


def started_without_sigint(make):
    """`make()` (a cluster constructor, which returns with its worker processes started) with SIGINT
    blocked in this thread meanwhile, so in the threads and processes it starts. A Ctrl-C meanwhile is
    held, not lost and not raised half-way through the constructor: once it returned, the cluster is
    closed and the interrupt taken (KeyboardInterrupt). Plain `make()` off the main thread or without
    pthread_sigmask."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        return make()
    from multiprocessing import resource_tracker

    # Started now, not by the first spawn in the block: starting it unblocks SIGINT in the starting thread.
    resource_tracker.ensure_running()
    held = []
    # Other threads of this process still take SIGINT, and Python then runs the handler in this thread
    # wherever it is: hold it instead, until the cluster exists.
    handler = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        cluster = make()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a Ctrl-C pending for this thread is held now
        signal.signal(signal.SIGINT, handler)
    if held:
        try:
            if callable(handler):
                handler(signal.SIGINT, None)  # Python's default raises KeyboardInterrupt
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)
        except BaseException:
            cluster.close()
            raise
    return cluster


def dask_setup(worker) -> None:
    atexit.register(_exit_now)  # registered early, so it runs last (atexit runs LIFO)


def dask_teardown(worker) -> None:
    global _closed
    _closed = True


def _exit_now() -> None:
    if not _closed:  # the worker did not close normally: let the interpreter report what it reports
        return
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(0)
