"""The distributed executor on a real Dask cluster (a scheduler and three worker processes on loopback,
shared by the session's orchestration tests): same video as the in-process reference for 1, 2 and 3
workers, a killed worker, concurrent renders, the dashboard of a cluster started in process."""

import json
import os
import signal
import threading
import time
import urllib.request
import uuid

import pytest
import torch

import supergen
from flows.cluster import announce, connect, make_cluster
from flows.refine import refine_on_cluster, worker_names
from flows.render import run_stages
from storage import RenderStore
from supergen import RenderSpec
from supergen.errors import SupergenError
from supergen.executor import prepare

# 128 x 112 pixels: a 14 x 16 latent under 8-cell tiles, so window rows overlap neighbouring cores and
# cores advancing on another worker receive prediction strips
SPEC = dict(prompt="a red circle moving", model="tiny", width=128, height=112, frames=5, steps=7, refine_steps=5,
            cache="region", cache_threshold=5.0, cache_warmup=1, checkpoint_every=2)
# Exact equality is what we observe (every tile sees the same data and ops); the stated tolerance covers
# BLAS thread-count differences between worker processes and the reference.
TOL = dict(rtol=0, atol=1e-5)


def render_as_a_worker(spec):
    """The in-process render with one thread, as each worker runs (CPU matmuls round by thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return supergen.render(spec)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def client(dask_cluster):
    from distributed import Client

    with Client(dask_cluster, set_as_default=False) as cl:
        yield cl


@pytest.fixture(scope="module")
def reference():
    return supergen.render(RenderSpec(**SPEC))


@pytest.mark.parametrize("n_workers", [1, 2, 3])
def test_same_video_as_in_process(n_workers, client, reference, tmp_path):

    from distributed import get_task_stream

    from flows.refine import pin_kwargs
    from flows.sketch import sketch_on_cluster
    from tasks.model import ModelHolder
    from tasks.stages import export_stage, files_stage, upscale_stage

    spec = prepare(RenderSpec(**SPEC))
    store = RenderStore.create(str(tmp_path / "s"), spec)
    use = worker_names(client)[:n_workers]
    client.register_plugin(ModelHolder())
    with get_task_stream(client) as stream:  # with 2 or more workers, the sketch's CFG branches are split
        sk = sketch_on_cluster(client, store, use, uuid.uuid4().hex[:8], pin_kwargs(client))
    assert torch.equal(store.load_stage("sketch"), reference.sketch_latent)
    assert sk.forwards == reference.forwards["sketch"] == 2 * spec.steps
    ran = {(t["key"].split("-")[1], t["worker"]) for t in stream.data if str(t["key"]).startswith("sketch-")}
    info = client.scheduler_info(n_workers=-1)["workers"]
    branch_workers = {str(info[w]["name"]) for kind, w in ran if kind == "branch" and w in info}
    assert branch_workers == ({str(w) for w in use[:2]} if n_workers > 1 else set())
    client.submit(upscale_stage, store, workers=use[:1], pure=False).result()
    stats = refine_on_cluster(client, store, spec, workers=use)
    facts = client.submit(export_stage, store, workers=use[:1], pure=False).result()
    client.submit(files_stage, store, {}, stats.tiles_per_step, {"sketch": 0, "refine": stats.forwards},
                  stats.cache, facts, workers=use[-1:], pure=False).result()
    store.finish()  # the driver, the store's owner, completes it; workers never do
    st = RenderStore.open(str(tmp_path / "s"))
    assert st.complete
    torch.testing.assert_close(st.load_stage("final"), reference.latent, **TOL)
    assert torch.equal(torch.from_numpy(st.video_frames()), reference.video)
    assert stats.cache["skip_map"] == reference.cache.skip_map
    s = stats.summary()
    assert s["forwards"] == reference.forwards["refine"]
    if n_workers == 1:  # nothing crosses a worker boundary
        assert s["bytes_moved"] == 0 and s["branches_moved"] == 0 and s["strips_moved"] == 0
    else:
        assert 0 < s["bytes_moved"] < s["allgather_bytes"] and s["strips_moved"] > 0
    if n_workers == 3:  # 4 tiles cannot balance whole on 3 workers: CFG branches ran elsewhere, same video
        assert s["branches_moved"] > 0
    assert {str(w) for w in use} >= {w for st_ in stats.steps for w, b in st_.busy_s.items() if b > 0}


@pytest.mark.parametrize("kind", ["cogvideox-t2v", "cogvideox15-t2v"])
def test_split_sketch_of_a_batched_cfg_model(kind, client, tiny_dir, tmp_path):
    """CogVideoX's sketch with its branches on two workers is the in-process sketch, bit for bit, the DPM
    solver's per-step noise (cogvideox-t2v) and multistep state travelling with the latent."""

    from flows.refine import pin_kwargs
    from flows.sketch import sketch_on_cluster
    from supergen.backends import load_backend
    from supergen.executor import sketch_latent
    from tasks.model import ModelHolder

    spec = prepare(RenderSpec(prompt="a red circle moving", model=tiny_dir(kind), width=128, height=128, frames=9,
                              steps=4, seed=5))
    store = RenderStore.create(str(tmp_path / "s"), spec)
    client.register_plugin(ModelHolder())
    sk = sketch_on_cluster(client, store, worker_names(client)[:2], uuid.uuid4().hex[:8], pin_kwargs(client))
    assert sk.forwards == 2 * spec.steps
    assert torch.equal(store.load_stage("sketch"), sketch_latent(load_backend(spec.model), spec, None)[0])


