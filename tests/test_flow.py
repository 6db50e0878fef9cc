"""The Prefect flow on a real Prefect server (loopback) and a real Dask cluster it attaches to by address,
started the way a deployment starts one: `dask scheduler` and `dask worker` processes (both shared by the
session's orchestration tests, see conftest)."""

import os
import subprocess
import sys
import time

import pytest
import torch

import supergen
from storage import RenderStore
from supergen import RenderSpec

SPEC = dict(prompt="a red circle moving", model="tiny", width=128, height=128, frames=5, steps=6, refine_steps=4,
            cache="region", cache_threshold=5.0, cache_warmup=1, checkpoint_every=2, seed=3)


def test_flow_renders_into_the_store_with_artifacts(prefect_api, dask_cluster, tmp_path):
    from flows.render import render

    url = render(spec=SPEC, store_url=str(tmp_path / "s"), cluster=dask_cluster)
    store = RenderStore.open(url)
    assert store.complete
    ref = supergen.render(RenderSpec(**SPEC))
    torch.testing.assert_close(store.load_stage("final"), ref.latent, rtol=0, atol=1e-5)
    assert torch.equal(torch.from_numpy(store.video_frames()), ref.video)

    import anyio
    from prefect.client.orchestration import get_client

    async def artifacts():
        async with get_client() as c:
            return await c.read_artifacts()

    arts = anyio.run(artifacts)
    kinds = {a.type for a in arts}
    assert {"progress", "markdown"} <= kinds
    progress = [a for a in arts if a.type == "progress"]
    assert any(float(a.data) == 100.0 for a in progress)
    texts = " ".join(str(a.data) for a in arts if a.type == "markdown")
    assert "bytes moved between workers" in texts and "contact_sheet.png" in texts
    # the tile map: in the store, every step's tiles as the plan lays them, their workers and the cache's
    # skips as the cache report counts them; in the artifact, updated in place to the last step
    import json

    from supergen.backends import model_info
    from supergen.refine import RefinePlan

    spec = store.spec()
    info = model_info(spec.model)
    plan = RefinePlan.from_spec(spec, info.vae_spatial, info.native_latent)
    steps = json.loads(store.read_file("tile_map.json"))["steps"]
    assert [st["step"] for st in steps] == list(range(spec.refine_steps))
    names = {str(w) for w in _worker_names(dask_cluster)}
    for st in steps:
        assert [tuple(t["window"]) for t in st["tiles"]] == [(w.top, w.left, w.height, w.width)
                                                             for w in plan.grid(st["step"]).windows]
        assert {t["worker"] for t in st["tiles"]} <= names
    skip_map = json.loads(store.read_file("render.json"))["cache"]["skip_map"]
    skipped = sum(not t["computed"] for st in steps for t in st["tiles"])
    assert skipped == sum(map(sum, skip_map)) > 0
    maps = [str(a.data) for a in arts if a.description == f"tile map of {store.url}: workers and cache skips, newest step"]
    assert len(maps) == 1 and f"Refinement step {spec.refine_steps} of {spec.refine_steps}" in maps[0]
    totals: dict = {}
    for st in steps:
        for t in st["tiles"]:
            totals.setdefault(t["worker"], [0, 0])[0 if t["computed"] else 1] += 1
    for w, (c, k) in totals.items():  # the artifact's per-worker counts are the store's
        assert f"| {w} | {c} | {k} |" in maps[0]
    # running the flow again on the complete store is a no-op (retries and re-runs are idempotent)
    assert render(spec=SPEC, store_url=str(tmp_path / "s"), cluster=dask_cluster) == url


def _worker_names(address: str) -> list[str]:
    from distributed import Client

    from flows.refine import worker_names

    with Client(address, set_as_default=False) as c:
        return worker_names(c)


