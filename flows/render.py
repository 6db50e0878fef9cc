"""The Prefect flow `render`: sketch -> upscale -> refine -> export, each stage reading and writing the
render store, the refine stage a graph of plain Dask tasks (one per tile per step) on the cluster.

Prefect owns the stages (retries on storage I/O, run history, artifacts); Dask owns the tile-steps
(Prefect tasks cost ~0.1-0.2 s each through a Dask task runner, plain Dask tasks ~3 ms). `run_stages` is
the one driver of the stages: the flow runs it with the stages as Prefect tasks, benchmarks and tests with
the same functions called directly on a Dask client, with no Prefect API.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import NamedTuple

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from tasks.stages import StageResult, export_stage, files_stage, start_done, upscale_stage, warm_worker

from . import interrupt, tilemap
from .cluster import connect
from .refine import (check_store_reach, check_workers, checkpoint_words, pin_kwargs, refine_on_cluster, worker_names,
                     workers_info)
from .sketch import sketch_on_cluster
from .vae import vae_on_cluster
from .watch import finished, scheduler_lost


def _worth_retrying(task, task_run, state) -> bool:
    """Storage hiccups are retried; a stage that ran out of memory, was refused, or lost its store's lease
    would fail the same way again."""
    from storage.location import StoreBusy, StoreError
    from supergen.errors import SupergenError

    try:
        state.result()
    except StoreBusy:
        return False
    except StoreError:
        return True
    except SupergenError:
        return False
    except Exception:
        return True
    return True


STORAGE_RETRIES = dict(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_worth_retrying)


def _on_worker(client, fn, *args, workers: list | None = None):
    """Run a stage on one of `workers` (default: the cluster's) and wait for it. The scheduler picks the
    worker, the least occupied when the stage arrives: it decides one task at a time, so one-worker stages
    of renders that finish together land on different workers (the client's view of the load lags: two
    exports chosen from it once queued on one worker while the other idled). Dask moves the stage to
    another of `workers` should its worker die; `WorkerLost` once all are gone (`flows.watch`)."""
    from tasks.model import ModelHolder

    client.register_plugin(ModelHolder())
    names = present(client, workers or worker_names(client))
    return finished(client, names, client.submit(fn, *args, workers=names, pure=False), any_of=True)


def present(client, names: list) -> list:
    """Those of `names` the cluster has now (a worker lost in an earlier stage gets no more work)."""
    now = set(worker_names(client))
    return [w for w in names if w in now]


@task(name="sketch", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def sketch(client, store, render_id: str, workers: list | None = None) -> StageResult:
    """On one worker, or with its CFG branches on two (`flows/sketch.py`)."""
    from tasks.model import ModelHolder

    client.register_plugin(ModelHolder())
    return sketch_on_cluster(client, store, present(client, workers or worker_names(client)), attempt(render_id),
                             pin_kwargs(client))


@task(name="upscale and re-noise", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def upscale(client, store, workers: list | None = None) -> StageResult:
    """On one worker, or with the sketch decode's and the re-encode's tiles over all of them
    (`flows/vae.py`)."""
    import time

    if start_done(store):
        return StageResult(0.0, skipped=True)
    t0 = time.perf_counter()
    workers, pins = present(client, workers or worker_names(client)), pin_kwargs(client)
    vae_on_cluster(client, store, workers, pins, "sketch")  # decoded once, for every worker and the export
    if vae_on_cluster(client, store, workers, pins, "encode"):
        return StageResult(time.perf_counter() - t0)
    return _on_worker(client, upscale_stage, store, workers=workers)


def refine_tiles(client, store, balance: str = "branches", render_id: str | None = None,
                 workers: list | None = None, on_step: Callable | None = None) -> dict:
    """The tiled refinement as plain Dask tasks; returns the statistics the export stage and the flow's
    report read. `on_step` is called with each finished step's statistics."""
    stats = refine_on_cluster(client, store, store.spec(), balance=balance, on_step=on_step, render_id=render_id,
                              workers=workers)
    return stats.to_dict() | {"cache": stats.cache, "tiles_per_step": stats.tiles_per_step}


@task(name="refine (tiled, on the cluster)", cache_policy=NO_CACHE)
def refine(client, store, balance: str = "branches", render_id: str | None = None,
           workers: list | None = None) -> dict:
    """`refine_tiles` with a progress artifact, updated after every step (artifacts need a Prefect run)."""
    spec = store.spec()
    art = create_progress_artifact(0.0, key=None, description=f"refinement of {store.url}")
    tiles = create_markdown_artifact("The tile map appears when the first refinement step finishes.",
                                     description=f"tile map of {store.url}: workers and cache skips, newest step")
    def on_step(st):
        update_progress_artifact(art, 100.0 * (st.step + 1) / spec.refine_steps)
        update_markdown_artifact(tiles, tilemap.markdown(st.tile_map, spec.refine_steps, st.tile_totals))

    return refine_tiles(client, store, balance, attempt(render_id), workers, on_step=on_step)


def attempt(render_id: str | None) -> str | None:
    """The render id of this try of a stage: a retried stage submits its tasks under fresh keys (Dask hands
    back the future of a key it still holds, a failed one included, instead of running it again)."""
    from prefect.runtime import task_run

    tries = task_run.run_count or 1
    return render_id if render_id is None or tries <= 1 else f"{render_id}t{tries}"


def preview(store, base_url: str | None = None, width: int = 640) -> str:
    """The preview artifact: the contact sheet (sketch above final) as an inline image, scaled to `width`
    px, so it shows in the Prefect UI whatever the store (a browser opens neither an s3:// URL nor a host's
    path, and a presigned link would carry the access key), then the full-size files: links under
    `base_url` where the operator serves the store over http(s), else where they are."""
    import base64
    import io

    from PIL import Image

    with Image.open(io.BytesIO(store.read_file("contact_sheet.png"))) as im:
        im = im.convert("RGB")
        im.thumbnail((width, width * im.height // max(im.width, 1)))
        buf = io.BytesIO()
        im.save(buf, "PNG", optimize=True)
    data = base64.b64encode(buf.getvalue()).decode()
    written = store.outputs()
    names = [n for n in ("video.mp4", "sketch.mp4", "contact_sheet.png", "cache_skips.png") if n in written]
    if base_url:
        files = " · ".join(f"[{n}]({base_url.rstrip('/')}/{n})" for n in names)
    else:
        files = " · ".join(f"`{store.url}/{n}`" for n in names)
    return f"![contact sheet: sketch above final](data:image/png;base64,{data})\n\n{files}"


def update_markdown_artifact(artifact_id, text: str) -> None:
    """Replace a markdown artifact's text in place (Prefect updates only progress artifacts by name)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactUpdate

    with get_client(sync_client=True) as client:
        client.update_artifact(artifact_id=artifact_id, artifact=ArtifactUpdate(data=text))


@task(name="decode and export", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def export(client, store, timings: dict, refined: dict, sketch_forwards: int,
           workers: list | None = None) -> StageResult:
    """The final decode with its tiles over the workers where the VAE is tiled (`flows/vae.py`), the
    frames on one worker, then the files encoded from them off its accelerator (`files_stage`)."""
    import time

    forwards = {"sketch": sketch_forwards, "refine": refined["forwards"]}
    cache = refined["cache"] if refined["cache"].get("policy") != "none" else None
    t0 = time.perf_counter()
    workers = present(client, workers or worker_names(client))
    decoded = vae_on_cluster(client, store, workers, pin_kwargs(client), "decode")
    facts = _on_worker(client, export_stage, store, decoded, workers=workers)
    timings = {**timings, "decode": time.perf_counter() - t0}
    return _on_worker(client, files_stage, store, timings, refined["tiles_per_step"], forwards, cache, facts,
                      workers=workers)


class Stages(NamedTuple):
    """The four stages, as `run_stages` calls them."""

    sketch: Callable[..., StageResult]
    upscale: Callable[..., StageResult]
    refine: Callable[..., dict]
    export: Callable[..., StageResult]


PREFECT_STAGES = Stages(sketch, upscale, refine, export)  # inside the flow: task runs, retries, artifacts
PLAIN_STAGES = Stages(sketch.fn, upscale.fn, refine_tiles, export.fn)  # the same code on any Dask client


def stage_tasks(options: dict | None) -> Stages:
    """The flow's stages with an operator's `retries` and `timeout_s` per stage (stages not named keep theirs):
    a stage that runs past its timeout fails the render, which a retry or a later `resume` continues."""
    if not options:
        return PREFECT_STAGES
    unknown = sorted(set(options) - set(Stages._fields))
    if unknown:
        raise ValueError(f"stage_options names no stage {unknown}: the stages are {list(Stages._fields)}")
    out = {}
    for name, stage in zip(Stages._fields, PREFECT_STAGES):
        o = dict(options.get(name) or {})
        bad = sorted(set(o) - {"retries", "timeout_s"})
        if bad:
            raise ValueError(f"stage_options[{name!r}] takes retries and timeout_s, not {bad}")
        kw = {"retries": int(o["retries"])} if "retries" in o else {}
        if "timeout_s" in o:
            kw["timeout_seconds"] = float(o["timeout_s"])
        out[name] = stage.with_options(**kw) if kw else stage
    return Stages(**out)


@contextlib.contextmanager
def held(slots: str | None):
    """One slot of the global concurrency limit `slots` for the duration (nothing where None): a run waits
    for a slot before its first stage, so a pool never runs more renders than its GPUs take."""
    if slots is None:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(slots, occupy=1, strict=True):
        yield


def by_load(client, names: list, rotate: int = 0) -> list:
    """`names` with the least busy workers first (fewest tasks assigned to them now), ties broken in name
    order rotated by `rotate`, so renders started together begin (their sketches) on different workers.
    Where work lands never changes the video."""
    info = workers_info(client)
    load = {info[a]["name"]: len(keys) for a, keys in client.processing().items() if a in info}
    names = list(names)
    k = rotate % len(names) if names else 0
    return sorted(names[k:] + names[:k], key=lambda n: load.get(n, 0))


def run_stages(client, store, balance: str = "branches", workers: list | None = None,
               stages: Stages = PLAIN_STAGES) -> dict:
    """The four stages in order, on `workers` (names; default: every worker of the cluster), the least busy
    first (`by_load`). While the sketch runs on the first worker (or its two CFG branches on the first two),
    every other worker loads the model and the render's conditioning. Each stage keeps to those of `workers`
    the cluster still has (`present`; the refinement's driver to its own `check_workers`)."""
    import uuid

    from tasks.model import ModelHolder

    timings = {}
    rid = uuid.uuid4().hex[:8]
    client.register_plugin(ModelHolder())
    names = by_load(client, workers or worker_names(client), rotate=int(rid, 16))
    warming = [client.submit(warm_worker, store, rid, workers=[w], pure=False, key=f"warm-{w}-{rid}")
               for w in names[1:]]
    t0 = time.perf_counter()
    interrupt.check()
    sk = stages.sketch(client, store, rid, names)
    store.advance("sketched")  # workers write the stages; the driver, which owns the store, moves its status
    timings["sketch"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    interrupt.check()
    stages.upscale(client, store, names)
    store.advance("refining")
    timings["upscale"] = time.perf_counter() - t0
    client.gather(warming)  # a worker that cannot load the model fails here, before any tile is submitted
    t0 = time.perf_counter()
    interrupt.check()
    refined = stages.refine(client, store, balance, rid, names)
    timings["refine"] = time.perf_counter() - t0
    store.advance("refined")
    interrupt.check()
    stages.export(client, store, timings, refined, sk.forwards, names)
    store.finish()
    return {"timings": timings, "refine": refined}


@flow(name="supergen-render", log_prints=True)
def render(spec: dict, store_url: str, cluster: str, storage_options: dict | None = None,
           overwrite: bool = False, balance: str = "branches", credentials: str | None = None,
           bucket_root: bool = False, slots: str | None = None, stage_options: dict | None = None,
           preview_url: str | None = None) -> str:
    """Render `spec` into the store at `store_url` on the Dask cluster at `cluster` (a scheduler address).

    `balance` places tile work: "locality" (each window where most of its cells are), "tiles" (plus moving
    computing tiles to workers the cache left idle) or "branches" (plus splitting CFG branches over workers
    to even out what whole tiles cannot, e.g. 9 tiles on 4 GPUs).

    `storage_options` must hold no secret (flow parameters are stored and shown by Prefect): credentials
    come from the workers' environment or profile, or from the Prefect Secret block named `credentials`.

    `slots`: a Prefect global concurrency limit this render holds one slot of while its stages run (a GPU
    pool's cap on concurrent renders, `flows/deploy.py`). `stage_options`: per stage ("sketch", "upscale",
    "refine", "export"), `retries` and `timeout_s` for its task (`stage_tasks`). `preview_url`: an http(s) URL
    under which the store's files are served (a gateway or CDN in front of the bucket, a static server over the
    folder): the preview artifact links the videos there."""
    from storage import RenderStore
    from supergen import RenderSpec
    from supergen.executor import prepare

    logger = get_run_logger()
    if preview_url is not None and not preview_url.startswith(("http://", "https://")):
        raise ValueError(f"preview_url must be an http(s) URL a browser opens, got {preview_url!r}")
    if "{flow_run_id}" in store_url + (preview_url or ""):  # one store per run of a scheduled deployment
        from prefect.runtime import flow_run

        store_url = store_url.replace("{flow_run_id}", str(flow_run.id))
        preview_url = preview_url and preview_url.replace("{flow_run_id}", str(flow_run.id))
    from storage.location import split_secrets

    from . import credentials as creds
    from .refine import check_distributable

    if split_secrets(storage_options)[1]:
        raise ValueError(f"storage_options holds secrets {sorted(split_secrets(storage_options)[1])}: flow "
                         "parameters are stored in plain text; pass them in a Prefect Secret block (credentials)")
    resolved = prepare(RenderSpec.from_dict(spec), here=False)  # the workers check device and memory
    check_distributable(resolved)
    opts = {**(storage_options or {}), **(creds.load(credentials) if credentials else {})}
    stages = stage_tasks(stage_options)
    with held(slots):  # a queued run waits here, holding no store and no cluster connection
        client = connect(cluster)  # an unreachable scheduler fails here, before the store exists
        try:
            check_workers(client, resolved, memory=True)  # a worker that lacks the device: before any stage
            check_store_reach(client, RenderStore(store_url, opts or None, bucket_root=bucket_root))
            store = RenderStore.create(store_url, resolved, opts or None, overwrite=overwrite,
                                       bucket_root=bucket_root)
            try:
                if store.complete:
                    logger.info("%s already holds this render", store.url)
                    return store.url
                try:
                    out = run_stages(client, store, balance, stages=stages)
                except Exception as e:
                    if not scheduler_lost(client, e):
                        raise
                    from supergen.errors import SupergenError

                    raise SupergenError(  # the scheduler's restart took every task and result with it
                        f"lost the Dask scheduler at {cluster} mid-render ({type(e).__name__}); {store.url} keeps its "
                        f"{checkpoint_words(store)}: `supergen resume {store.url} --cluster {cluster}` continues it "
                        "once the scheduler is back") from None
            finally:
                store.release()
        finally:
            client.close()
    s = out["refine"]
    create_markdown_artifact(
        "| metric | value |\n|---|---|\n"
        + "".join(f"| {k} time | {v:.2f} s |\n" for k, v in out["timings"].items())
        + f"| transformer calls (refine) | {s['forwards']} |\n| skip ratio | {s['cache'].get('skip_ratio', 0)} |\n"
        + f"| bytes moved between workers | {s['bytes_moved']} |\n| all-gather baseline bytes | {s['allgather_bytes']} |\n"
        + f"| tile tasks | {s['tasks']} |\n| store | {store.url} |\n",
        description="supergen render metrics")
    create_markdown_artifact(preview(store, preview_url), description="sketch preview and final contact sheet")
    return store.url