def test_canvas_positions_on_the_cluster_are_the_in_process_ones(client, tmp_path):
    """--rope canvas-ntk on the trained world model: every window is told its own canvas position, on
    whichever worker it runs (the positions come from the plan, not the worker), and the video is the
    in-process one."""
    base = dict(prompt="a red striped circle moving left on a blue background", model="world", width=128,
                height=128, frames=5, steps=6, refine_steps=3, checkpoint_every=0)
    spec = prepare(RenderSpec(**base, rope="canvas-ntk"))
    ours = render_as_a_worker(spec)  # the world model's matmuls round by thread count
    store = RenderStore.create(str(tmp_path / "s"), spec)
    run_stages(client, store, workers=worker_names(client)[:2])
    assert torch.equal(RenderStore.open(str(tmp_path / "s")).load_stage("final"), ours.latent)
    local = supergen.render(prepare(RenderSpec(**base)))
    assert (ours.latent - local.latent).abs().max() > 1e-2  # the positions changed the tiles' predictions


@pytest.mark.parametrize("n_workers", [3])
def test_a_two_expert_model_with_its_cache_reset_is_the_in_process_render(n_workers, client, tiny_dir, tmp_path):
    """Wan 2.2's expert switch inside the refinement, the region cache on: every worker starts the cache
    afresh at the switch (`supergen.experts`), so the skips and the video are the in-process ones."""
    from test_experts import CACHED

    spec = prepare(RenderSpec(model=tiny_dir("wan22-t2v"), **{**CACHED, "width": 128, "height": 112}))
    ours = render_as_a_worker(spec)
    store = RenderStore.create(str(tmp_path / "s"), spec)
    run_stages(client, store, workers=worker_names(client)[:n_workers])
    st = RenderStore.open(str(tmp_path / "s"))
    record = json.loads(st.read_file("render.json"))
    assert record["cache"]["skip_map"] == ours.cache.skip_map and any(any(r) for r in ours.cache.skip_map)
    assert record["warnings"] == ours.warnings and any("afresh" in w for w in ours.warnings)
    assert torch.equal(st.load_stage("final"), ours.latent)
    assert torch.equal(torch.from_numpy(st.video_frames()), ours.video)


