"""Stage tasks run on a cluster worker: each reads its inputs from the render store, runs one stage of
`supergen.executor` with the worker's resident model, and writes its result back to the store."""

from __future__ import annotations

import time
from dataclasses import dataclass

from supergen import lora
from supergen.executor import RenderResult, model_notes, sketch_latent, start_latent
from supergen.memory import guarded
from supergen.outputs import write_files, write_frames
from supergen.refine import RefinePlan
from supergen.upscale import to_uint8

from .model import holder, local_loras, stored_image


def worker_problem(spec, memory: bool = True, models: dict | None = None) -> str | None:
    """What this worker lacks to run `spec` (its device; `models`' folders as the submitter has them, by
    `model_identity`; with `memory`, the estimated peak against its free memory), or None. Run on every
    worker before any stage."""
    from supergen import memory as mem
    from supergen.backends import model_problem
    from supergen.spec import device_problem

    problem = device_problem(spec.device)
    for model, identity in (models or {}).items():
        problem = problem or model_problem(model, identity)
    if problem is None and memory:
        try:
            mem.check(spec)
        except mem.InsufficientMemory as e:
            problem = str(e)
    return problem


@dataclass(frozen=True)
class StageResult:
    """What a stage task tells the driver: its time, the transformer calls it made, whether the store
    already held its output (a resumed render skips finished stages)."""

    seconds: float
    forwards: int = 0
    skipped: bool = False


def warm_worker(store, render_id: str) -> float:
    """Load the model and this render's conditioning into the worker (seconds taken), so tile tasks
    never pay for it; the flow runs this on every worker while the sketch runs."""
    spec = store.spec()
    t0 = time.perf_counter()
    holder().conditioning(render_id, spec, store)
    return time.perf_counter() - t0


@guarded("sketch")  # an allocator failure becomes InsufficientMemory naming the stage
def sketch_stage(store) -> StageResult:
    """Sketch at native size (skipped when the store already has it)."""
    spec = store.spec()
    if store.load_stage("sketch") is not None:
        return StageResult(0.0, skipped=True)
    be = holder().backend(spec, store)
    t0, calls0 = time.perf_counter(), be.forwards
    z, models = sketch_latent(be, spec, stored_image(store))
    store.save_stage("sketch", z.cpu(), models)
    return StageResult(time.perf_counter() - t0, be.forwards - calls0)


def sketch_video(store, spec, be):
    """The decoded sketch, on the worker's device: the store's, where the workers decoded it together
    (`flows/vae.py`), else the stored sketch latent decoded here."""
    video = store.load_video("sketch")
    if video is not None:
        return video.to(be.device)
    return be.decode(store.load_stage("sketch").to(be.device), frames=spec.frames, vae_tile=spec.vae_tile)


def start_done(store) -> bool:
    """Whether the store holds the whole start latent: written, and the driver has moved past it (workers
    writing it region by region leave a half-written array behind if they die)."""
    return store.has_array("start/latent") and store.progress().get("status") not in ("created", "sketched")


@guarded("upscale")  # an allocator failure becomes InsufficientMemory naming the stage
def upscale_stage(store) -> StageResult:
    """Decode, upscale in pixels, re-encode and re-noise into start/latent (skipped when present)."""
    spec = store.spec()
    if start_done(store):
        return StageResult(0.0, skipped=True)
    be = holder().backend(spec, store)
    t0 = time.perf_counter()
    video_lo = sketch_video(store, spec, be)
    plan = RefinePlan.from_spec(spec, be.info.vae_spatial)
    store.save_stage("start", start_latent(be, spec, video_lo, plan.start).cpu())
    return StageResult(time.perf_counter() - t0)


@guarded("export")  # an allocator failure becomes InsufficientMemory naming the stage
def export_stage(store, decoded: bool = False) -> dict:
    """The export's part on the accelerator: the refined latent decoded into the store's frames (the
    requested centre of the canvas, cropped by the same function as in process) and the sketch's frames
    beside them. `decoded`: the workers already decoded the video region by region (`flows/vae.py`).
    Returns what render.json says of the model (`RenderResult`'s family, notes, models and lora_files),
    known only where the model is loaded, for `files_stage`, which encodes the files off the accelerator."""
    from supergen.spec import crop_to_request

    spec = store.spec()
    be = holder().backend(spec, store)
    x, models = store.load_stage("final"), store.stage_record("sketch")
    video = None
    if not decoded:
        video = crop_to_request(to_uint8(be.decode(x.to(be.device), frames=spec.frames, vae_tile=spec.vae_tile)), spec)
    write_frames(store, spec, x, video, to_uint8(sketch_video(store, spec, be)).cpu())
    return {"family": be.info.family, "notes": model_notes(be, spec, models), "models": models,
            "lora_files": tuple(lora.parse(e).file for e in local_loras(spec, store).lora)}


def files_stage(store, timings: dict, tiles_per_step: list, forwards: dict, cache: dict | None,
                facts: dict) -> StageResult:
    """The render's files (mp4s, contact sheet, cache heat map, render.json), encoded from the store's
    frames: CPU work only, so on a Dask worker the task first leaves the worker's thread pool and the
    accelerator beside it takes its next task (another render's, in a queue) while ffmpeg and zlib run.
    `facts`: what `export_stage` returned."""
    import torch

    from supergen.cache import CacheReport

    off_the_accelerator()
    t0 = time.perf_counter()
    report = None
    if cache:
        report = CacheReport(cache["policy"], cache["threshold"], cache["alpha"], cache["skip_map"],
                             cache["thresholds"], cache["reasons"])
    write_files(store, RenderResult(spec=store.spec(), video=torch.from_numpy(store.video_frames()),
                                    sketch_video=torch.from_numpy(store.sketch_frames()), latent=None,
                                    sketch_latent=None, timings=timings, tiles_per_step=tiles_per_step,
                                    forwards=forwards, cache=report, **facts))
    return StageResult(time.perf_counter() - t0)


def off_the_accelerator() -> None:
    """Leave the Dask worker's thread pool (`distributed.secede`): the rest of the task uses the CPU only,
    and a GPU worker's one slot goes to its next task. Outside a worker, nothing."""
    from distributed import get_worker, secede

    try:
        get_worker()
    except ValueError:
        return
    secede()
