"""Prefect flows and deployments that wire `tasks` into a Dask(-CUDA) graph."""
