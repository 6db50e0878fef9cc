"""The region-aware tile cache: exactness at tau=0, honest counts, determinism, shift safety, the gain fix
and the always-compute rules."""

import pytest
import torch

import supergen
from supergen import RenderSpec
from supergen.cache import CacheConfig
from supergen.cache.policy import Decision, Observation, decide, region_thresholds
from supergen.cache.state import SCALARS, TENSORS, TileState, cached_tile_step, observe, scalar_dtype

# tiny model (random weights): per-step relative output change e is ~1.5, so tau=5 makes it skip
BASE = dict(prompt="a red circle moving", model="tiny", width=128, height=128, frames=5, steps=14, refine_steps=12,
            cache_warmup=2)


def test_tau_zero_is_bit_identical_to_no_cache():
    short = {**BASE, "steps": 8, "refine_steps": 6}  # past the warm-up: every rule runs, at half the cost
    a = supergen.render(RenderSpec(**short, cache="none"))
    for policy in ("region", "uniform"):
        b = supergen.render(RenderSpec(**short, cache=policy, cache_threshold=0.0))
        assert torch.equal(a.latent, b.latent) and torch.equal(a.video, b.video)
        assert b.cache.to_dict()["skip_ratio"] == 0.0


@pytest.mark.parametrize("policy", ["region", "uniform"])
def test_reported_forwards_equal_transformer_calls(policy):
    from supergen.backends import load_backend

    be = load_backend("tiny")
    calls = []
    be.pipe.transformer.register_forward_hook(lambda *a: calls.append(1))
    r = supergen.render(RenderSpec(**BASE, cache=policy, cache_threshold=5.0), backend=be)
    rep = r.cache.to_dict()
    assert 0 < rep["skip_ratio"] < 1
    assert len(calls) == r.forwards["sketch"] + r.forwards["refine"]
    assert r.forwards["refine"] == 2 * rep["tile_forwards_executed"]  # CFG: two calls per computed tile
    assert rep["tile_forwards_needed"] == sum(r.tiles_per_step)


def test_decisions_reproducible_and_rules_hold():
    spec = RenderSpec(**BASE, cache="region", cache_threshold=5.0, max_consecutive_skips=2)
    a, b = supergen.render(spec), supergen.render(spec)
    assert a.cache.skip_map == b.cache.skip_map and torch.equal(a.latent, b.latent)
    m = a.cache.skip_map
    assert all(s == 0 for step in m[:2] for s in step)  # warm-up computes
    assert all(s == 0 for s in m[-1])  # the last step computes
    for tile in range(len(m[0])):  # never more than max_consecutive_skips in a row (grid is 2x2 always)
        run = 0
        for step in m:
            run = run + 1 if step[tile] else 0
            assert run <= 2
    assert any(s for step in m for s in step)


def test_region_and_uniform_differ_and_uniform_decides_per_step():
    u = supergen.render(RenderSpec(**BASE, cache="uniform", cache_threshold=5.0))
    assert all(len(set(step)) == 1 for step in u.cache.skip_map)  # one decision for all tiles


def _tile_state(h=4, w=4):
    maps = {k: torch.zeros(1, 2, 1, h, w) for k in TENSORS}
    for k in SCALARS:
        maps[k] = torch.zeros(h, w, dtype=scalar_dtype(k))
    maps["tau"].fill_(10.0)
    return TileState(maps, (0, 0, h, w))


def test_reconstructions_never_feed_the_gain():
    """Two real forwards, then skips: the gain must stay the measured one. The released code overwrote the
    previous output with the reconstruction, which makes g exactly 1.0 after the first hit."""
    ts = _tile_state()
    x = [torch.full((1, 2, 1, 4, 4), v) for v in (1.0, 1.1, 1.2, 1.3, 1.4)]
    outs = iter([torch.full((1, 2, 1, 4, 4), v) for v in (5.0, 3.0)])
    cfg = CacheConfig(policy="region", threshold=10.0, warmup=2, max_consecutive_skips=5)
    gains = []
    for i, xi in enumerate(x):
        obs = observe(ts, xi)
        d = decide(obs, i, 10, cfg)
        gains.append(d.gain)
        _, ts = cached_tile_step(ts, xi, d, lambda: next(outs))
    assert [d is None for d in gains[:2]] == [True, True]  # warm-up
    # measured gain = |5 - 3| / |1.0 - 1.1| = 20, kept through the skip run (steps 2, 3, 4)
    assert gains[2:] == pytest.approx([20.0, 20.0, 20.0])
    assert float(ts["o_r1"].mean()) == 3.0 and float(ts["o_r2"].mean()) == 5.0


