"""Refinement split into tile-local work, for executors that spread tiles over workers.

One refinement step `i` becomes three small functions per tile, each needing only one tile's data:

* `gather`  (window m): assemble the window's latent, scheduler and cache state from the pieces the
  previous step's owners sent, and observe it for the cache decision;
* `denoise` (window m): predict the window (or reuse input + cached residual), update the cache state of
  the cells the window owns (its core); a CFG branch may come ready-made from `branch` run elsewhere;
* `advance` (core k): merge the predictions of the windows covering the core (in window order, exactly as
  `tiling.merge`), take the scheduler step on the core, and cut the result into the pieces each next-step
  window needs. A window computed on another worker sends only the strips of its prediction that overlap
  the core (`prediction_pieces`), not the whole window.

Between steps only those pieces travel; a piece that stays on its worker costs nothing: tile data lives
on the worker's device (a GPU worker never copies it to host and back between steps), and only what leaves
the worker is copied to host (`to_host`). Run in order, these functions give bit-for-bit the canvas of
`refine.refine_step` (the in-process reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .backends.base import Backend, Conditioning
from .cache.policy import Decision, Observation
from .cache.state import SCALARS, TENSORS, TileState, cached_tile_step, observe, scalar_dtype
from .refine import RefinePlan
from .tiling import Grid, Window, cores, crop, intersections, local, tile_weight

Maps = dict[str, torch.Tensor]  # "x", "sched/<name>", "cache/<name>": tensors over one region


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


def empty_cache(like_x: torch.Tensor, threshold: float) -> Maps:
    hw = like_x.shape[-2:]
    m = {f"cache/{k}": torch.zeros_like(like_x, dtype=torch.float32) for k in TENSORS}
    for k in SCALARS:
        m[f"cache/{k}"] = torch.zeros(hw, dtype=scalar_dtype(k), device=like_x.device)
    m["cache/tau"].fill_(threshold)
    return m


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
           threshold: float = 0.0, device=None) -> Gathered:
    maps = assemble(win, pieces, canvas, device)
    if cache_on and "cache/x_last" not in maps:  # the first refinement step: an empty cache
        maps.update(empty_cache(maps["x"], threshold))
    if not cache_on:
        return Gathered(win, core, maps, None)
    ts = _tile_state(maps, win, core, canvas)
    x = maps["x"]
    obs = observe(ts, x)
    ys, xs = local(core, win, canvas)
    c = {k: v[..., ys, xs] for k, v in ts.maps.items()}
    xc = x[..., ys, xs]
    f64 = torch.float64
    sums = {"n": xc.numel(), "d_in": float((xc - c["x_last"]).abs().sum(dtype=f64)),
            "d_out_real": float((c["o_r1"] - c["o_r2"]).abs().sum(dtype=f64)),
            "d_in_real": float((c["x_r1"] - c["x_r2"]).abs().sum(dtype=f64)),
            "out_real": float(c["o_r1"].abs().sum(dtype=f64)), "acc": float(c["acc"].sum(dtype=f64)),
            "cells": c["acc"].numel(), "run": int(c["run"].max()), "real": int(c["real"].min()),
            "seen": int(c["seen"].min()), "tau": float(c["tau"].flatten()[0])}
    return Gathered(win, core, maps, obs, sums)


def canvas_observation(sums: list[dict]) -> Observation:
    """The uniform policy's whole-canvas observation from every core's sums."""
    n = sum(s["n"] for s in sums)
    real, seen = min(s["real"] for s in sums), min(s["seen"] for s in sums)
    return Observation(
        d_in=sum(s["d_in"] for s in sums) / n if seen else None,
        d_out_real=sum(s["d_out_real"] for s in sums) / n if real >= 2 else None,
        d_in_real=sum(s["d_in_real"] for s in sums) / n if real >= 2 else None,
        out_real=sum(s["out_real"] for s in sums) / n if real >= 1 else None,
        acc=sum(s["acc"] for s in sums) / sum(s["cells"] for s in sums),
        run=max(s["run"] for s in sums), threshold=sums[0]["tau"])


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
    return backend.predict_branch(x.to(backend.device), plan.steps, plan.start + i, cond, b, image)


def denoise(backend: Backend, cond: Conditioning, plan: RefinePlan, i: int, g: Gathered,
            decision: Decision | None, canvas, given: dict[int, torch.Tensor] | None = None) -> Denoised:
    """Window g's prediction (computed, or reused from the cache); `given` holds CFG branch outputs
    already computed elsewhere by `branch`, combined exactly as `Backend.predict` combines its own."""
    index = plan.start + i
    x = g.maps["x"].to(backend.device)
    image = None if cond.image_latent is None else crop(cond.image_latent, g.window).to(backend.device)
    given = given or {}

    def predict():  # Backend.predict's own arithmetic, with the branches computed elsewhere filled in
        outs = [given[b].to(backend.device) if b in given
                else backend.predict_branch(x, plan.steps, index, cond, b, image) for b in range(cond.branches)]
        return cond.guide(outs)

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
    canvas = grid.canvas
    core = cores(grid)[k]
    dev = backend.device  # merge where the step runs (on a GPU worker, not its one CPU thread)
    w = tile_weight(grid).to(dev)
    exact = bool((w == 1).all())
    acc = torch.zeros(x_core.shape, dtype=torch.float32, device=dev)
    wsum = torch.zeros(core.height, core.width, dtype=torch.float32, device=dev)
    for n, pieces in sorted(preds, key=lambda t: t[0]):  # window order, as tiling.merge adds them
        win = grid.windows[n]
        for p in pieces:
            ys, xs = local(p.rect, win, canvas)
            yd, xd = local(p.rect, core, canvas)
            part = p.maps["pred"].to(dev).float()
            if exact:
                acc[..., yd, xd] = part
            else:
                acc[..., yd, xd] += part * w[ys, xs]
                wsum[yd, xd] += w[ys, xs]
    prediction = acc if exact else acc / wsum
    sched = {k2.split("/", 1)[1]: v for k2, v in sched_core.items()}
    x_next, sched = backend.step(plan.steps, plan.start + i, prediction, x_core.to(dev), sched, seed=seed)
    out = {"x": x_next, **{f"sched/{k2}": v for k2, v in sched.items()}, **cache_core}
    if tau is not None:
        out["cache/tau"] = torch.full_like(out["cache/tau"], tau)
    return out


def cpu_conditioning(cond: Conditioning) -> Conditioning:
    """The image-condition canvas on the CPU (tiles crop it there); text embeddings stay on the device."""
    if cond.image_latent is not None:
        cond.image_latent = cond.image_latent.cpu()
    return cond
