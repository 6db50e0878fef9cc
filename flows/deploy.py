"""Deployments of the render flow: `supergen serve` publishes one, with an optional cron or interval
schedule and default parameters, and runs its flow runs until stopped."""

from __future__ import annotations

from datetime import timedelta


def deployment(name: str, spec: dict, store_url: str, cluster: str, cron: str | None = None,
               interval: float | None = None, storage_options: dict | None = None, credentials: str | None = None):
    """The `supergen-render/<name>` deployment as data (nothing is contacted yet)."""
    from .render import render

    if cron and interval:
        raise ValueError("give a cron schedule or an interval, not both")
    params = {"spec": spec, "store_url": store_url, "cluster": cluster}
    if storage_options:
        params["storage_options"] = storage_options
    if credentials:
        params["credentials"] = credentials  # a Secret block's name; the secret itself stays in the block
    return render.to_deployment(name=name, cron=cron, interval=timedelta(seconds=interval) if interval else None,
                                parameters=params,
                                description="supergen render; store_url may contain {flow_run_id}")


def serve(name: str, **kwargs) -> None:
    """Publish the deployment and execute its runs (blocks until interrupted)."""
    from prefect import serve as prefect_serve

    prefect_serve(deployment(name, **kwargs))