@pytest.mark.parametrize("n_workers", [1, 3])
def test_a_lora_render_is_the_in_process_one_on_any_worker_count(n_workers, client, tmp_path_factory, tmp_path):
    """Every worker fuses the same adapter into its resident model: the video is the in-process one."""
    from supergen.backends import tiny

    path = tmp_path_factory.getbasetemp() / "lora-wan-t2v"
    if not path.exists():
        tiny.lora("wan-t2v", str(path), seed=1)
    spec = prepare(RenderSpec(**{**SPEC, "model": "tiny", "cache": "none"}, lora=(f"{path}:0.8",)))
    ours = render_as_a_worker(spec)
    store = RenderStore.create(str(tmp_path / "s"), spec)
    run_stages(client, store, workers=worker_names(client)[:n_workers])
    st = RenderStore.open(str(tmp_path / "s"))
    assert torch.equal(st.load_stage("final"), ours.latent)
    assert torch.equal(torch.from_numpy(st.video_frames()), ours.video)
    assert json.loads(st.read_file("render.json"))["lora"] == ours.report()["lora"]


@pytest.mark.parametrize("kind,n_workers", [("wan22-5b-i2v", 1), ("wan22-5b-i2v", 3), ("wan-i2v", 2)])
def test_an_image_to_video_render_is_the_in_process_one(kind, n_workers, client, tiny_dir, image_path, tmp_path):
    """Image conditioning on the cluster: every window gets its crop of the canvas's image latent (Wan 2.1:
    channels; TI2V-5B: the first latent frame, its tokens at timestep 0), and the canvas the workers
    assemble ends as the in-process loop's (`Backend.finish`: TI2V's image frame first)."""
    spec = prepare(RenderSpec(prompt="a red circle moving", model=tiny_dir(kind), image=image_path, width=128,
                              height=96, frames=5, steps=5, refine_steps=3, checkpoint_every=0, seed=2))
    ours = render_as_a_worker(spec)
    assert ours.tiles_per_step == [4, 4, 4]
    store = RenderStore.create(str(tmp_path / "s"), spec)
    run_stages(client, store, workers=worker_names(client)[:n_workers])
    st = RenderStore.open(str(tmp_path / "s"))
    assert torch.equal(st.load_stage("final"), ours.latent)
    assert torch.equal(torch.from_numpy(st.video_frames()), ours.video)


@pytest.mark.parametrize("kind,n_workers", [("hunyuan-t2v", 1), ("hunyuan-t2v", 3), ("hunyuan15-t2v", 2),
                                             ("hunyuan-i2v", 2), ("hunyuan15-i2v", 3)])
def test_hunyuanvideo_on_the_cluster_is_the_in_process_render(kind, n_workers, client, tiny_dir, tmp_path,
                                                              image_path):
    """HunyuanVideo 1.0 (guidance-distilled: one call per tile-step, none to split in the sketch) and 1.5
    (true CFG: the sketch's branches on two workers; image-to-video: the image's latent cropped per tile):
    the video is the in-process one."""
    spec = prepare(RenderSpec(prompt="a red circle moving", model=tiny_dir(kind), width=128, height=96,
                              frames=5, steps=4, refine_steps=3, checkpoint_every=0, seed=1,
                              image=image_path if kind.endswith("i2v") else None))
    ours = render_as_a_worker(spec)
    calls = 1 if kind.startswith("hunyuan-") else 2
    assert ours.forwards == {"sketch": 4 * calls, "refine": 3 * 4 * calls}
    store = RenderStore.create(str(tmp_path / "s"), spec)
    run_stages(client, store, workers=worker_names(client)[:n_workers])
    st = RenderStore.open(str(tmp_path / "s"))
    assert torch.equal(st.load_stage("final"), ours.latent)
    assert torch.equal(torch.from_numpy(st.video_frames()), ours.video)
    assert json.loads(st.read_file("render.json"))["forwards"] == ours.forwards


