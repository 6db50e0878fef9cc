"""Trained models that ship inside the package, as ordinary diffusers folders.

`world` is the embedded default: a Wan-architecture model trained by `python -m supergen.train` on the
procedural world of `supergen.world`. It loads through `from_pretrained` like any user's `--model DIR`.
"""

from __future__ import annotations

import os

FOLDERS = {"world": os.path.join(os.path.dirname(__file__), "world")}


def folder(name: str) -> str | None:
    """The packaged folder of model `name`, or None when `name` is not a packaged model."""
    return FOLDERS.get(name)
