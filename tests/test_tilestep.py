"""Tile-local refinement (what cluster workers run) reproduces the in-process reference bit for bit."""

import pytest
import torch

from supergen.backends import load_backend
from supergen.cache import CacheConfig, TileCache
from supergen.cache.policy import decide, region_thresholds, welford_std
from supergen.refine import RefinePlan, refine_step
from supergen.tiling import cores, crop, local, paste
from supergen.cache.state import canvas_observation, empty_maps
from supergen.tilestep import Piece, advance, branch, cut, denoise, gather, prediction_pieces


def run_tile_steps(be, cond, plan, x0, cfg, seed=0, split=False):
    """The distributed executor's data flow, run sequentially: only pieces cross tile boundaries. With
    `split`, odd windows get their negative-prompt branch computed apart (as on another worker)."""
    grid = plan.grid(0)
    start = {"latent": x0}
    if cfg.policy != "none":
        start.update({f"cache/{k}": v for k, v in empty_maps(x0, cfg.threshold).items()})
    held = [Piece(win, {k: crop(v, win) for k, v in start.items()}) for win in cores(grid)]  # step-0 "owners"
    inbox = {m: [q for p in held for q in cut(p.rect, p.maps, [win], grid.canvas).get(0, [])]
             for m, win in enumerate(grid.windows)}
    for i in range(plan.refine_steps):
        grid, cs = plan.grid(i), cores(plan.grid(i))
        gs = [gather(win, cs[m], inbox[m], grid.canvas, cfg.policy != "none") for m, win in enumerate(grid.windows)]
        if cfg.policy == "uniform":
            d = decide(canvas_observation([g.sums for g in gs]), i, plan.refine_steps, cfg)
            decisions = [d] * len(gs)
        elif cfg.policy == "region":
            decisions = [decide(g.observation, i, plan.refine_steps, cfg) for g in gs]
        else:
            decisions = [None] * len(gs)
        given = [{1: branch(be, cond, plan, i, g.window, g.maps["latent"].clone(), 1)} if split and m % 2 else None
                 for m, g in enumerate(gs)]
        dn = [denoise(be, cond, plan, i, g, d, grid.canvas, gv) for g, d, gv in zip(gs, decisions, given)]
        taus = [None] * len(gs)
        if cfg.policy == "region" and (i + 1) % cfg.update_every == 0:
            taus = region_thresholds([welford_std(*d.welford) for d in dn], cfg.threshold, cfg.alpha)
        nxt = plan.grid(i + 1).windows
        inbox = {m: [] for m in range(len(nxt))}
        for k, core in enumerate(cs):
            g = gs[k]
            ys, xs = local(core, g.window, grid.canvas)
            x_core = g.maps["latent"][..., ys, xs]
            sched = {kk: v[..., ys, xs] for kk, v in g.maps.items() if kk.startswith("scheduler/")}
            preds = [(n, prediction_pieces(d.prediction, grid.windows[n], core, grid.canvas)) for n, d in enumerate(dn)]
            maps = advance(be, plan, i, grid, k, x_core, sched, dn[k].cache_core, preds, seed, taus[k])
            for m, pieces in cut(core, maps, nxt, grid.canvas).items():
                inbox[m] += pieces
    # reassemble the canvas from the last pieces (which tile the next grid's windows)
    x = torch.zeros_like(x0)
    for m, pieces in inbox.items():
        for p in pieces:
            paste(x, p.rect, p.maps["latent"])
    return x


@pytest.mark.parametrize("canvas,split", [((16, 16), False), ((14, 20), False), ((14, 20), True)])
@pytest.mark.parametrize("policy,tau", [("none", 0.0), ("region", 5.0), ("uniform", 5.0)])
def test_tile_steps_equal_refine_step(canvas, split, policy, tau):
    be = load_backend("tiny")
    plan = RefinePlan(12, 10, canvas, (8, 8), "wrap", 1, 4)
    cond = be.encode_conditioning("a red circle", "", 5.0, None, (canvas[1] * 8, canvas[0] * 8), 5)
    cfg = CacheConfig(policy, tau, 0.5, warmup=2, max_consecutive_skips=2)
    x0 = torch.randn(1, 16, 2, *canvas, generator=torch.Generator().manual_seed(1))
    cache, x, state = TileCache(cfg, plan.refine_steps), x0.clone(), {}
    for i in range(plan.refine_steps):
        x, state, _ = refine_step(be, cond, plan, i, x, state, cache=cache)
    got = run_tile_steps(be, cond, plan, x0, cfg, split=split)
    assert torch.equal(got, x)
    if policy != "none":
        assert sum(map(sum, cache.report.skip_map)) > 0


def test_a_branch_computed_elsewhere_is_used_and_exact():
    """`denoise` with the negative-prompt branch handed in makes one model call instead of two and gives
    the same prediction; a wrong branch handed in changes it (so the handed-in branch is really used)."""
    be = load_backend("tiny")
    plan = RefinePlan(6, 4, (8, 8), (8, 8), "wrap", 1, 4)
    cond = be.encode_conditioning("a red circle", "", 5.0, None, (64, 64), 5)
    x = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    g = gather(plan.grid(0).windows[0], cores(plan.grid(0))[0], [Piece(plan.grid(0).windows[0], {"latent": x})],
               (8, 8), cache_on=False)
    calls = be.forwards
    whole = denoise(be, cond, plan, 0, g, None, (8, 8)).prediction
    assert be.forwards - calls == 2
    neg = branch(be, cond, plan, 0, g.window, x, 1)
    calls = be.forwards
    split = denoise(be, cond, plan, 0, g, None, (8, 8), {1: neg}).prediction
    assert be.forwards - calls == 1 and torch.equal(split, whole)
    assert not torch.equal(denoise(be, cond, plan, 0, g, None, (8, 8), {1: torch.zeros_like(neg)}).prediction, whole)


def test_a_prediction_strip_serialises_to_its_own_size():
    """Strips travel to the worker advancing a neighbouring core; a view would carry the whole window's
    storage through pickling, so the strip must cost its own bytes, not the window's."""
    from distributed.protocol import serialize_bytes

    from supergen.tiling import Window
    from tasks.refine import Strips

    pred = torch.randn(1, 16, 3, 96, 170)
    win, core = Window(0, 0, 96, 170), Window(0, 161, 96, 170)  # overlap: a 96 x 9 strip
    pieces = prediction_pieces(pred, win, core, (96, 340))
    assert [(p.rect.height, p.rect.width) for p in pieces] == [(96, 9)]
    assert torch.equal(pieces[0].maps["pred"], pred[..., :, 161:])
    strip_bytes = 96 * 9 * 16 * 3 * 4
    assert len(serialize_bytes(Strips(0, pieces))) < 2 * strip_bytes < pred.numel() * 4
