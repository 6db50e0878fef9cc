"""The render store: layout, completion, checkpoints and resume, object storage, bad input."""

import json

import numpy as np
import pytest
import torch

import supergen
from flows.cli import main
from storage import MARKER, RenderStore, StoreError
from supergen import RenderSpec
from supergen.executor import prepare, render

SMALL = dict(prompt="a red circle moving", width=128, height=96, frames=5, steps=8, refine_steps=7,
             checkpoint_every=2, cache_warmup=2)


class Crash(Exception):
    pass


class CrashAfter:
    """A progress front-end that interrupts the render once refinement step `step` (1-based) is done,
    the way a killed process or Ctrl-C would."""

    def __init__(self, step):
        self.step, self.stage = step, ""

    def start(self, stage, total):
        self.stage = stage

    def advance(self, n=1):
        pass

    def finish(self):
        if self.stage == f"refine {self.step}/{SMALL['refine_steps']}":
            raise Crash(self.stage)


def test_local_store_layout_and_completion(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["render", *_args(), "--out", str(out), "--quiet"]) == 0
    store = RenderStore.open(str(out))
    assert store.complete and (out / MARKER).exists() and (out / "data.zarr" / "zarr.json").exists()
    for name in ("video.mp4", "sketch.mp4", "contact_sheet.png", "cache_skips.png", "render.json"):
        assert (out / name).stat().st_size > 0
    attrs = store.attrs
    assert attrs["supergen_layout"] == 2 and store.progress()["status"] == "complete" and attrs["seed"] == 0
    assert RenderSpec.from_dict(attrs["spec"]) == store.spec()
    assert store.load_stage("sketch").shape[-2:] == (6, 8) and store.load_stage("start").shape[-2:] == (12, 16)
    frames = store.video_frames(slice(0, 2), slice(0, 32), slice(64, 128))
    assert frames.shape == (2, 32, 64, 3) and frames.dtype == np.uint8
    info = json.loads(_run_capture(capsys, ["inspect", str(out)]))
    assert info["complete"] is True and info["last_checkpoint_step"] == 6
    assert info["stages"] == ["sketch", "start", "final"] and info["outputs_bytes"]["video.mp4"] > 0


