"""Beyond one host: a TLS cluster whose scheduler, two workers, client and S3 endpoint are five simulated
hosts (infra/simhosts.py: network namespaces on a bridge, each with its own hostname and /tmp). Every
process is started as an operator would start it (infra/ scripts; `supergen` commands, run in process by a
Python that stays up on the client host) and talks only to the other hosts. What is guaranteed, under test: no shared disk is assumed, no cluster
access without a certificate of the cluster's CA, no render lost when a host drops."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from infra.simhosts import Hosts, available, give_certs, host_env, wait_for_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHY = available()
pytestmark = pytest.mark.skipif(WHY is not None and os.environ.get("SUPERGEN_REQUIRE_HOSTS") != "1",
                                reason=f"no simulated hosts here: {WHY}")

PORT = 8786
PREFECT_AUTH = "operator:a-long-random-secret"  # the Prefect API's basic-auth credentials (user:password)
SPEC = ["--model", "tiny", "--prompt", "a red circle moving", "--width", "128", "--height", "112", "--frames", "5",
        "--steps", "7", "--refine-steps", "5", "--cache", "region", "--cache-threshold", "5", "--cache-warmup", "1",
        "--checkpoint-every", "2", "--seed", "11"]
# a fault lands after the first checkpoint (step 1) with four steps of nine windows still to go
LONG = ["--model", "tiny", "--prompt", "a red circle moving", "--width", "192", "--height", "160", "--frames", "5",
        "--steps", "8", "--refine-steps", "6", "--cache", "none", "--checkpoint-every", "2", "--seed", "5"]


def _env(**extra) -> dict:
    return host_env(ROOT, **extra)


class Cluster:
    """The five hosts and what runs on them; `cli` runs `supergen` on the client host."""

    def __init__(self, hosts: Hosts, certs: str):
        self.hosts, self.certs = hosts, certs
        self.address = f"tls://{hosts.ip('sched')}:{PORT}"
        self.procs: dict[str, subprocess.Popen] = {}

    def start_s3(self) -> None:
        p = self.hosts.popen("s3", [sys.executable, "-m", "infra.simhosts", "s3", "--host", self.hosts.ip("s3"),
                                    "--port", "5000"], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"the S3 server on host s3 exited ({p.wait()}) before announcing its endpoint")
        self.s3 = json.loads(line)
        self.aws = {"AWS_ACCESS_KEY_ID": self.s3["key"], "AWS_SECRET_ACCESS_KEY": self.s3["secret"],
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def start_scheduler(self) -> None:
        self.procs["sched"] = self.hosts.popen(
            "sched", ["bash", "infra/start_scheduler.sh", "--host", self.hosts.ip("sched"), "--port", str(PORT),
                      "--dashboard-port", "8787", "--tls", "/tmp/certs"],
            cwd=ROOT, env=_env(SUPERGEN_WORKER_TTL="3s", SUPERGEN_CONNECT_TIMEOUT="2s"),  # a dropped host: ~10 s
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start_worker(self, host: str) -> None:
        """The host's worker as infra/start_workers.sh starts it, with the host's own storage credentials."""
        self.procs[host] = self.hosts.popen(
            host, ["bash", "infra/start_workers.sh", self.address, "--name", "cpu", "--tls", "/tmp/certs"],
            cwd=ROOT, env=_env(**self.aws), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start_prefect(self) -> None:
        """Prefect's server on the client host's network address, behind basic authentication."""
        self.prefect_api = f"http://{self.hosts.ip('client')}:4200/api"
        self.procs["prefect"] = self.hosts.popen(
            "client", [sys.executable, "-m", "prefect", "server", "start", "--host", self.hosts.ip("client"),
                       "--port", "4200"],
            cwd=ROOT, env=_env(PREFECT_HOME="/tmp/prefect", PREFECT_SERVER_API_AUTH_STRING=PREFECT_AUTH),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def client_env(self) -> dict:
        return _env(**self.aws, PREFECT_API_URL=self.prefect_api, PREFECT_API_AUTH_STRING=PREFECT_AUTH,
                    PREFECT_HOME="/tmp/prefect-client", SUPERGEN_WORKER_GRACE_S="2")

    def store(self, name: str) -> list[str]:
        return ["--store", f"s3://renders/{name}", "--endpoint-url", self.s3["endpoint"]]

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """`supergen ARGS` on the client host, run in its warm interpreter (as `main` runs it: no start-up
        cost per command), with no TLS settings but those the arguments give."""
        code, out, err = self.py.eval(f"cli(*{list(args)!r})")
        return subprocess.CompletedProcess(args, code, out, err)

    def render(self, *args: str, tls: str = "/tmp/certs"):
        return self.cli("render", *args, "--cluster", self.address, "--tls-dir", tls, "--quiet")

    def start_render(self, name: str, *args: str) -> None:
        """`render` into store `name` on the client host, in the background (`finish` waits for it)."""
        self.py.eval(f"jobs = globals().setdefault('jobs', {{}})\njobs[{name!r}] = start('render', *{list(args)!r}, "
                     f"*{self.store(name)!r}, '--cluster', {self.address!r}, '--tls-dir', '/tmp/certs', '--quiet')")

    def running(self, name: str) -> bool:
        return self.py.eval(f"jobs[{name!r}]['thread'].is_alive()")

    def finish(self, name: str, timeout: float = 300) -> subprocess.CompletedProcess:
        got = self.py.eval(f"finish(jobs[{name!r}], {timeout})")
        assert got is not None, f"the render into {name} did not end within {timeout} s"
        return subprocess.CompletedProcess(name, *got)

    def workers(self, n: int, timeout: float = 120) -> list[str]:
        """The workers' names once the scheduler has `n` (asked from the client host)."""
        return self.py.eval(f"wait_workers({n}, {timeout})")

    def progress(self, name: str) -> dict:
        return self.py.eval(f"RenderStore.open('s3://renders/{name}', OPTS).progress()")


