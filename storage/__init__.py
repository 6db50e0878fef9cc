"""The render store: chunked Zarr over fsspec URLs (issue 4)."""
