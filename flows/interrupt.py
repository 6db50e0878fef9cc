"""A Ctrl-C that outlives the exception it raises.

The command turns SIGINT into KeyboardInterrupt in the main thread, wherever that thread is. Most places
let it through; a library that catches BaseException to clean up and carries on (an HTTP client's retry,
an event loop's cancellation) may swallow it, and a full-suite run once saw a render finish through its
Ctrl-C. The request is therefore also recorded here, and the driver asks for it between the refinement's
steps, between stages and while it waits for the sketch: a swallowed interrupt stops the render there
instead of never."""

from __future__ import annotations

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