_CLIENT_PY = """
import json, time, torch
from distributed import Client
from flows.cluster import connect, use_tls_dir
from storage import RenderStore
import supergen
from supergen import RenderSpec
from supergen.executor import prepare
torch.set_num_threads(1)
use_tls_dir('/tmp/certs')
OPTS = {'client_kwargs': {'endpoint_url': ENDPOINT}}

def wait_workers(n, timeout):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with connect(ADDRESS) as c:
                names = sorted(str(w['name']) for w in c.scheduler_info(n_workers=-1)['workers'].values())
        except ConnectionError:
            names = []
        if len(names) >= n or time.monotonic() > deadline:
            return names
        time.sleep(0.3)

def video(url):
    return torch.from_numpy(RenderStore.open(url, OPTS).video_frames())

def cli(*argv):
    import contextlib, io
    import dask
    from flows.cli import main
    out, err = io.StringIO(), io.StringIO()
    fresh = {f"distributed.comm.tls.{k}": None for k in ("ca-file", "client.cert", "client.key")}
    with dask.config.set({**fresh, "distributed.comm.require-encryption": None}), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return [code, out.getvalue(), err.getvalue()]

def start(*argv):
    # `cli` in a thread: the interpreter answers other requests (progress) while the command runs
    import threading
    job = {}
    job['thread'] = threading.Thread(target=lambda: job.setdefault('result', cli(*argv)), daemon=True)
    job['thread'].start()
    return job

def finish(job, timeout):
    job['thread'].join(timeout)
    return job.get('result')
"""