def test_deployment_schedule_is_data():
    from cronsim import CronSim

    from flows.deploy import deployment

    dep = deployment("nightly", SPEC, "s3://renders/{flow_run_id}", "tcp://127.0.0.1:8786", cron="0 3 * * *")
    assert dep.name == "nightly" and dep.schedules[0].schedule.cron == "0 3 * * *"
    assert dep.parameters["spec"]["seed"] == 3 and dep.parameters["store_url"].endswith("{flow_run_id}")
    import datetime

    nxt = next(iter(CronSim("0 3 * * *", datetime.datetime(2026, 11, 22, 12, 0))))
    assert (nxt.hour, nxt.day) == (3, 23)
    with pytest.raises(ValueError, match="not both"):
        deployment("x", SPEC, "u", "c", cron="* * * * *", interval=5)


@pytest.fixture(scope="module", autouse=True)
def served(prefect_api, dask_cluster, tmp_path_factory):
    """`supergen serve` publishing the render deployment to the session's Prefect server, started with the
    module so its start-up overlaps the tests before the one that triggers a run through it."""
    runs = tmp_path_factory.mktemp("runs")
    env = {**prefect_api, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}  # pick the run up within a second
    args = [sys.executable, "-m", "flows.cli", "serve", "--name", "t", "--cluster", dask_cluster,
            "--store", str(runs / "{flow_run_id}")]
    for k, v in {**SPEC, "steps": 4, "refine_steps": 2, "checkpoint_every": 1}.items():  # what is served, not
        args += [f"--{k.replace('_', '-')}", str(v)]                                     # the render, is tested
    proc = subprocess.Popen(args, env=env, cwd=os.getcwd(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield proc, runs
    proc.terminate()
    proc.wait(30)


def test_serve_runs_a_deployment_on_a_local_prefect_server(served):
    """One run triggered through the deployment `supergen serve` published on a `prefect server start` on
    loopback: the store it produced is complete."""
    from prefect.deployments import run_deployment

    proc, runs = served
    deadline = time.time() + 120
    while True:  # until `serve` has published the deployment
        try:
            run = run_deployment("supergen-render/t", timeout=240, poll_interval=0.25, as_subflow=False)
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.25)
    assert run.state.is_completed(), run.state
    assert RenderStore.open(str(runs / str(run.id))).complete


def test_a_work_pool_runs_renders_within_its_concurrency_limit(prefect_api, dask_cluster, tmp_path):
    """`supergen deploy` to a process work pool with `--concurrency 1` and per-stage options; a pool worker
    (`prefect worker start`) picks up two runs at once: both complete, and their stages never overlap (the
    second waited for the pool's one slot), each with the stage options the deployment set."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.deployments import run_deployment

    from flows.cli import main

    args = ["deploy", "--name", "pooled", "--pool", "gpus", "--concurrency", "1", "--cluster", dask_cluster,
            "--store", str(tmp_path / "{flow_run_id}"), "--stage-retries", "export=1",
            "--stage-timeout", "refine=300"]
    for k, v in {**SPEC, "steps": 4, "refine_steps": 2, "checkpoint_every": 1}.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    assert main(args) == 0
    env = {**os.environ, **prefect_api, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "gpus"], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        runs = [run_deployment("supergen-render/pooled", timeout=0, as_subflow=False) for _ in range(2)]

        async def states():
            async with get_client() as c:
                flows = await c.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in runs])))
                tasks = {r.id: await c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id])))
                         for r in runs}
                return flows, tasks

        deadline = time.time() + 240
        while True:
            flows, tasks = anyio.run(states)
            if all(f.state.is_final() for f in flows) or time.time() > deadline:
                break
            time.sleep(1)
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:  # a loaded box (seen once in a full run): its cleanup is not the test
            worker.kill()
            worker.wait()
    assert all(f.state.is_completed() for f in flows), [f.state for f in flows] + [(tmp_path / "worker.log").read_text()[-3000:]]
    spans = sorted((min(t.start_time for t in ts), max(t.end_time for t in ts)) for ts in tasks.values())
    assert spans[0][1] <= spans[1][0], spans  # one render's stages all ended before the other's began
    for r in runs:
        assert RenderStore.open(str(tmp_path / str(r.id))).complete
        names = {t.name.rsplit("-", 1)[0]: t for t in tasks[r.id]}
        assert names["decode and export"].empirical_policy.retries == 1
