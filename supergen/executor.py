"""The in-process executor: the whole method in one process, in plain sight. It is the reference every
other executor must reproduce."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from . import experts, lora, memory, noise, pair, sketch
from .backends import load_backend, model_configs, model_folder, model_info
from .backends.base import Backend
from .cache import CacheConfig, CacheReport, TileCache
from .errors import SpecError
from .inputs import decode_image, read_image
from .progress import NullProgress, Progress
from .refine import RefinePlan, refine_step
from .sink import Checkpoint, RenderSink
from .spec import RenderSpec, check_render_model, crop_to_request, device_problem, resolve, size_warnings
from .tiling import cores
from .upscale import to_uint8, upscale_video


@dataclass
class RenderResult:
    spec: RenderSpec  # resolved: every preset filled in
    video: torch.Tensor  # (F, height, width, 3) uint8: the requested size, the centre of the canvas
    sketch_video: torch.Tensor  # (F, sketch_height, sketch_width, 3) uint8: the whole canvas's picture, uncropped
    latent: torch.Tensor | None  # final normalized latent (1, C, F', canvas_height/8, canvas_width/8), float32
    sketch_latent: torch.Tensor | None  # the latents are None where only the files are written from frames
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    tiles_per_step: list[int] = field(default_factory=list)
    cache: CacheReport | None = None
    forwards: dict[str, int] = field(default_factory=dict)  # transformer calls: sketch / refine
    family: str = ""
    notes: list[str] = field(default_factory=list)  # what the model makes of the spec (`model_notes`)
    models: dict | None = None  # SRDiffusion: where the switch fell and why (`supergen.pair.record`)
    lora_files: tuple[str, ...] | None = None  # where the adapters' bytes are here, when not at spec.lora's paths

    @property
    def warnings(self) -> list[str]:
        """What the user should know: the sizes (canvas cropped, sketch stretched: `size_warnings`) and the
        model's `notes`."""
        return size_warnings(self.spec) + self.notes

    def report(self) -> dict[str, Any]:
        """The render.json record."""
        from .versions import versions

        return {
            "spec": self.spec.to_dict(), "seed": self.spec.seed, "family": self.family, "versions": versions(),
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "tiles_per_step": self.tiles_per_step, "forwards": self.forwards,
            "video_shape": list(self.video.shape), "sketch_shape": list(self.sketch_video.shape),
            "cache": self.cache.to_dict() if self.cache is not None else None,
            "warnings": self.warnings,
            "memory": memory_summary(self.spec),
            "lora": lora.record(self.spec.lora, self.lora_files),
            "models": self.models,
        }


def model_notes(backend, spec: RenderSpec, models: dict | None = None) -> list[str]:
    """What the loaded model makes of a resolved spec, one sentence each: where the refinement starts
    against a two-expert model's switch (`supergen.experts.note`) and SRDiffusion's (`supergen.pair.note`)."""
    start = spec.steps - spec.refine_steps
    notes = [experts.note(backend.timesteps(spec.steps), backend.info.expert_boundary, start),
             pair.note(models, spec.steps, start)]
    if spec.render_model is not None:  # both folders on this machine: their shared weights compared
        folders = (model_folder(spec.model), model_folder(spec.render_model))
        notes.append(pair.weights_note(*folders) if all(folders) else None)
    return [n for n in notes if n]


def load_models(spec: RenderSpec) -> Backend:
    """The spec's model, with SRDiffusion's render model beside it as one backend (`pair.ModelPair`)."""
    large = load_backend(spec.model, spec.device, spec.dtype, spec.compile, spec.vae_dtype or "float32", spec.lora)
    if spec.render_model is None:
        return large
    return pair.ModelPair(large, load_backend(spec.render_model, spec.device, spec.dtype, spec.compile,
                                              spec.vae_dtype or "float32", share=large))


def memory_summary(spec: RenderSpec) -> dict | None:
    """Estimated peak bytes per stage (supergen.memory) for render.json and `supergen inspect`; None when
    the model's configs are not on this machine."""
    try:
        est = memory.estimate(spec)
    except Exception:
        return None
    return {"device": est["device"], "stages_bytes": est["stages"], "peak_stage": est["peak_stage"],
            "peak_bytes": est["peak_bytes"], "formula": "supergen/memory.py"}


