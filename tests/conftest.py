import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
# Prefect: a throwaway home, no telemetry, quiet; set before anything imports prefect.
os.environ.update(PREFECT_HOME=tempfile.mkdtemp(prefix="prefect-test-home-"), DO_NOT_TRACK="1",
                  PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING",
                  PREFECT_UI_ENABLED="false")
os.environ.pop("PREFECT_API_URL", None)
os.environ["SUPERGEN_FORCE_CPU"] = "1"  # tests build CPU clusters even where GPUs exist


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Factory: the folder of a saved tiny pipeline of `kind` (built and saved once per session)."""
    from supergen.backends import tiny

    root = tmp_path_factory.mktemp("tiny-models")
    made = {}

    def get(kind: str) -> str:
        if kind not in made:
            made[kind] = tiny.save(kind, str(root / kind))
        return made[kind]

    return get


@pytest.fixture(scope="session")
def image_path(tmp_path_factory):
    """A small structured RGB image (gradient with a disc) for image-to-video tests."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:96, 0:96]
    img = np.stack([x * 2.5, y * 2.5, ((x - 48) ** 2 + (y - 48) ** 2 < 400) * 255], -1).astype("uint8")
    p = tmp_path_factory.mktemp("img") / "cond.png"
    Image.fromarray(img).save(p)
    return str(p)


def broken_copy(folder, dest) -> str:
    """A copy of a model folder whose weight files are garbage: only its configs can be read."""
    import shutil

    shutil.copytree(folder, dest)
    for root, _, files in os.walk(dest):
        for f in files:
            if f.endswith(".safetensors"):
                with open(os.path.join(root, f), "wb") as fh:
                    fh.write(b"garbage")
    return str(dest)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _stop(procs, kill=False):
    for p in procs[::-1]:
        if p.poll() is None:
            p.kill() if kill else p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


class _Boot:
    """The orchestration tests' Prefect server and Dask cluster processes. They start as soon as collection
    shows a test needs them, so their start-up (the server's database migrations, the workers' imports)
    overlaps the tests that run first; the fixtures below wait for them."""

    def __init__(self):
        self.procs: list = []
        self.prefect = None  # (api url, environment for subprocesses)
        self.dask = None  # scheduler address

    def start_prefect(self):
        if self.prefect is None:
            port = free_port()
            api = f"http://127.0.0.1:{port}/api"
            env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": tempfile.mkdtemp(prefix="prefect-home-")}
            # the server serves its UI, pointed at this API, for the browser tests (tests/test_browser.py)
            server_env = {**env, "PREFECT_UI_ENABLED": "true", "PREFECT_UI_API_URL": api}
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.prefect = api, env
        return self.prefect

    def start_dask(self):
        """A `dask scheduler` and one `dask worker --nworkers 3` command, as infra/ starts them: the workers
        cpu-0..2 fork from a nanny that imported the model stack once (tasks.preload), which also gives each
        its pin resource."""
        if self.dask is None:
            port = free_port()
            self.dask = f"tcp://127.0.0.1:{port}"
            quiet = dict(env={**os.environ, "PYTHONPATH": os.getcwd()}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
                 "--dashboard-address", "127.0.0.1:0"], **quiet))
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", self.dask, "--nworkers", "3", "--name", "cpu",
                 "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard", "--preload-nanny", "tasks.preload",
                 "--preload", "tasks.preload"], **quiet))
        return self.dask

    def stop(self):
        if self.dask is not None:
            try:
                from distributed import Client

                with Client(self.dask, timeout=5, set_as_default=False) as c:
                    c.shutdown()  # the scheduler closes the nannies and their worker processes...
                time.sleep(0.5)
            except Exception:
                pass
        _stop(self.procs, kill=True)  # ...the CLI processes would linger; the server's database is a throwaway
        self.procs, self.prefect, self.dask = [], None, None


_boot = _Boot()


def pytest_collection_finish(session):
    needed = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    if "prefect_api" in needed:
        _boot.start_prefect()
    if "dask_cluster" in needed:
        _boot.start_dask()
    hosts = [item.module for item in session.items if item.module.__name__.endswith("test_hosts")]
    if hosts:
        hosts[0]._Early.start()  # the simulated hosts boot while the tests before theirs run


def pytest_sessionfinish(session, exitstatus):
    _boot.stop()
    hosts = sys.modules.get("test_hosts") or sys.modules.get("tests.test_hosts")
    if hosts is not None:
        hosts._Early.stop()  # booted but never used (a run stopped early): its processes go too


@pytest.fixture(scope="session")
def prefect_api():
    """The session's Prefect API (a real `prefect server start` on loopback with its own home), healthy and
    set for this process (flows run here report to it); returns the environment subprocesses (serve,
    run_deployment) need to reach it."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    api, env = _boot.start_prefect()
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(api + "/health", timeout=2):
                break
        except OSError:
            if time.time() > deadline:
                raise RuntimeError(f"prefect server at {api} did not come up") from None
            time.sleep(0.2)
    with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield env


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory):
    """The session's Dask cluster (see _Boot.start_dask), shared by every orchestration test; the workers
    load the embedded model here, in parallel. Returns the scheduler address."""
    from distributed import Client

    from storage import RenderStore
    from supergen import RenderSpec
    from supergen.executor import prepare
    from tasks.model import ModelHolder
    from tasks.stages import warm_worker

    addr = _boot.start_dask()
    deadline = time.time() + 90
    with Client(addr, timeout=60, set_as_default=False) as c:
        while len(c.scheduler_info(n_workers=-1)["workers"]) < 3:
            if time.time() > deadline:
                raise RuntimeError("the test cluster's workers did not start")
            time.sleep(0.1)
        store = RenderStore.create(str(tmp_path_factory.mktemp("warm") / "s"),
                                   prepare(RenderSpec(prompt="warm", model="tiny")))
        c.register_plugin(ModelHolder())
        c.gather([c.submit(warm_worker, store, "warm", workers=[f"cpu-{i}"], pure=False) for i in range(3)])
    return addr


class S3Endpoint:
    """A real S3 endpoint (moto's server) on loopback, with authentication enforced: requests must be
    signed with an access key its IAM knows, so a wrong key or secret fails as it would on AWS."""

    def __init__(self, endpoint: str, key: str, secret: str):
        self.endpoint, self.key, self.secret = endpoint, key, secret

    def client(self, **kw):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret, region_name="us-east-1", **kw)

    def options(self, **extra) -> dict:
        return {"client_kwargs": {"endpoint_url": self.endpoint}, **extra}


@pytest.fixture(scope="session")
def s3():
    """The session's S3 endpoint with a bucket `renders`; its credentials are in this process's environment
    (the standard chain), as a user's would be."""
    import json

    import boto3
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bootstrap",
                       aws_secret_access_key="bootstrap")
    iam.create_user(UserName="renderer")
    iam.put_user_policy(UserName="renderer", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="renderer")["AccessKey"]
    ep = S3Endpoint(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    old_count = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count = 0, 0  # enforce from here on
    mp = pytest.MonkeyPatch()
    for k, v in {"AWS_ACCESS_KEY_ID": ep.key, "AWS_SECRET_ACCESS_KEY": ep.secret, "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_EC2_METADATA_DISABLED": "true"}.items():
        mp.setenv(k, v)
    mp.delenv("AWS_PROFILE", raising=False)
    ep.client().create_bucket(Bucket="renders")
    yield ep
    mp.undo()
    settings.INITIAL_NO_AUTH_ACTION_COUNT = old_count
    server.stop()
