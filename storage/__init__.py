"""The render store: one render's stages, checkpoints and outputs in chunked Zarr over fsspec URLs
(a local path, file://, memory://, s3://bucket/prefix)."""

from .location import StoreError, StoreNotFound
from .store import LAYOUT_VERSION, MARKER, RenderStore

__all__ = ["RenderStore", "StoreError", "StoreNotFound", "LAYOUT_VERSION", "MARKER"]
