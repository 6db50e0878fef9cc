"""The Prefect flow on a real (ephemeral, loopback) Prefect API and a real Dask cluster it attaches to by
address, started the way a deployment starts one: `dask scheduler` and `dask worker` processes."""

import os
import socket
import subprocess
import sys
import time

import pytest
import torch

import supergen
from storage import RenderStore
from supergen import RenderSpec

SPEC = dict(prompt="a red circle moving", width=128, height=128, frames=5, steps=6, refine_steps=4,
            cache="region", cache_threshold=5.0, cache_warmup=1, checkpoint_every=2, seed=3)


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60), \
            temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


@pytest.fixture(scope="module")
def cli_cluster():
    """A scheduler and two workers started from the command line on loopback, as infra/ does."""
    port = _port()
    addr = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    procs = [subprocess.Popen(dask + ["--host", "127.0.0.1", "--port", str(port), "--dashboard-address",
                                      "127.0.0.1:0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    for i in range(2):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", addr, "--name", f"cpu-{i}", "--nthreads", "1",
             "--host", "127.0.0.1", "--resources", f"pin-cpu-{i}=1", "--no-dashboard"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    from distributed import Client

    deadline = time.time() + 60
    with Client(addr, timeout=30, set_as_default=False) as c:
        while len(c.scheduler_info(n_workers=-1)["workers"]) < 2 and time.time() < deadline:
            time.sleep(0.3)
    yield addr
    for p in procs[::-1]:
        p.terminate()
    for p in procs:
        p.wait(20)


def test_flow_renders_into_the_store_with_artifacts(prefect_api, cli_cluster, tmp_path):
    from flows.render import render

    url = render(spec=SPEC, store_url=str(tmp_path / "s"), cluster=cli_cluster)
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
    # running the flow again on the complete store is a no-op (retries and re-runs are idempotent)
    assert render(spec=SPEC, store_url=str(tmp_path / "s"), cluster=cli_cluster) == url


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


def test_serve_runs_a_deployment_on_a_local_prefect_server(cli_cluster, tmp_path):
    """`prefect server start` on loopback, `supergen serve` publishing the deployment, one run triggered
    through it: the store it produced is complete."""
    port = _port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    served = None
    try:
        import urllib.request

        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(api + "/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        args = [sys.executable, "-m", "flows.cli", "serve", "--name", "t", "--cluster", cli_cluster,
                "--store", str(tmp_path / "runs" / "{flow_run_id}")]
        for k, v in SPEC.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        served = subprocess.Popen(args, env=env, cwd=os.getcwd(), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        code = (
            "import asyncio, sys\n"
            "from prefect.deployments import run_deployment\n"
            "for _ in range(120):\n"
            "    try:\n"
            "        r = run_deployment('supergen-render/t', timeout=240); break\n"
            "    except Exception as e:\n"
            "        import time; time.sleep(1)\n"
            "print(r.id, r.state.type.value)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        run_id, state = out.stdout.split()[-2:]
        assert state == "COMPLETED", out.stdout + out.stderr
        assert RenderStore.open(str(tmp_path / "runs" / run_id)).complete
    finally:
        for p in (served, server):
            if p is not None:
                p.terminate()
                p.wait(30)
