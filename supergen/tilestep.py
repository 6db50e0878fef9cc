"""One tile's share of a refinement step, for executors that spread tiles over workers.

One refinement step `i` becomes three small functions per tile, each needing only one tile's data:

* `gather`  (window m): assemble the window's latent, scheduler and cache state from the pieces the
  previous step's owners sent, and observe it for the cache decision;
* `denoise` (window m): predict the window (or reuse input + cached residual), update the cache state of
  the cells the window owns (its core); a CFG branch may come ready-made from `branch` run elsewhere;
* `advance` (core k): merge the predictions of the windows covering the core (`tiling.merge_region`, the
  merge the in-process step uses over the whole canvas), take the scheduler step on the core, and cut the
  result into the pieces each next-step window needs. A window computed on another worker sends only the
  strips of its prediction that overlap the core (`prediction_pieces`), not the whole window.

Between steps only those pieces travel; a piece that stays on its worker costs nothing: tile data lives
on the worker's device (a GPU worker never copies it to host and back between steps), and only what leaves
the worker is copied to host (`to_host`). The arithmetic is shared with the in-process step
(`refine.refine_step`), not copied: one merge (`tiling.merge_region`), one guided prediction
(`Backend.predict`), one empty cache state and one cache observation (`cache.state`). Run in order, these
functions give bit-for-bit the canvas of `refine.refine_step`, which tests check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .backends.base import Backend, Conditioning
from .cache.policy import Decision, Observation
from .cache.state import TileState, cached_tile_step, core_sums, empty_maps, observe
from .refine import RefinePlan
from .tiling import Grid, Window, cores, crop, intersections, local, merge_region

Maps = dict[str, torch.Tensor]  # "latent", "scheduler/<name>", "cache/<name>": tensors over one region,
# named as the render store names its arrays, so tile state is written and read back without translation


@dataclass
class Piece:
    rect: Window  # canvas rectangle (never wraps)
    maps: Maps


@dataclass
class Gathered:
    window: Window
    core: Window
    maps: Maps  # window-local
    observation: Observation | None
    sums: dict = field(default_factory=dict)  # core sums for the uniform policy's canvas-wide observation


def assemble(win: Window, pieces: list[Piece], canvas: tuple[int, int], device=None) -> Maps:
    """The window-local tensors of `win` from pieces that tile it, on `device` (default: the pieces')."""
    out: Maps = {}
    for p in pieces:
        ys, xs = local(p.rect, win, canvas)
        for k, v in p.maps.items():
            if k not in out:
                out[k] = torch.zeros(v.shape[:-2] + (win.height, win.width), dtype=v.dtype,
                                     device=v.device if device is None else device)
            out[k][..., ys, xs] = v
    return out


def cut(core: Window, maps: Maps, windows: list[Window], canvas: tuple[int, int]) -> dict[int, list[Piece]]:
    """Split core-local tensors into the pieces each of `windows` needs: {window index: pieces}."""
    out: dict[int, list[Piece]] = {}
    for m, win in enumerate(windows):
        for rect in intersections(core, win, canvas):
            ys, xs = local(rect, core, canvas)
            out.setdefault(m, []).append(Piece(rect, {k: v[..., ys, xs].clone() for k, v in maps.items()}))
    return out


def to_host(pieces: list[Piece]) -> list[Piece]:
    """Host copies of pieces about to leave their worker (a no-op for pieces already on the CPU)."""
    return [Piece(p.rect, {k: v.cpu() for k, v in p.maps.items()}) for p in pieces]


def _tile_state(maps: Maps, win: Window, core: Window, canvas) -> TileState:
    ys, xs = local(core, win, canvas)
    return TileState({k.split("/", 1)[1]: v for k, v in maps.items() if k.startswith("cache/")},
                     (ys.start, xs.start, core.height, core.width))


def gather(win: Window, core: Window, pieces: list[Piece], canvas, cache_on: bool,
           threshold: float = 0.0, device=None, fresh: bool = False) -> Gathered:
    """Window `win` assembled from `pieces`, with its cache observation. `fresh`: the cache starts empty
    here (`CacheConfig.fresh_at`: another expert from this step on), whatever the pieces carry."""
    maps = assemble(win, pieces, canvas, device)
    if not cache_on:
        return Gathered(win, core, maps, None)
    if fresh:
        maps = {k: v for k, v in maps.items() if not k.startswith("cache/")}
    if "cache/x_last" not in maps:  # the first refinement step (or a fresh one): an empty cache
        maps.update({f"cache/{k}": v for k, v in empty_maps(maps["latent"], threshold).items()})
    ts = _tile_state(maps, win, core, canvas)
    x = maps["latent"]
    return Gathered(win, core, maps, observe(ts, x), core_sums(ts, x))


@dataclass
class Denoised:
    window: Window
    prediction: torch.Tensor  # window-local, float32
    cache_core: Maps  # the core's updated cache state (core-local)
    welford: tuple[float, float]  # (n, m2) at the core centre, for region thresholds
    computed: bool
    seconds: float = 0.0
    worker: str = ""
    calls: int = 0  # transformer calls made


def branch(backend: Backend, cond: Conditioning, plan: RefinePlan, i: int, win: Window, x: torch.Tensor,
           b: int) -> torch.Tensor:
    """CFG branch `b` of window `win`'s prediction (a finer unit of work than the tile, for balancing)."""
    image = None if cond.image_latent is None else crop(cond.image_latent, win).to(backend.device)
    return backend.predict_branch(x.to(backend.device), plan.steps, plan.start + i, cond, b, image,
                                  place=plan.place(win))


def denoise(backend: Backend, cond: Conditioning, plan: RefinePlan, i: int, g: Gathered,
            decision: Decision | None, canvas, given: dict[int, torch.Tensor] | None = None) -> Denoised:
    """Window g's prediction (computed, or reused from the cache); `given` holds CFG branch outputs
    already computed elsewhere by `branch`, combined exactly as `Backend.predict` combines its own."""
    index = plan.start + i
    x = g.maps["latent"].to(backend.device)
    image = None if cond.image_latent is None else crop(cond.image_latent, g.window).to(backend.device)

    def predict():  # the in-process step's guided prediction, with the branches computed elsewhere filled in
        return backend.predict(x, plan.steps, index, cond, image_latent=image, given=given,
                               place=plan.place(g.window))

    if decision is None:
        return Denoised(g.window, predict(), {}, (0.0, 0.0), True)
    ts = _tile_state(g.maps, g.window, g.core, canvas)
    out, ts = cached_tile_step(ts, x, decision, predict)
    dy, dx, h, w = ts.core
    core = {f"cache/{k}": v[..., dy : dy + h, dx : dx + w].clone() for k, v in ts.maps.items()}
    return Denoised(g.window, out, core, (ts.at_core_center("w_n"), ts.at_core_center("w_m2")), decision.compute)


def prediction_pieces(pred: torch.Tensor, win: Window, core: Window, canvas) -> list[Piece]:
    """The parts of window `win`'s (window-local) prediction that lie on `core`, in canvas rectangles: copies,
    so a strip sent to another worker carries its own cells, not the whole window's storage."""
    return cut(win, {"pred": pred}, [core], canvas).get(0, [])


def advance(backend: Backend, plan: RefinePlan, i: int, grid: Grid, k: int, x_core: torch.Tensor,
            sched_core: Maps, cache_core: Maps, preds: list[tuple[int, list[Piece]]], seed: int,
            tau: float | None = None) -> Maps:
    """Merge, step and return the core-local maps of core k after refinement step i.

    `preds` are (window index, `prediction_pieces` of it on core k) for every window overlapping core k, any
    order.
    """
    core = cores(grid)[k]
    dev = backend.device  # merge where the step runs (on a GPU worker, not its one CPU thread)
    parts = [(n, p.rect, p.maps["pred"]) for n, pieces in preds for p in pieces]
    prediction = merge_region(grid, core, parts, x_core.shape[:-2], dev)
    sched = {k2.split("/", 1)[1]: v for k2, v in sched_core.items()}
    x_next, sched = backend.step(plan.steps, plan.start + i, prediction, x_core.to(dev), sched, seed=seed)
    out = {"latent": x_next, **{f"scheduler/{k2}": v for k2, v in sched.items()}, **cache_core}
    if tau is not None:
        out["cache/tau"] = torch.full_like(out["cache/tau"], tau)
    return out


def cpu_conditioning(cond: Conditioning) -> Conditioning:
    """The image-condition canvas on the CPU (tiles crop it there); text embeddings stay on the device."""
    if cond.image_latent is not None:
        cond.image_latent = cond.image_latent.cpu()
    return cond
