"""Versions of the packages that decide a render's numbers (render.json, store attributes, benchmarks)."""

from __future__ import annotations


def versions() -> dict[str, str]:
    """Versions of the packages that decide a render's numbers."""
    import importlib.metadata as md
    import platform

    from . import __version__

    out = {"supergen": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out