def _args(**kw):
    d = {**SMALL, **kw}
    out = []
    for k, v in d.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def _run_capture(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("model,extra", [("tiny", dict(cache="region", cache_threshold=5.0)),
                                         ("cogvideox-t2v", dict(frames=9))])
def test_resume_after_a_crash_equals_an_uninterrupted_render(model, extra, tiny_dir):
    """Wan + region cache (cache state must come back exactly) and CogVideoX's DPM solver (its x0 history
    and per-step noise must come back exactly)."""
    m = "tiny" if model == "tiny" else tiny_dir(model)
    spec = RenderSpec(**{**SMALL, **extra, "model": m})
    ref = supergen.render(spec)
    url = f"memory://resume-{model}"
    store = RenderStore.create(url, prepare(spec))
    with pytest.raises(Crash):
        render(prepare(spec), progress=CrashAfter(5), sink=store)
    st = RenderStore.open(url)
    assert not st.complete and st.inspect()["last_checkpoint_step"] == 3  # steps 1..4 checkpointed at 2, 4
    again = render(st.spec(), sink=RenderStore.open(url, read_only=False))
    assert torch.equal(again.latent, ref.latent) and torch.equal(again.video, ref.video)
    if extra.get("cache"):
        assert again.cache.skip_map == ref.cache.skip_map and sum(map(sum, ref.cache.skip_map)) > 0


def test_resume_command_completes_the_store(tmp_path, capsys):
    out = tmp_path / "r"
    spec = prepare(RenderSpec(**SMALL))
    store = RenderStore.create(str(out), spec)
    with pytest.raises(Crash):
        render(spec, progress=CrashAfter(3), sink=store)
    assert json.loads(_run_capture(capsys, ["inspect", str(out)]))["complete"] is False
    assert main(["resume", str(out), "--quiet"]) == 0
    assert RenderStore.open(str(out)).complete


def test_different_spec_is_refused_and_nothing_changes(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["render", *_args(), "--out", str(out), "--quiet"]) == 0
    snapshot = {p.name: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(["render", *_args(seed=1), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "different spec" in err and "seed" in err and "--overwrite" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*")} == snapshot
    # the same spec again is a no-op on a complete store
    assert main(["render", *_args(), "--out", str(out), "--quiet"]) == 0
    assert "already holds this render" in capsys.readouterr().err
    assert main(["render", *_args(seed=1), "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert RenderStore.open(str(out)).attrs["seed"] == 1


def test_newer_layout_is_refused(tmp_path):
    spec = prepare(RenderSpec(**SMALL))
    store = RenderStore.create(str(tmp_path / "r"), spec)
    store.group.attrs["supergen_layout"] = 99
    with pytest.raises(StoreError, match="layout 99"):
        RenderStore.create(str(tmp_path / "r"), spec)
    with pytest.raises(StoreError, match="upgrade supergen"):
        RenderStore.open(str(tmp_path / "r"))
    assert RenderStore(str(tmp_path / "r")).attrs["supergen_layout"] == 99  # untouched


@pytest.mark.parametrize("url,words", [
    ("s3://", "names no bucket"),
    ("nosuchproto://x/y", "unknown storage protocol"),
    ("://x", "cannot parse"),
    ("", "empty"),
])
def test_unusable_urls(url, words, capsys):
    assert main(["render", *_args(), "--store", url, "--quiet"]) == 2
    assert words in capsys.readouterr().err


def test_write_to_an_unwritable_location_fails_early(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the store's folder should be
    assert main(["render", *_args(), "--store", str(blocker / "r"), "--quiet"]) == 2
    assert "cannot write" in capsys.readouterr().err


# -- object storage: a real S3 endpoint (moto's server) on loopback -----------------------------------

def test_render_to_s3_and_credentials_never_leak(s3, capsys, caplog):
    import fsspec

    AKID, SECRET = s3.key, s3.secret
    s3 = s3.endpoint
    url = "s3://renders/jobs/one"
    assert main(["render", *_args(), "--store", url, "--endpoint-url", s3]) == 0
    cap = capsys.readouterr()
    store = RenderStore.open(url, {"client_kwargs": {"endpoint_url": s3}})
    assert store.complete
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": s3})
    texts = [fs.cat_file("renders/jobs/one/render.json").decode(), fs.cat_file("renders/jobs/one/data.zarr/zarr.json").decode(),
             cap.out, cap.err, caplog.text, repr(store), json.dumps(store.inspect())]
    for bad in (["render", *_args(), "--store", "s3://missing-bucket/x", "--endpoint-url", s3],
                ["render", *_args(seed=5), "--store", url, "--endpoint-url", s3],
                ["render", *_args(), "--store", url, "--endpoint-url", s3,
                 "--storage-option", f"secret={SECRET}", "--storage-option", "key=" + AKID]):
        main(bad)
        cap = capsys.readouterr()
        texts += [cap.out, cap.err]
    assert "does not exist" in texts[-5] and "different spec" in texts[-3] and "already holds" in texts[-1]
    for t in texts:
        assert SECRET not in t and AKID not in t
    # a downstream job reads one region of one second without the rest
    frames = store.video_frames(slice(0, 4), slice(0, 48), slice(0, 64))
    assert frames.shape == (4, 48, 64, 3)


def test_a_downstream_job_reads_a_render_with_zarr_dask_and_xarray_alone(s3, capsys):
    """docs/examples/read_render.py, in a process of its own that imports no supergen: zarr, dask.array and
    xarray each read the first second of one region of an S3 render, and read what supergen wrote."""
    import os
    import subprocess
    import sys

    url = "s3://renders/jobs/readers"
    assert main(["render", *_args(), "--store", url, "--endpoint-url", s3.endpoint, "--quiet"]) == 0
    script = os.path.join(os.path.dirname(__file__), "..", "docs", "examples", "read_render.py")
    run = subprocess.run([sys.executable, script, url, s3.endpoint], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    store = RenderStore.open(url, s3.options())
    fps = store.spec().fps
    expected = int(store.video_frames(slice(0, fps), slice(0, 64), slice(0, 64)).astype(np.int64).sum())
    assert got["zarr"] == got["dask"] == got["xarray"] == expected > 0
    assert got["fps"] == fps and got["dims"] == ["frame", "y", "x", "rgb"] and not got["supergen_imported"]


def test_missing_bucket(s3, capsys):
    assert main(["render", *_args(), "--store", "s3://no-such-bucket/x", "--endpoint-url", s3.endpoint,
                 "--quiet"]) == 2
    assert "bucket 'no-such-bucket' does not exist" in capsys.readouterr().err


def test_denied_write_fails_early_and_writes_nothing(s3, capsys):
    import boto3

    c = s3.client()
    c.create_bucket(Bucket="readonly")
    c.put_bucket_policy(Bucket="readonly", Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
                       "Resource": "arn:aws:s3:::readonly/*"}]}))
    assert main(["render", *_args(), "--store", "s3://readonly/r", "--endpoint-url", s3.endpoint, "--quiet"]) == 2
    assert "no permission to write" in capsys.readouterr().err
    assert c.list_objects_v2(Bucket="readonly").get("KeyCount", 0) == 0


def test_memory_store_refused_with_a_cluster(capsys):
    assert main(["render", *_args(), "--store", "memory://x", "--cluster", "local", "--quiet"]) == 2
    assert "memory:// store lives in one process" in capsys.readouterr().err


def test_a_host_sees_the_store_only_where_it_reads_the_submitters_probe(tmp_path):
    """`reach_probe` / `sees`, as a cluster render runs them before any stage: a host reading the same
    folder sees it; one whose folder at that path is another (no shared disk) does not; nothing is left."""
    here = RenderStore(str(tmp_path / "renders" / "job"))
    with here.reach_probe() as probe:
        assert here.sees(probe) is None
        path, token = probe
        assert "does not see" in RenderStore(str(tmp_path / "elsewhere" / "job")).sees((path + "x", token))
        assert "another folder" in here.sees((path, b"another host's token"))
    assert list(tmp_path.iterdir()) == []  # the probe went into the nearest existing parent, and is gone