def test_killed_worker_mid_refinement(client, reference, tmp_path):
    """A worker process dies after step 2 (its nanny restarts it): the render completes and equals the
    reference; checkpoints bound how much is recomputed."""
    spec = prepare(RenderSpec(**SPEC))
    store = RenderStore.create(str(tmp_path / "s"), spec)
    info = client.scheduler_info(n_workers=-1)["workers"]
    victim = sorted(info, key=lambda a: str(info[a]["name"]))[1]
    pid = client.run(os.getpid, workers=[victim])[victim]
    killed = []

    def on_step(st):
        if st.step == 2 and not killed:
            killed.append(victim)
            os.kill(pid, signal.SIGKILL)  # the worker process dies without warning

    from tasks import stages

    from flows.render import _on_worker

    _on_worker(client, stages.sketch_stage, store)
    _on_worker(client, stages.upscale_stage, store)
    stats = refine_on_cluster(client, store, spec, on_step=on_step)
    assert killed
    torch.testing.assert_close(RenderStore.open(str(tmp_path / "s")).load_stage("final"), reference.latent, **TOL)
    assert len(stats.steps) == spec.refine_steps
    # the worker came back under its name (nannies restart workers), so pinned tile tasks could run again
    deadline = time.time() + 30
    while len(client.scheduler_info(n_workers=-1)["workers"]) < 3 and time.time() < deadline:
        time.sleep(0.2)


# a request inside a larger canvas (its centre is the output) under 32-px VAE tiles: tiles to decode and to
# encode whose blocks cross the output frames' chunks and the start latent's, and a sketch decoded in tiles
VAE_SPEC = dict(SPEC, width=120, height=104, vae_tile=32, cache="none", checkpoint_every=0)


@pytest.fixture(scope="module")
def vae_reference():
    return supergen.render(RenderSpec(**VAE_SPEC))


@pytest.mark.parametrize("n_workers", [1, 2, 3])
def test_the_vae_spread_over_workers_gives_the_same_video(n_workers, client, vae_reference, tmp_path):
    from distributed import get_task_stream

    spec = prepare(RenderSpec(**VAE_SPEC))
    assert spec.canvas_size != (spec.width, spec.height)
    store = RenderStore.create(str(tmp_path / "s"), spec)
    use = worker_names(client)[:n_workers]
    with get_task_stream(client) as stream:
        run_stages(client, store, workers=use)
    st = RenderStore.open(str(tmp_path / "s"))
    assert st.complete
    assert torch.equal(st.load_stage("final"), vae_reference.latent)  # the start latent was the same
    assert torch.equal(torch.from_numpy(st.video_frames()), vae_reference.video)
    assert torch.equal(torch.from_numpy(st.sketch_frames()), vae_reference.sketch_video)
    info = client.scheduler_info(n_workers=-1)["workers"]
    tiles = {str(info[t["worker"]]["name"]) for t in stream.data
             if str(t["key"]).startswith("tile-") and t["worker"] in info}
    assert tiles == ({str(w) for w in use} if n_workers > 1 else set())  # one worker: the stages as before
    # the sketch decoded once, by the workers together, for the upscale and the export
    assert st.has_array("sketch/video") == (n_workers > 1)


def test_a_bfloat16_vae_spread_over_workers_gives_the_in_process_video(client, tmp_path):
    """A bfloat16 VAE (CogVideoX's preset on GPUs): its tiles and strips cross workers as float32 (exact;
    Dask cannot send bfloat16 tensors) and blend in bfloat16, as the one-process tiled VAE blends."""
    spec = prepare(RenderSpec(**VAE_SPEC, vae_dtype="bfloat16"))
    ours = render_as_a_worker(spec)
    store = RenderStore.create(str(tmp_path / "s"), spec)
    run_stages(client, store, workers=worker_names(client)[:2])
    st = RenderStore.open(str(tmp_path / "s"))
    assert torch.equal(st.load_stage("final"), ours.latent)
    assert torch.equal(torch.from_numpy(st.video_frames()), ours.video)
    assert torch.equal(torch.from_numpy(st.sketch_frames()), ours.sketch_video)


def test_renders_started_together_begin_on_different_workers(client):
    from flows.render import by_load

    names = worker_names(client)
    assert by_load(client, names) == names  # an idle cluster: name order
    assert by_load(client, names, rotate=1) == names[1:] + names[:1]


