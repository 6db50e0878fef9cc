"""Deployments of the render flow: `supergen serve` publishes one, with an optional cron or interval
schedule and default parameters, and runs its flow runs until stopped; `supergen deploy` publishes one to
a work pool, whose workers run it, with a cap on concurrent renders and per-stage retries and timeouts."""

from __future__ import annotations

from datetime import timedelta


def deployment(name: str, spec: dict, store_url: str, cluster: str, cron: str | None = None,
               interval: float | None = None, storage_options: dict | None = None, credentials: str | None = None,
               preview_url: str | None = None):
    """The `supergen-render/<name>` deployment as data (nothing is contacted yet)."""
    from .render import render

    return render.to_deployment(name=name, **schedule(cron, interval),
                                parameters=parameters(spec, store_url, cluster, storage_options, credentials,
                                                      preview_url),
                                description="supergen render; store_url may contain {flow_run_id}")


def schedule(cron: str | None, interval: float | None) -> dict:
    """A deployment's schedule arguments: a cron string or an interval in seconds, not both."""
    if cron and interval:
        raise ValueError("give a cron schedule or an interval, not both")
    return {"cron": cron, "interval": timedelta(seconds=interval) if interval else None}


def parameters(spec: dict, store_url: str, cluster: str, storage_options: dict | None, credentials: str | None,
               preview_url: str | None, **more) -> dict:
    """A deployment's flow parameters, the optional ones only where given (`more`: always)."""
    params = {"spec": spec, "store_url": store_url, "cluster": cluster, **more}
    optional = {"storage_options": storage_options, "preview_url": preview_url,
                "credentials": credentials}  # a Secret block's name; the secret itself stays in the block
    return params | {k: v for k, v in optional.items() if v}


def serve(name: str, **kwargs) -> None:
    """Publish the deployment and execute its runs (blocks until interrupted)."""
    from prefect import serve as prefect_serve

    prefect_serve(deployment(name, **kwargs))


def slots_name(pool: str) -> str:
    """The global concurrency limit that caps a work pool's concurrent renders."""
    return f"supergen-renders-{pool}"


def deploy_to_pool(name: str, pool: str, spec: dict, store_url: str, cluster: str, concurrency: int | None = None,
                   stage_options: dict | None = None, cron: str | None = None, interval: float | None = None,
                   storage_options: dict | None = None, credentials: str | None = None,
                   preview_url: str | None = None):
    """Publish `supergen-render/<name>` to the process work pool `pool` (created if missing), for the pool's
    workers (`prefect worker start --pool POOL`) to run: each run is a process of its own on a worker's host,
    importing the flow from the installed package. With `concurrency`, the global concurrency limit
    `slots_name(pool)` is set to it and every run holds one of its slots for its render, so the pool never
    runs more renders at once; `stage_options` set retries and timeouts per stage (`render.stage_tasks`).
    Returns the deployment's id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate,
                                                WorkPoolCreate)
    from prefect.deployments.runner import EntrypointType
    from prefect.exceptions import ObjectNotFound

    from .render import render, stage_tasks

    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency is the number of renders the pool may run at once, at least 1; got {concurrency}")
    stage_tasks(stage_options)  # a misnamed stage or option fails here, not in every run
    when = schedule(cron, interval)
    params = parameters(spec, store_url, cluster, storage_options, credentials, preview_url,
                        stage_options=stage_options, slots=slots_name(pool) if concurrency is not None else None)
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        if concurrency is not None:
            try:
                client.read_global_concurrency_limit_by_name(slots_name(pool))
                client.update_global_concurrency_limit(slots_name(pool), GlobalConcurrencyLimitUpdate(limit=concurrency))
            except ObjectNotFound:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=slots_name(pool),
                                                                                    limit=concurrency))
    dep = render.to_deployment(name=name, **when, parameters=params, work_pool_name=pool,
                               entrypoint_type=EntrypointType.MODULE_PATH,
                               description="supergen render on a work pool; store_url may contain {flow_run_id}")
    return dep.apply(work_pool_name=pool)