def _boot() -> Cluster:
    """Build the hosts and start their processes (scheduler, Prefect, S3, workers); `_ready` waits for them."""
    certs = tempfile.mkdtemp(prefix="hosts-certs-")
    subprocess.run(["bash", "infra/make_certs.sh", certs], cwd=ROOT, check=True, capture_output=True)
    hosts = Hosts(["sched", "w1", "w2", "client", "s3"], shared=(ROOT, sys.prefix)).start()
    try:
        give_certs(hosts, certs, {"sched": "scheduler", "w1": "worker", "w2": "worker", "client": "client"})
        c = Cluster(hosts, certs)
        c.start_scheduler()
        c.start_prefect()
        c.start_s3()
        for w in ("w1", "w2"):
            c.start_worker(w)
        return c
    except BaseException:
        hosts.stop()
        raise


class _Early:
    """The hosts booted in a thread as soon as collection shows their tests will run (conftest), so the
    processes' start-up (the workers' imports, Prefect's migrations) overlaps the tests that run first."""

    thread: threading.Thread | None = None
    result: list = []

    @classmethod
    def start(cls) -> None:
        if WHY is None and cls.thread is None:
            cls.thread = threading.Thread(target=lambda: cls.result.append(_attempt(_boot)), daemon=True)
            cls.thread.start()

    @classmethod
    def stop(cls) -> None:
        if cls.thread is not None:
            cls.thread.join()
            ok, value = cls.result[0]
            if ok:
                value.hosts.stop()

    @classmethod
    def take(cls) -> Cluster:
        cls.start()
        cls.thread.join()
        ok, value = cls.result[0]
        if not ok:
            raise value
        return value


def _attempt(fn):
    try:
        return True, fn()
    except BaseException as e:  # handed to the fixture, raised there
        return False, e