def test_one_worker_stages_of_renders_finishing_together_run_side_by_side(client):
    """Two renders' one-worker stages (an upscale, an export) submitted at once land on different workers:
    each waits until the other has started, which one worker of one thread never allows (20 s, then False).
    Chosen from the client's view of the load, both could go to the same worker."""
    from flows.render import _on_worker

    def stage(me: str, other: str) -> bool:
        from distributed import Event

        Event(me).set()
        return Event(other).wait(timeout=20)

    names, tag, out = worker_names(client)[:2], uuid.uuid4().hex[:8], {}
    pairs = [(f"a-{tag}", f"b-{tag}"), (f"b-{tag}", f"a-{tag}")]
    threads = [threading.Thread(target=lambda a, b: out.__setitem__(a, _on_worker(client, stage, a, b, workers=names)),
                                args=p) for p in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out == {pairs[0][0]: True, pairs[1][0]: True}


def test_encoding_the_files_leaves_the_workers_slot_to_the_next_task(client):
    """A one-thread worker runs its next task (another render's, in a queue) while a render's files encode:
    the files stage leaves the worker's thread pool (`off_the_accelerator`). Without it this waits 20 s
    and fails."""
    def files_then_wait() -> bool:  # a files stage's CPU work, waiting for the next task (which needs the slot)
        from distributed import Event

        from tasks.stages import off_the_accelerator

        off_the_accelerator()
        return Event("next-task-ran").wait(timeout=20)

    def next_task() -> None:
        from distributed import Event

        Event("next-task-ran").set()

    w = worker_names(client)[0]
    files = client.submit(files_then_wait, workers=[w], pure=False)
    nxt = client.submit(next_task, workers=[w], pure=False)
    assert files.result() is True
    nxt.result()


def test_two_concurrent_renders_share_the_cluster(client, tmp_path):
    specs = [RenderSpec(**{**SPEC, "seed": s, "cache": "none", "steps": 4, "refine_steps": 3}) for s in (1, 2)]
    refs = [supergen.render(s) for s in specs]
    results, errors = {}, []

    def go(k, spec):
        try:
            store = RenderStore.create(str(tmp_path / f"s{k}"), prepare(spec))
            run_stages(client, store)
            results[k] = RenderStore.open(str(tmp_path / f"s{k}")).load_stage("final")
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(k, s)) for k, s in enumerate(specs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for k in (0, 1):
        torch.testing.assert_close(results[k], refs[k].latent, **TOL)
    assert not torch.equal(results[0], results[1])


def test_dashboard_is_served_on_loopback(capsys):
    with make_cluster(1, processes=False) as cluster:
        link = announce(cluster)
        base = link.rsplit("/", 1)[0]
        with urllib.request.urlopen(base + "/health", timeout=10) as r:
            assert r.status == 200 and r.read() == b"ok"
    assert link.startswith("http://127.0.0.1:") and "Dask dashboard: " + link in capsys.readouterr().err


def test_unreachable_scheduler_fails_fast():
    t0 = time.time()
    with pytest.raises(ConnectionError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        connect("tcp://127.0.0.1:9", timeout=1)
    assert time.time() - t0 < 15


def test_stochastic_scheduler_is_refused_before_work(client, tiny_dir, tmp_path):
    spec = prepare(RenderSpec(**{**SPEC, "model": tiny_dir("cogvideox-t2v"), "frames": 9, "cache": "none"}))
    store = RenderStore.create(str(tmp_path / "s"), spec)
    store.save_stage("start", torch.zeros(1, 4, 3, 16, 16))
    with pytest.raises(SupergenError, match="CogVideoXDPMScheduler draws noise"):
        refine_on_cluster(client, store, spec)


def test_a_tile_that_kills_its_worker_gets_a_clear_error(tmp_path):
    """Workers whose memory limit is below what a tile needs die on it (the nanny kills them): after the
    allowed retries the render stops with an error naming the task, tile, step and worker, in bounded
    time, and the store is left resumable."""
    import dask
    from distributed import Client, Nanny, Scheduler, SpecCluster

    from flows.refine import TileFailure, task_step_tile

    assert task_step_tile("denoise-s012-t03-ab12cd34") == (12, 3) and task_step_tile("write-final-x") == (None, None)
    spec = prepare(RenderSpec(**{**SPEC, "cache": "none"}))
    store = RenderStore.create(str(tmp_path / "s"), spec)
    from supergen.backends import load_backend
    from supergen.executor import sketch_latent, start_latent

    be = load_backend("tiny")
    video_lo = be.decode(sketch_latent(be, spec, None)[0], frames=spec.frames, vae_tile=spec.vae_tile)
    store.save_stage("start", start_latent(be, spec, video_lo, spec.steps - spec.refine_steps))
    workers = {"small-0": {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1", "memory_limit": "150MB",
                                                      "resources": {"pin-small-0": 1}}}}
    with dask.config.set({"distributed.scheduler.allowed-failures": 1,
                          "distributed.worker.memory.terminate": 0.95}):
        with SpecCluster(scheduler={"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": ":0"}},
                         workers=workers) as cluster, Client(cluster, set_as_default=False) as c:
            t0 = time.time()
            with pytest.raises(TileFailure, match=r"tile \d+, refinement step 0\) killed worker small-0"):
                refine_on_cluster(c, store, spec)
            assert time.time() - t0 < 120
    assert not RenderStore.open(str(tmp_path / "s")).complete


