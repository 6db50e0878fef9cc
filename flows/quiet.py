"""`--quiet` for a command that runs a Prefect flow on a Dask cluster: the console shows warnings and
errors only; the result line on stdout is all a successful command prints.

In this process Prefect's flow- and task-run records ("Beginning flow run", "Finished in state
Completed()") print through Prefect's console handler on the root logger, and the local cluster's
scheduler and nanny records (INFO by default) through the same handler, or through distributed's own
stream handler when distributed configured its logging before Prefect did. Raising the level of these
console handlers, not of the loggers, keeps every record flowing to Prefect's API handler: the run's
logs stay in its history.

Worker processes of a local cluster configure their own logging when they start; `make_cluster(quiet=
True)` gives them `silence_logs` for that.
"""

from __future__ import annotations

import contextlib
import logging


def console_handlers() -> list[logging.Handler]:
    """The handlers of this process that print to a terminal stream (not files, not Prefect's API)."""
    loggers = [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    found: dict[int, logging.Handler] = {}
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                found[id(h)] = h
    return list(found.values())


@contextlib.contextmanager
def quiet_console(level: int = logging.WARNING):
    """Console handlers show `level` and above inside the block. Import what configures logging (Prefect,
    distributed) before entering: their handlers must exist to be quieted."""
    changed = []
    for h in console_handlers():
        if h.level < level:
            changed.append((h, h.level))
            h.setLevel(level)
    try:
        yield
    finally:
        for h, old in changed:
            h.setLevel(old)
