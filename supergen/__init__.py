"""supergen: 2K/4K video from standard-resolution video diffusion models, training-free
(SuperGen, arXiv 2508.17756: sketch at native size, upscale in pixel space, re-noise, tiled refinement)."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import BackendError, SpecError, SupergenError
from .spec import RenderSpec
from .versions import versions


def render(spec: RenderSpec, progress=None, backend=None):
    """Render `spec` in this process; returns a `RenderResult`. See `supergen.executor.render`."""
    from .executor import render as _render

    return _render(spec, progress=progress, backend=backend)


__all__ = ["RenderSpec", "render", "versions", "SupergenError", "SpecError", "BackendError", "__version__"]
