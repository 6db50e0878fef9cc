"""Canvas-position RoPE (`supergen.rope`, `--rope`): every mode gives a native tile at the origin the stock
positions; a tile's canvas positions are its cells' positions on the canvas; the positions reach the
transformer."""

import pytest
import torch

from supergen import rope
from supergen.backends import load_backend

MODES = ["canvas", "canvas-ntk", "canvas-interp"]


@pytest.mark.parametrize("mode", MODES)
def test_a_native_tile_at_the_origin_gets_the_stock_positions_wan(mode, tiny_dir):
    be = load_backend(tiny_dir("wan-t2v"))
    stock = be.pipe.transformer.rope.stock
    x = torch.zeros(1, 16, 2, 8, 12)
    got = rope.wan_rotary(stock, x.shape, rope.Place(0, 0, (8, 12), (8, 12), mode))
    for a, b in zip(got, stock(x)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", MODES)
def test_a_native_tile_at_the_origin_gets_the_stock_positions_cogvideox15(mode, tiny_dir):
    be = load_backend(tiny_dir("cogvideox15-t2v"))
    cfg, s = be.pipe.transformer.config, be.info.vae_spatial
    (h, w), f = be.info.native_latent, 4  # latent cells and frames
    got = rope.cogvideox_rotary(cfg.attention_head_dim, (h // cfg.patch_size, w // cfg.patch_size), f // be.p_t,
                                cfg.patch_size, rope.Place(0, 0, (h, w), (h, w), mode), "cpu")
    for a, b in zip(got, be.pipe._prepare_rotary_positional_embeddings(h * s, w * s, f, "cpu")):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["hunyuan-t2v", "hunyuan15-t2v"])
@pytest.mark.parametrize("mode", MODES)
def test_a_native_tile_at_the_origin_gets_the_stock_positions_hunyuanvideo(mode, kind, tiny_dir):
    stock = load_backend(tiny_dir(kind)).pipe.transformer.rope.stock
    x = torch.zeros(1, 4, 2, 8, 12)
    got = rope.hunyuan_rotary(stock, x.shape, rope.Place(0, 0, (8, 12), (8, 12), mode))
    for a, b in zip(got, stock(x)):
        assert torch.equal(a, b)


def test_a_hunyuanvideo_tiles_canvas_positions_are_its_cells_on_the_canvas(tiny_dir):
    stock = load_backend(tiny_dir("hunyuan-t2v")).pipe.transformer.rope.stock
    canvas, tile, p = (12, 16), (8, 8), stock.patch_size
    whole = rope.hunyuan_rotary(stock, (1, 4, 1, *canvas), rope.Place(0, 0, canvas, tile, "canvas-ntk"))[0]
    whole = whole.view(canvas[0] // p, canvas[1] // p, -1)
    got = rope.hunyuan_rotary(stock, (1, 4, 1, *tile), rope.Place(4, 6, canvas, tile, "canvas-ntk"))[0]
    assert torch.equal(got.view(tile[0] // p, tile[1] // p, -1), whole[2:6, 3:7])


def _wan_axes(cos: torch.Tensor, shape, stock):
    """The (y, x) rotary rows of a Wan embedding, per cell: (pph, ppw, h_dim + w_dim)."""
    _, _, f, h, w = shape
    pt, ph, pw = stock.patch_size
    return cos.view(f // pt, h // ph, w // pw, -1)[0, :, :, stock.t_dim:]


def test_a_tiles_canvas_positions_are_its_cells_positions_on_the_canvas(tiny_dir):
    """A window's embedding is the whole canvas's at the window's cells; a window wrapping past the right
    edge keeps counting (its wrapped cells continue the canvas's positions, not restart at 0)."""
    stock = load_backend(tiny_dir("wan-t2v")).pipe.transformer.rope.stock
    canvas, tile = (12, 20), (8, 8)
    whole = _wan_axes(rope.wan_rotary(stock, (1, 16, 1, 12, 40), rope.Place(0, 0, canvas, tile, "canvas"))[0],
                      (1, 16, 1, 12, 40), stock)  # twice as wide: the cells past the right edge
    for top, left in [(0, 0), (4, 6), (2, 16)]:  # (2, 16): columns 16..23 wrap past the 20-cell canvas
        shape = (1, 16, 1, *tile)
        got = _wan_axes(rope.wan_rotary(stock, shape, rope.Place(top, left, canvas, tile, "canvas"))[0], shape, stock)
        ph, pw = stock.patch_size[1:]
        assert torch.equal(got, whole[top // ph: (top + tile[0]) // ph, left // pw: (left + tile[1]) // pw])


def test_ntk_and_interp_scale_the_spatial_axes_by_the_canvas():
    p = rope.Place(0, 0, (32, 16), (8, 8), "canvas-ntk")
    assert rope.axis(p, 0, 4, 1, 6)["ntk_factor"] == pytest.approx(16.0 ** 1.5)  # alpha = 4^2
    assert rope.axis(p, 1, 4, 1, 6)["ntk_factor"] == pytest.approx(4.0 ** 1.5)
    big = rope.Place(0, 0, (160, 8), (8, 8), "canvas-ntk")
    assert rope.axis(big, 0, 4, 1, 6)["ntk_factor"] == pytest.approx(64.0 ** 1.5)  # clamped at 64
    q = rope.Place(3, 0, (32, 16), (8, 8), "canvas-interp")
    kw = rope.axis(q, 0, 4, 1, 6)
    assert kw["linear_factor"] == 4 and kw["pos"].tolist() == [3, 4, 5, 6]
    assert rope.place("local", 3, 4, (32, 16), (8, 8)) is None


@pytest.mark.parametrize("kind", ["wan-t2v", "cogvideox15-t2v", "hunyuan-t2v", "hunyuan15-t2v"])
def test_the_positions_reach_the_transformer(kind, tiny_dir):
    from supergen import RenderSpec
    from supergen.executor import prepare

    be = load_backend(tiny_dir(kind))
    spec = prepare(RenderSpec(prompt="a red circle", model=tiny_dir(kind), width=128, height=128,
                              frames=5 if kind.startswith("wan") else 9, steps=4))
    cond = be.encode_conditioning(spec.prompt, "", 5.0, None, spec.canvas_size, spec.frames)
    x = torch.randn(be.latent_shape(spec.frames, 64, 64), generator=torch.Generator().manual_seed(0))
    at = rope.Place(4, 6, (16, 16), (8, 8), "canvas")
    local = be.predict_branch(x, 4, 2, cond, 0)
    assert not torch.equal(be.predict_branch(x, 4, 2, cond, 0, place=at), local)
    assert torch.equal(be.predict_branch(x, 4, 2, cond, 0), local)  # the wrapper forgets the call's positions


def test_canvas_positions_are_refused_where_the_transformer_takes_none(tiny_dir):
    from supergen import RenderSpec
    from supergen.errors import SpecError
    from supergen.executor import prepare

    with pytest.raises(SpecError, match="rope.*no rotary positions"):
        prepare(RenderSpec(prompt="x", model=tiny_dir("cogvideox-t2v"), width=128, height=128, frames=9,
                           rope="canvas"))
    with pytest.raises(SpecError, match="rope"):
        RenderSpec(prompt="x", rope="absolute")
    assert prepare(RenderSpec(prompt="x", model=tiny_dir("wan-t2v"), width=128, height=128, frames=5)).rope == "local"


def test_plain_canvas_positions_change_nothing_but_rounding():
    """RoPE is relative: a whole tile's positions shifted by its canvas offset (and continuous across the
    torus seam) give the attention scores of the origin's positions, so `canvas` renders what `local`
    renders up to float rounding; the scaled modes change the distances between tokens, and the render."""
    import supergen
    from supergen import RenderSpec
    from supergen.executor import prepare

    base = dict(prompt="a red striped circle moving left on a blue background", model="world", width=128,
                height=128, frames=5, steps=6, refine_steps=3, checkpoint_every=0)
    out = {m: supergen.render(prepare(RenderSpec(**base, rope=m))).latent for m in ["local", "canvas", "canvas-interp"]}
    assert (out["canvas"] - out["local"]).abs().max() < 1e-3
    assert (out["canvas-interp"] - out["local"]).abs().max() > 1e-1
