"""A Ctrl-C that outlives the exception it raises.

The command turns SIGINT into KeyboardInterrupt in the main thread, wherever that thread is. Most places
let it through; a library that catches BaseException to clean up and carries on (an HTTP client's retry,
an event loop's cancellation) may swallow it, and a full-suite run once saw a render finish through its
Ctrl-C. The request is therefore also recorded here, and the driver asks for it between the refinement's
steps, between stages and while it waits for the sketch: a swallowed interrupt stops the render there
instead of never.

A finalizer (`__del__`, a weakref callback) cannot pass an exception on: Python reports it as "Exception
ignored in ..." with a traceback and carries on. When the Ctrl-C lands in one, the request recorded here
still stops the render, so that report is noise, and `unraisable_hook` drops it."""

from __future__ import annotations

import contextlib
import sys
import threading

_requested = threading.Event()


def request() -> None:
    """Record a Ctrl-C (the command's SIGINT handler, before it raises KeyboardInterrupt)."""
    _requested.set()


def check() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C was requested: called between a render's steps."""
    if _requested.is_set():
        raise KeyboardInterrupt


def clear() -> None:
    _requested.clear()


def unraisable_hook(fallback):
    """A `sys.unraisablehook` that drops a KeyboardInterrupt swallowed by a finalizer once its Ctrl-C is
    recorded (the render stops at the next check) and hands anything else to `fallback`."""
    def hook(unraisable):
        if issubclass(unraisable.exc_type, KeyboardInterrupt) and _requested.is_set():
            return
        fallback(unraisable)
    return hook


@contextlib.contextmanager
def finalizers_quiet():
    """`unraisable_hook` installed for the duration of a command, the previous hook restored after."""
    previous = sys.unraisablehook
    sys.unraisablehook = unraisable_hook(previous)
    try:
        yield
    finally:
        sys.unraisablehook = previous