@pytest.fixture(scope="module")
def cluster():
    if WHY is not None:
        pytest.fail(f"SUPERGEN_REQUIRE_HOSTS is set and simulated hosts cannot be built: {WHY}")
    c = _Early.take()
    try:
        c.py = c.hosts.python("client", cwd=ROOT, env=c.client_env())
        c.py.eval(f"ADDRESS, ENDPOINT = {c.address!r}, {c.s3['endpoint']!r}\n" + _CLIENT_PY)
        c.py.eval("from supergen.backends import tiny\ntiny.lora('wan-t2v', '/tmp/lora')")  # the client's alone
        wait_for_port(c.hosts, "client", c.hosts.ip("client"), 4200, proc=c.procs["prefect"])
        assert c.workers(2) == ["cpu-w1", "cpu-w2"]
        yield c
    finally:
        c.hosts.stop()
        shutil.rmtree(c.certs, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(cluster):
    """The in-process render of SPEC with the client's LoRA, on the client host (one thread, as a worker)."""
    cluster.py.eval(f"ref = supergen.render(prepare(RenderSpec.from_dict({_spec_kwargs(SPEC + ['--lora', '/tmp/lora'])!r})))")
    return "ref"


def _spec_kwargs(argv: list[str]) -> dict:
    from flows.cli import build_parser
    from supergen.options import spec_from_args

    return spec_from_args(build_parser().parse_args(["render", *argv])).to_dict()


def test_a_render_across_hosts_over_tls_is_the_in_process_video(cluster, reference):
    """Scheduler, workers, client and store on four hosts: the video is the in-process one, and the LoRA that
    only the client's disk holds reached the workers through the store."""
    done = cluster.render(*SPEC, "--lora", "/tmp/lora", *cluster.store("tls"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "s3://renders/tls/video.mp4"
    assert cluster.py.eval("bool(torch.equal(video('s3://renders/tls'), ref.video))")
    for w in ("w1", "w2"):  # each worker fetched the adapter from the store into its own /tmp
        assert not os.path.exists(os.path.join(cluster.hosts.tmp(w), "lora"))
        assert os.listdir(os.path.join(cluster.hosts.tmp(w), "supergen-lora"))


def test_the_prefect_api_answers_only_with_its_credentials(cluster):
    """Exposed beyond its host, Prefect's API takes only requests with its auth string (every render of
    this module runs through it with PREFECT_API_AUTH_STRING)."""
    ask = ("import base64, urllib.request, urllib.error\n"
           "def status(auth):\n"
           "    req = urllib.request.Request(URL + '/flows/filter', data=b'{}', method='POST',\n"
           "                                 headers={'Content-Type': 'application/json'})\n"
           "    if auth:\n"
           "        req.add_header('Authorization', 'Basic ' + base64.b64encode(auth.encode()).decode())\n"
           "    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
           "    try:\n"
           "        return opener.open(req, timeout=10).status\n"
           "    except urllib.error.HTTPError as e:\n"
           "        return e.code\n")
    worker = cluster.hosts.python("w1", cwd=ROOT, env=_env())  # another host of the network
    worker.eval(f"URL = {cluster.prefect_api!r}\n" + ask)
    assert worker.eval("status(None)") == 401
    assert worker.eval("status('operator:wrong')") == 401
    assert worker.eval(f"status({PREFECT_AUTH!r})") == 200
    worker.proc.stdin.close()


def test_a_folder_on_the_client_is_refused_as_the_store_before_any_stage(cluster):
    done = cluster.render(*SPEC, "--out", "/tmp/renders/local")
    assert done.returncode == 2
    err = done.stderr
    for w in ("cpu-w1", "cpu-w2"):
        assert re.search(rf"worker {w} \(tls://[0-9.:]+\) cannot use the store file:///tmp/renders/local: .*"
                         r"folder this host does not see \(no shared disk", err), err
    assert "Fix: give a store every host reaches: an object-store URL" in err
    for host in ("client", "w1", "w2"):  # nothing written: no store, no probe left behind
        assert not os.path.exists(os.path.join(cluster.hosts.tmp(host), "renders")), host
        assert not [f for f in os.listdir(cluster.hosts.tmp(host)) if f.startswith(".supergen-")], host


def test_a_model_folder_only_the_client_has_is_refused_naming_each_worker(cluster):
    cluster.py.eval("from supergen.backends import tiny\ntiny.save('wan-t2v', '/tmp/my-model')")
    done = cluster.render(*[a if a != "tiny" else "/tmp/my-model" for a in SPEC], *cluster.store("model"))
    assert done.returncode == 2
    for w in ("cpu-w1", "cpu-w2"):
        assert re.search(rf"worker {w} \(tls://[0-9.:]+\) cannot run this render: model folder /tmp/my-model is "
                         "not on this host: copy it to the same path on every worker host", done.stderr), done.stderr
    assert cluster.py.eval("RenderStore('s3://renders/model', OPTS).exists()") is False


def test_the_cluster_refuses_whoever_lacks_a_certificate_of_its_ca(cluster, tmp_path):
    """A client with no certificate, with one of another CA, or speaking plain TCP is refused with the
    reason; a worker with another CA's certificate never joins."""
    other = tmp_path / "other"
    subprocess.run(["bash", "infra/make_certs.sh", str(other), "client", "worker"], cwd=ROOT, check=True,
                   capture_output=True)
    for host, role in (("client", "client"), ("w2", "worker")):  # the layout --tls-dir and --tls read
        give_certs(cluster.hosts, str(other), {host: role}, into=f"other-{role}")
    bare = cluster.cli("render", *SPEC, *cluster.store("bare"), "--cluster", cluster.address, "--quiet")
    assert bare.returncode == 2 and "speaks TLS, and this client has no ca-file, client.cert, client.key" in bare.stderr
    alien = cluster.render(*SPEC, *cluster.store("alien"), tls="/tmp/other-client")
    assert alien.returncode == 2 and "do not accept each other's TLS certificates" in alien.stderr, alien.stderr
    plain = cluster.cli("render", *SPEC, *cluster.store("plain"), "--cluster", cluster.address.replace("tls", "tcp"),
                        "--quiet")
    assert plain.returncode == 2 and "closed the connection; a scheduler that requires TLS" in plain.stderr
    intruder = cluster.hosts.popen("w2", [sys.executable, "-m", "distributed.cli.dask_worker", cluster.address,
                                          "--name", "intruder", "--nthreads", "1", "--no-dashboard",
                                          "--death-timeout", "5", "--tls-ca-file", "/tmp/other-worker/ca.pem",
                                          "--tls-cert", "/tmp/other-worker/worker.pem",
                                          "--tls-key", "/tmp/other-worker/worker.key"],
                                   cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert intruder.wait(60) != 0  # it gave up: the scheduler never took it
    assert cluster.workers(2, timeout=0) == ["cpu-w1", "cpu-w2"]


def _when_checkpointed(cluster, name: str, step: int = 1) -> None:
    """Until the render into store `name` has a checkpoint after `step` (mid-refinement)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert cluster.running(name), cluster.finish(name, 0)
        try:
            ck = cluster.progress(name).get("checkpoint")
        except RuntimeError:  # no store yet
            ck = None
        if ck is not None and ck["step"] >= step:
            return
        time.sleep(0.1)
    raise AssertionError("the render never reached its checkpoint")


@pytest.fixture(scope="module")
def long_reference(cluster):
    cluster.py.eval(f"long_ref = supergen.render(prepare(RenderSpec.from_dict({_spec_kwargs(LONG)!r})))")
    return "long_ref"


@pytest.mark.slow
def test_a_worker_host_cut_off_mid_refinement_costs_no_render(cluster, long_reference):
    """Worker host w2's link goes down after the first checkpoint: the scheduler drops it (worker TTL), the
    refinement starts again from the checkpoint on w1, and the video is the in-process one."""
    cluster.start_render("cut", *LONG)
    try:
        _when_checkpointed(cluster, "cut")
        cluster.hosts.cut("w2")
        done = cluster.finish("cut")
    finally:
        cluster.hosts.restore("w2")  # its worker was dropped: the next test starts the workers again
    assert done.returncode == 0, done.stderr
    steps = cluster.py.eval("json.loads(RenderStore.open('s3://renders/cut', OPTS).read_file('tile_map.json'))"
                            "['steps']")
    workers = [{t["worker"] for t in st["tiles"]} for st in steps]
    assert len(workers) == 6 and workers[0] == {"cpu-w1", "cpu-w2"}
    assert workers[-1] == {"cpu-w1"}  # re-planned from a checkpoint, on w1 alone
    assert cluster.py.eval("bool(torch.equal(video('s3://renders/cut'), long_ref.video))")
    assert cluster.py.eval("RenderStore.open('s3://renders/cut', OPTS).complete")


@pytest.mark.slow
def test_a_scheduler_restart_fails_the_render_clearly_and_resume_finishes_it(cluster, long_reference):
    """The scheduler host's scheduler dies mid-refinement: the render fails naming the loss and the resume
    command; the store is not complete; once the scheduler and workers are back (a supervisor's restart),
    `supergen resume` finishes the same video."""
    cluster.start_render("restart", *LONG)
    _when_checkpointed(cluster, "restart")
    Hosts.kill(cluster.procs["sched"], signal.SIGKILL)
    done = cluster.finish("restart", timeout=180)
    err = done.stderr
    assert done.returncode == 2, err
    assert f"lost the Dask scheduler at {cluster.address} mid-render" in err, err
    assert f"`supergen resume s3://renders/restart --cluster {cluster.address}` continues it" in err
    assert cluster.progress("restart")["status"] != "complete"
    cluster.start_scheduler()
    for w in ("w1", "w2"):  # workers end with their scheduler; a supervisor starts them again
        Hosts.kill(cluster.procs[w])
        cluster.start_worker(w)
    assert cluster.workers(2) == ["cpu-w1", "cpu-w2"]
    done = cluster.cli("resume", "s3://renders/restart", "--endpoint-url", cluster.s3["endpoint"], "--cluster",
                       cluster.address, "--tls-dir", "/tmp/certs", "--quiet")
    assert done.returncode == 0, done.stderr
    assert cluster.py.eval("bool(torch.equal(video('s3://renders/restart'), long_ref.video))")
