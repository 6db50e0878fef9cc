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