def test_the_model_stays_loaded_when_stages_register_the_holder_again(client, tmp_path):
    """Every stage registers the ModelHolder; a second registration must keep the loaded model (Dask tears
    a re-registered plugin down unless it is idempotent: a reload per stage, GPU memory leaked)."""
    from tasks.model import NAME, ModelHolder
    from tasks.stages import warm_worker

    store = RenderStore.create(str(tmp_path / "s"), prepare(RenderSpec(**SPEC)))
    client.register_plugin(ModelHolder())
    client.gather([client.submit(warm_worker, store, "r", workers=[w["name"]], pure=False)
                   for w in client.scheduler_info(n_workers=-1)["workers"].values()])

    def state(dask_worker):
        h = dask_worker.plugins[NAME]
        return id(h), h.loads

    before = client.run(state)
    client.register_plugin(ModelHolder())
    assert client.run(state) == before and all(loads >= 1 for _, loads in before.values())


def test_a_worker_of_many_threads_loads_each_model_once(tmp_path):
    """Tasks on several threads of one worker asking for the same model get one copy, loaded once."""
    from concurrent.futures import ThreadPoolExecutor

    from tasks.model import ModelHolder

    store = RenderStore.create(str(tmp_path / "s"), prepare(RenderSpec(**SPEC)))
    holder = ModelHolder()
    holder.setup(worker=None)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: holder.backend(store.spec(), store), range(4)))
    assert holder.loads == 1 and all(b is got[0] for b in got)


@pytest.fixture(scope="module")
def pair_spec(tiny_dir, tmp_path_factory):
    """SRDiffusion: tiny Wan with a one-layer render model, the switch adaptive, the region cache on."""
    from supergen.backends import tiny

    small = tiny.save_render_model("wan-t2v", str(tmp_path_factory.mktemp("render-model")))
    return prepare(RenderSpec(prompt="a red circle moving", model=tiny_dir("wan-t2v"), render_model=small,
                              width=128, height=96, frames=5, steps=8, refine_steps=6, switch_threshold=0.5,
                              cache="region", cache_threshold=5.0, cache_warmup=1, checkpoint_every=0, seed=2))


@pytest.mark.parametrize("n_workers", [1, 2, 3])
def test_srdiffusion_on_the_cluster_is_the_in_process_render(n_workers, client, pair_spec, tmp_path):
    """Both models on every worker, the switch decided in the sketch (its branches split over two workers)
    and read from the store by the refinement: the in-process video, whatever the worker count."""
    ours = render_as_a_worker(pair_spec)
    assert ours.models is not None and pair_spec.steps - pair_spec.refine_steps < ours.models["switch_step"]
    store = RenderStore.create(str(tmp_path / "s"), pair_spec)
    run_stages(client, store, workers=worker_names(client)[:n_workers])
    st = RenderStore.open(str(tmp_path / "s"))
    assert st.stage_record("sketch") == ours.models
    assert torch.equal(st.load_stage("final"), ours.latent)
    assert torch.equal(torch.from_numpy(st.video_frames()), ours.video)
    assert json.loads(st.read_file("render.json"))["models"] == ours.models == st.inspect()["models"]