def prepare(spec: RenderSpec, check_memory: bool = True, weights_loaded: bool = False,
            here: bool = True) -> RenderSpec:
    """Validate `spec` against its model's configs (no weights loaded) and fill presets. With `here` (the
    render runs in this process) also refuse a device this machine lacks, and a render whose estimated
    peak exceeds the device's free memory (`memory.InsufficientMemory`; skipped with `check_memory=False`
    or SUPERGEN_MEMORY_CHECK=off; `weights_loaded`: the weights already take their share of the device).
    A cluster driver passes `here=False`: its workers check their own device and memory
    (`tasks.stages.worker_problem`) before any stage runs."""
    for key in ("model", "render_model"):  # a folder by its absolute path: workers elsewhere open the same
        name = getattr(spec, key)
        if name is not None and os.path.isdir(name) and not os.path.isabs(name):
            spec = spec.replace(**{key: os.path.abspath(name)})
    info = model_info(spec.model)
    spec = resolve(spec, info)
    if spec.lora and spec.render_model is not None:
        raise SpecError("lora", "LoRAs are fused into the model's transformer, and with a render_model the steps "
                                "after the switch would run without them: give one or the other")
    if spec.lora:  # absolute paths (workers elsewhere open the same files), then checked against the model
        spec = spec.replace(lora=lora.normalized(spec.lora))
        lora.check(spec.lora, model_configs(spec.model))
    if spec.render_model is not None:  # SRDiffusion: the pair must share one trajectory
        small = model_info(spec.render_model)
        pair.check(model_configs(spec.model), model_configs(spec.render_model), info, small)
        check_render_model(spec, small)
    if here:
        problem = device_problem(spec.device)
        if problem:
            raise SpecError("device", f"{problem}; use 'cpu'")
    if here and check_memory:
        memory.check(spec, info, weights=not weights_loaded)
    return spec


def load_image(spec: RenderSpec, sink: RenderSink | None = None):
    """The conditioning image (PIL RGB) or None: the copy kept with the render where the sink has one (a
    resume needs no original file), else the spec's path, refused early if it does not open."""
    if spec.image is None:
        return None
    data = sink.input_image() if sink is not None else None
    return decode_image(data) if data is not None else decode_image(read_image(spec.image), spec.image)


def sketch_latent(backend: Backend, spec: RenderSpec, image) -> tuple[torch.Tensor, dict | None]:
    """Stage 1: the whole clip at native size with the full N-step schedule: the stock pipeline, written
    out as per-branch calls (`supergen.sketch`: a cluster may then split the CFG branches and still give
    this latent); with SRDiffusion, where its switch fell (`sketch.models`)."""
    return sketch.sketch(backend, spec, image)


def canvas_video(spec: RenderSpec, video_lo: torch.Tensor) -> torch.Tensor:
    """Stage 2's bicubic upscale of the decoded sketch, in pixel space, to the canvas."""
    cw, ch = spec.canvas_size
    return upscale_video(video_lo, (ch, cw))


def renoise_noise(spec: RenderSpec, shape) -> torch.Tensor:
    """The canvas latent's re-noising noise (CPU), drawn whole from one generator: a region is a slice."""
    return noise.gaussian(shape, spec.seed, "renoise")


def start_latent(backend: Backend, spec: RenderSpec, video_lo: torch.Tensor, start: int) -> torch.Tensor:
    """Stage 2: bicubic upscale in pixel space to the canvas, re-encode, re-noise to schedule index
    `start` = N - k."""
    z_hi = backend.encode(canvas_video(spec, video_lo), vae_tile=spec.vae_tile)
    return backend.renoise(z_hi, renoise_noise(spec, z_hi.shape).to(z_hi.device), spec.steps, start)


@contextmanager
def _timed(timings: dict, name: str, progress: Progress, total: int = 1):
    progress.start(name, total)
    t0 = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t0
    progress.finish()


