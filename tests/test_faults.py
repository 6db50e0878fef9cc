"""Faults and bad input, one row per case, with real parts: an S3 endpoint that enforces authentication,
a Prefect server, a CLI-started Dask cluster, real subprocesses killed for real.

Every row asserts the exit code, the cause named in the message, the time to fail and what exists
afterwards (docs/reliability.md is the matrix)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest
import torch

import supergen
from flows.cli import main
from storage import RenderStore
from supergen import RenderSpec
from supergen.executor import prepare

SMALL = dict(prompt="a red circle moving", width=128, height=96, frames=5, steps=8, refine_steps=7,
             checkpoint_every=2, model="tiny")


def _args(**kw) -> list[str]:
    out = []
    for k, v in {**SMALL, **kw}.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


@dataclass
class Row:
    """argv (a function of the S3 endpoint) -> exit code, words of the cause, seconds, and what exists."""

    name: str
    argv: object
    words: tuple[str, ...]
    max_s: float = 5.0
    code: int = 2
    env: dict = field(default_factory=dict)
    nothing_at: str | None = None  # an s3 prefix or local path that must hold nothing afterwards


def _s3(ep, url="s3://renders/faults/x", *more):
    return ["render", *_args(), "--quiet", "--store", url, "--endpoint-url", ep.endpoint, *more]


ROWS = [
    Row("wrong secret", lambda ep: _s3(ep, "s3://renders/faults/x", "--storage-option", f"key={ep.key}",
                                       "--storage-option", "secret=not-the-secret"),
        ("secret key does not match",), nothing_at="s3://renders/faults/x"),
    Row("unknown access key", lambda ep: _s3(ep, "s3://renders/faults/x", "--storage-option", "key=AKIAUNKNOWN0000000",
                                             "--storage-option", f"secret={ep.secret}"),
        ("access key id is not known",), nothing_at="s3://renders/faults/x"),
    Row("unknown profile", lambda ep: _s3(ep, "s3://renders/faults/x", "--profile", "no-such-profile"),
        ("unknown credentials profile", "no-such-profile")),
    Row("unknown storage option", lambda ep: _s3(ep, "s3://renders/faults/x", "--storage-option", "bogus=1"),
        ("unknown storage option 'bogus'",)),
    Row("unreachable endpoint", lambda ep: ["render", *_args(), "--quiet", "--store", "s3://renders/faults/x",
                                            "--endpoint-url", "http://127.0.0.1:9"],
        ("unreachable", "http://127.0.0.1:9", "3 s")),
    Row("missing bucket", lambda ep: _s3(ep, "s3://no-such-bucket/x"), ("bucket 'no-such-bucket' does not exist",)),
    Row("bucket root", lambda ep: _s3(ep, "s3://renders"), ("root of bucket", "--bucket-root")),
    Row("one-slash URL", lambda ep: _s3(ep, "s3:/renders/x"), ("malformed", "s3://renders/x")),
    Row("no-slash URL", lambda ep: _s3(ep, "s3:renders/x"), ("malformed", "s3://renders/x")),
    Row("bad bucket name", lambda ep: _s3(ep, "s3://Renders/x"), ("not a valid bucket name",)),
    Row("dot segment", lambda ep: _s3(ep, "s3://renders/a/../b"), ("'..' path segment",)),
    Row("query in URL", lambda ep: _s3(ep, "s3://renders/x?versionId=1"), ("query or fragment",)),
    Row("scheme-like local name", lambda ep: ["render", *_args(), "--quiet", "--store", "renders:v1"],
        ("for a local folder write ./renders:v1",)),
    Row("relative file URL", lambda ep: ["render", *_args(), "--quiet", "--store", "file://rel/x"],
        ("not absolute",)),
    Row("workers without a local cluster", lambda ep: ["render", *_args(), "--quiet", "--workers", "3"],
        ("--workers sizes the cluster",)),
    Row("zero workers", lambda ep: ["render", *_args(), "--quiet", "--cluster", "local", "--workers", "0"],
        ("--workers must be >= 1",)),
    Row("not a scheduler address", lambda ep: ["render", *_args(), "--quiet", "--cluster", "somehost"],
        ("scheduler address",)),
    Row("unreachable scheduler", lambda ep: ["render", *_args(), "--quiet", "--cluster", "tcp://127.0.0.1:9",
                                             "--out", "STUB"], ("cannot reach the Dask scheduler", "127.0.0.1:9"),
        nothing_at="STUB"),
    Row("missing conditioning image on a cluster", lambda ep: ["render", "--model", "tiny-i2v", "--prompt", "x",
                                                               "--image", "no-such.png", "--quiet", "--cluster",
                                                               "tcp://127.0.0.1:9", "--out", "STUB"],
        ("`image`", "no such file", "no-such.png"), nothing_at="STUB"),
    Row("secret options for a deployment", lambda ep: ["serve", "--prompt", "x", "--store", "s3://renders/d/x",
                                                       "--cluster", "tcp://127.0.0.1:9", "--storage-option",
                                                       "secret=abc123"], ("Secret block",)),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_fault_row(row, s3, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # anything written to a wrong local place would land here
    empty = tmp_path / "aws-config"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    argv = [str(tmp_path / "stub") if a == "STUB" else a for a in row.argv(s3)]
    t0 = time.perf_counter()
    code = main(argv)
    took = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == row.code, err
    for w in row.words:
        assert w in err, err
    assert took < row.max_s, f"{row.name} took {took:.1f} s"
    assert s3.secret not in err and s3.key not in err
    assert os.listdir(tmp_path) == ["aws-config"], os.listdir(tmp_path)  # nothing local, no 's3:' folder
    if row.nothing_at and row.nothing_at.startswith("s3://"):
        listed = s3.client().list_objects_v2(Bucket="renders", Prefix=row.nothing_at[len("s3://renders/"):])
        assert listed.get("KeyCount", 0) == 0


def test_a_bucket_root_renders_when_asked(s3, capsys):
    s3.client().create_bucket(Bucket="whole-bucket")
    assert main(["render", *_args(), "--quiet", "--store", "s3://whole-bucket", "--bucket-root",
                 "--endpoint-url", s3.endpoint]) == 0
    assert RenderStore.open("s3://whole-bucket", s3.options()).complete


# -- ownership: two renders, one store ----------------------------------------------------------------

def _cli(*argv, env=None):
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def _wait(cond, timeout=60.0, what="condition"):
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def _checkpoint_step(url) -> int:
    try:
        return RenderStore.open(url).inspect()["last_checkpoint_step"] or -1
    except Exception:  # not initialised yet
        return -1


def test_a_second_render_is_refused_naming_the_owner_and_a_dead_owner_is_taken_over(tmp_path, capsys):
    out = str(tmp_path / "r")
    spec = dict(SMALL, steps=30, refine_steps=28, width=256, height=192)  # long enough to race
    a = _cli("render", *_args(**spec), "--quiet", "--out", out)
    try:
        _wait(lambda: os.path.isdir(os.path.join(out, "lease")), what="the first render's lease")
        t0 = time.perf_counter()
        assert main(["render", *_args(**spec), "--quiet", "--out", out]) == 2
        err = capsys.readouterr().err
        assert "is being written by render" in err and f"pid {a.pid}" in err and time.perf_counter() - t0 < 5
        assert main(["render", *_args(**spec), "--quiet", "--out", out, "--overwrite", "--seed", "3"]) == 2
        assert "is being written by" in capsys.readouterr().err  # no overwrite under a live owner either
        _wait(lambda: _checkpoint_step(out) >= 1, what="a checkpoint")
        a.send_signal(signal.SIGKILL)  # dies holding the lease
        a.wait(20)
    finally:
        if a.poll() is None:
            a.kill()
    info = RenderStore.open(out).inspect()
    assert not info["complete"] and info["owner"]["state"] == "dead"
    assert main(["resume", out, "--quiet"]) == 0  # takes the dead owner's store over
    resumed = RenderStore.open(out)
    assert resumed.complete and resumed.inspect()["owner"]["state"] == "free"
    ref = supergen.render(prepare(RenderSpec(**spec)))
    assert torch.equal(resumed.load_stage("final"), ref.latent)


def test_two_renders_started_together_one_wins(tmp_path):
    out = str(tmp_path / "r")
    procs = [_cli("render", *_args(), "--quiet", "--out", out) for _ in range(2)]
    results = [(p.wait(120), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes in ([0, 0], [0, 2]), results  # the loser is refused (or, if it started after, finds it done)
    for code, err in results:
        assert "Traceback" not in err and "KeyError" not in err
        if code == 2:
            assert "is being written by render" in err
    assert RenderStore.open(out).complete


# -- the cluster path ---------------------------------------------------------------------------------

def test_status_and_checkpoint_only_move_forward_during_a_cluster_render(prefect_api, dask_cluster, tmp_path):
    from flows.render import render as render_flow

    url = str(tmp_path / "s")
    spec = prepare(RenderSpec(**{**SMALL, "refine_steps": 7, "checkpoint_every": 1}))
    seen, done = [], threading.Event()

    def watch():
        while not done.is_set():
            try:
                info = RenderStore.open(url).inspect()
                seen.append((info["status"], info["last_checkpoint_step"]))
            except Exception:
                pass
            time.sleep(0.02)

    w = threading.Thread(target=watch)
    w.start()
    try:
        render_flow(spec=spec.to_dict(), store_url=url, cluster=dask_cluster)
    finally:
        done.set()
        w.join()
    order = ("created", "sketched", "refining", "refined", "complete")
    ranks = [order.index(s) for s, _ in seen]
    steps = [c for _, c in seen if c is not None]
    assert ranks == sorted(ranks) and steps == sorted(steps), seen
    assert {"sketched", "refining", "complete"} <= {s for s, _ in seen}  # seen while it ran, not only at the end
    assert len(set(steps)) >= 3


def test_secrets_never_reach_prefect(prefect_api, dask_cluster, s3, tmp_path, monkeypatch, capsys):
    """Credentials given as storage options, with none in the environment (so the workers need them):
    the render completes, and no flow or task run parameter, log, artifact or block shows them."""
    import asyncio

    from prefect.client.orchestration import get_client

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    url = "s3://renders/secret-test/r"
    assert main(["render", *_args(), "--quiet", "--store", url, "--cluster", dask_cluster, "--endpoint-url",
                 s3.endpoint, "--storage-option", f"key={s3.key}", "--storage-option", f"secret={s3.secret}"]) == 0
    capsys.readouterr()
    assert RenderStore.open(url, s3.options(key=s3.key, secret=s3.secret)).complete

    async def records():
        async with get_client() as c:
            runs = await c.read_flow_runs()
            run = max(runs, key=lambda r: r.created)
            tasks = await c.read_task_runs()
            from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

            logs = await c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
            arts = await c.read_artifacts()
            blocks = await c.read_block_documents(include_secrets=True)
            return run, [r.model_dump_json() for r in runs] + [t.model_dump_json() for t in tasks] \
                + [lg.model_dump_json() for lg in logs] + [a.model_dump_json() for a in arts] \
                + [b.model_dump_json() for b in blocks]

    run, texts = asyncio.run(records())
    assert run.state.is_completed() and "storage_options" in run.parameters
    assert "client_kwargs" in json.dumps(run.parameters) and run.parameters.get("credentials")
    for t in texts:
        assert s3.secret not in t and s3.key not in t  # the one-off Secret block is gone too


def test_a_refused_cluster_render_refuses_before_any_stage_and_leaves_no_store(dask_cluster, tiny_dir, tmp_path,
                                                                             capsys):
    out = tmp_path / "s"
    model = tiny_dir("cogvideox-t2v")
    t0 = time.perf_counter()
    code = main(["render", *_args(model=model, frames=9), "--quiet", "--out", str(out), "--cluster", dask_cluster])
    err = capsys.readouterr().err
    assert code == 2 and "CogVideoXDPMScheduler" in err and "Traceback" not in err
    assert time.perf_counter() - t0 < 5 and not out.exists()


def test_a_cuda_render_from_a_client_without_cuda_is_refused_by_the_workers_naming_them(prefect_api, dask_cluster,
                                                                                         tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this client has CUDA")
    out = tmp_path / "s"
    t0 = time.perf_counter()
    code = main(["render", *_args(), "--device", "cuda", "--quiet", "--out", str(out), "--cluster", dask_cluster])
    err = capsys.readouterr().err
    assert code == 2 and "no CUDA device" in err, err
    assert re.search(r"worker cpu-0 \(tcp://[0-9.:]+\) cannot run this render", err), err
    assert "cpu-1" in err and "cpu-2" in err and time.perf_counter() - t0 < 15
    assert not out.exists()  # refused before any stage, before the store


def test_resume_on_a_cluster_continues_a_crashed_render(prefect_api, dask_cluster, tmp_path, capsys):
    from supergen.executor import render

    class Crash(Exception):
        pass

    class CrashAfter:
        def start(self, stage, total):
            if stage.startswith("refine 4/"):
                raise Crash(stage)

        def advance(self, n=1):
            pass

        def finish(self):
            pass

    url = str(tmp_path / "s")
    spec = prepare(RenderSpec(**SMALL))
    store = RenderStore.create(url, spec)
    with pytest.raises(Crash):
        render(spec, progress=CrashAfter(), sink=store)
    store.release()
    assert RenderStore.open(url).inspect()["last_checkpoint_step"] == 1
    assert main(["resume", url, "--quiet", "--cluster", dask_cluster]) == 0
    done = RenderStore.open(url)
    assert done.complete and torch.equal(done.load_stage("final"), supergen.render(spec).latent)