def test_skip_reuses_input_plus_residual_and_accumulates():
    ts = _tile_state()
    x0, x1 = torch.ones(1, 2, 1, 4, 4), torch.full((1, 2, 1, 4, 4), 2.0)
    out0, ts = cached_tile_step(ts, x0, Decision(True, "warmup"), lambda: torch.full_like(x0, 3.0))
    assert torch.equal(ts["residual"], torch.full_like(x0, 2.0))
    out1, ts = cached_tile_step(ts, x1, Decision(False, "skip", 0.1, 0.1), lambda: 1 / 0)  # no forward
    assert torch.equal(out1, torch.full_like(x1, 4.0))
    assert float(ts["acc"].max()) == pytest.approx(0.1) and int(ts["run"].max()) == 1


def test_decide_rules():
    cfg = CacheConfig(policy="region", threshold=0.5, warmup=3, max_consecutive_skips=2)
    good = Observation(d_in=0.01, d_out_real=0.1, d_in_real=0.1, out_real=1.0, acc=0.0, run=0, threshold=0.5)
    assert decide(good, 1, 10, cfg).reason == "warmup"
    assert decide(good, 9, 10, cfg).reason == "last"
    assert decide(good, 5, 10, cfg).compute is False
    assert decide(Observation(**{**good.__dict__, "run": 2}), 5, 10, cfg).reason == "max_skips"
    assert decide(Observation(**{**good.__dict__, "acc": 0.495}), 5, 10, cfg).reason == "threshold"
    assert decide(Observation(**{**good.__dict__, "d_out_real": None}), 5, 10, cfg).reason == "no_history"
    assert decide(good, 5, 10, CacheConfig(policy="none")).reason == "off"


def test_region_thresholds_top_two():
    assert region_thresholds([0.1, 0.9, 0.5, 0.2], 0.1, 0.5) == pytest.approx([0.1, 0.15, 0.125, 0.1])
    assert region_thresholds([0.3, 0.3], 0.1, 0.5) == [0.1, 0.1]


def test_state_survives_a_shift():
    """After a one-quantum shift a tile reads exactly what its cells held: every cell's last input is the
    canvas at the previous step, whichever tile wrote it."""
    from supergen.backends import load_backend
    from supergen.cache import TileCache
    from supergen.refine import RefinePlan, refine_step
    from supergen.tiling import cores, crop

    be = load_backend("tiny")
    plan = RefinePlan(10, 6, (16, 16), (8, 8), "wrap", 1, 4)  # quantum 2 cells
    cond = be.encode_conditioning("x", "", 5.0, None, (128, 128), 5)
    cache = TileCache(CacheConfig("region", 5.0, 0.5, warmup=1), plan.refine_steps)
    x, state = torch.randn(1, 16, 2, 16, 16, generator=torch.Generator().manual_seed(0)), {}
    for i in range(3):
        x_before = x.clone()
        x, state, grid = refine_step(be, cond, plan, i, x, state, cache=cache)
        maps = {k: v.clone() for k, v in cache.state.maps.items()}
        assert torch.equal(maps["x_last"], x_before)  # each core wrote its own cells of the step's input
        nxt = plan.grid(i + 1)
        assert nxt.offset != grid.offset
        for win, core in zip(nxt.windows, cores(nxt)):
            ts = cache.state.read(win, core)
            for k in maps:
                assert torch.equal(ts[k], crop(maps[k], win))


def test_compare_command(tmp_path, capsys):
    import json

    from flows.cli import main

    args = ["--prompt", "a red circle", "--model", "tiny", "--width", "128", "--height", "128", "--frames", "5",
            "--steps", "8", "--refine-steps", "6", "--cache-warmup", "1", "--quiet"]
    assert main(["render", *args, "--out", str(tmp_path / "a")]) == 0
    assert main(["render", *args, "--out", str(tmp_path / "b"), "--cache", "region", "--cache-threshold", "5"]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "a")]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["psnr_db"]["mean"] == "inf" and same["ssim"]["mean"] == 1.0 and same["latent_max_abs_diff"] == 0
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--frames"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert 0 < diff["psnr_db"]["mean"] < 100 and diff["ssim"]["mean"] < 1 and diff["latent_max_abs_diff"] > 0
    assert len(diff["ssim"]["per_frame"]) == 5
    rec = json.loads((tmp_path / "b" / "render.json").read_text())
    assert rec["cache"]["policy"] == "region" and rec["cache"]["skip_ratio"] > 0
    assert len(rec["cache"]["skip_map"]) == 6 and (tmp_path / "b" / "cache_skips.png").exists()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "nope")]) == 2
    assert "no render store" in capsys.readouterr().err