def render(spec: RenderSpec, progress: Progress | None = None, backend: Backend | None = None,
           sink: RenderSink | None = None) -> RenderResult:
    """Render `spec` in this process: sketch -> upscale -> re-noise -> tiled refinement -> decode.

    With a `sink` (the render store), finished stages and refinement checkpoints are saved as they
    complete and, when present, loaded instead of recomputed: a crashed render resumes from its last
    checkpoint and ends with exactly the video an uninterrupted render gives.
    """
    progress = progress or NullProgress()
    spec = prepare(spec, weights_loaded=backend is not None)  # every spec error surfaces here, before any weights load
    image = load_image(spec, sink)  # a missing or unreadable image is refused before any weights load
    timings: dict[str, float] = {}
    with _timed(timings, "load", progress):
        backend = backend or load_models(spec)
    plan = RefinePlan.from_spec(spec, backend.info.vae_spatial, backend.info.native_latent)  # the canvas's tile geometry
    load = sink.load_stage if sink is not None else (lambda name: None)
    save = sink.save_stage if sink is not None else (lambda name, t, record=None: None)
    record = sink.stage_record if sink is not None else (lambda name: None)
    forwards = {"sketch": 0, "refine": 0}

    # 1. Sketch: the whole clip at native size, the full N-step schedule, the stock pipeline.
    with _timed(timings, "sketch", progress), memory.guard("sketch", spec):
        z_lo, models = load("sketch"), record("sketch")
        if z_lo is None:
            calls0 = backend.forwards
            z_lo, models = sketch_latent(backend, spec, image)
            forwards["sketch"] = backend.forwards - calls0
            save("sketch", z_lo, models)
        z_lo = z_lo.to(backend.device)

    # 2. Upscale in pixel space, re-encode, re-noise to schedule index N - k with seeded noise.
    with _timed(timings, "upscale", progress), memory.guard("upscale", spec):
        video_lo = backend.decode(z_lo, frames=spec.frames, vae_tile=spec.vae_tile)
        x = load("start")
        if x is None:
            x = start_latent(backend, spec, video_lo, plan.start)
            save("start", x)
        x = x.to(backend.device)
        cond = backend.encode_conditioning(spec.prompt, spec.negative_prompt, spec.guidance, image,
                                           spec.canvas_size, spec.frames, seed=spec.seed)
        cond.model_switch = models["switch_step"] if models else None

    # 3. Tiled refinement: every window predicts, predictions merge, one scheduler step on the canvas.
    schedule, boundary = backend.timesteps(spec.steps), backend.info.expert_boundary
    fresh = pair.fresh_at(experts.switches(schedule, boundary, plan.start), models, plan.start, plan.refine_steps)
    cache = TileCache(CacheConfig.from_spec(spec, fresh), plan.refine_steps)
    tiles_per_step, state, first = [], {}, 0
    ckpt = sink.load_checkpoint() if sink is not None else None
    if ckpt is not None:  # resume after the last checkpointed step
        x, state, first = ckpt.latent.to(backend.device), dict(ckpt.scheduler), ckpt.step + 1
        cache.restore(ckpt.cache, ckpt.record.get("cache", {}))
        tiles_per_step = list(ckpt.record.get("tiles_per_step", []))
        forwards["refine"] = ckpt.record.get("refine_forwards", 0)
    t0, calls0 = time.perf_counter(), backend.forwards
    for i in range(first, plan.refine_steps):
        progress.start(f"refine {i + 1}/{plan.refine_steps}", len(plan.grid(i)))
        with memory.guard("refine", spec):
            x, state, grid = refine_step(backend, cond, plan, i, x, state, seed=spec.seed, cache=cache,
                                         on_tile=lambda d, t: progress.advance())
        tiles_per_step.append(len(grid))
        last = i == plan.refine_steps - 1
        if sink is not None and spec.checkpoint_every and ((i + 1) % spec.checkpoint_every == 0 or last):
            maps, report = cache.snapshot()
            sink.save_checkpoint(Checkpoint(
                i, grid.windows, cores(grid), x, state, maps,
                {"tiles_per_step": tiles_per_step, "cache": report,
                 "refine_forwards": forwards["refine"] + backend.forwards - calls0}))
        progress.finish()
    timings["refine"] = time.perf_counter() - t0
    forwards["refine"] += backend.forwards - calls0
    x = backend.finish(x, None if cond.image_latent is None else cond.image_latent.to(x.device))
    save("final", x)

    # 4. Decode the final canvas (tiled VAE with explicit tile and stride); the output is its requested centre.
    with _timed(timings, "decode", progress), memory.guard("export", spec):
        video = backend.decode(x, frames=spec.frames, vae_tile=spec.vae_tile)

    with memory.guard("export", spec):  # the uint8 copies of the decoded canvas
        return RenderResult(spec=spec, video=crop_to_request(to_uint8(video), spec), sketch_video=to_uint8(video_lo),
                            latent=x.cpu(), sketch_latent=z_lo.cpu(), timings=timings, tiles_per_step=tiles_per_step,
                            forwards=forwards, family=backend.info.family, cache=cache.report,
                            notes=model_notes(backend, spec, models), models=models)
