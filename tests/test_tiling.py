import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from supergen import tiling as T


@st.composite
def layouts(draw):
    """(canvas, tile, boundary, every, loop): any canvas at least one tile big, any tile."""
    th, tw = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    H, W = draw(st.integers(th, 80)), draw(st.integers(tw, 80))
    return (H, W), (th, tw), draw(st.sampled_from(("wrap", "clamp"))), \
        draw(st.integers(0, 4)), draw(st.integers(1, 20))


@settings(max_examples=300, deadline=None)
@given(layouts(), st.integers(0, 60))
def test_every_cell_covered_every_step_and_windows_native_size(layout, step):
    canvas, tile, boundary, every, loop = layout
    grid = T.step_grid(step, canvas, tile, boundary, every, loop)
    assert all((w.height, w.width) == tile for w in grid.windows)
    cov = T.coverage(grid)
    assert int(cov.min()) >= 1
    # exact partitions stay exact (the paper's grid): every cell exactly once, no blending
    if boundary == "wrap" and canvas[0] % tile[0] == 0 and canvas[1] % tile[1] == 0:
        assert int(cov.max()) == 1
        assert bool((T.tile_weight(grid) == 1).all())
    # clamp windows never leave the canvas
    if boundary == "clamp":
        assert all(w.top + w.height <= canvas[0] and w.left + w.width <= canvas[1] for w in grid.windows)


@settings(max_examples=200, deadline=None)
@given(layouts(), st.integers(0, 60))
def test_offsets_periodic(layout, step):
    canvas, tile, boundary, every, loop = layout
    period = max(1, every) * loop
    assert T.step_offset(step, canvas, tile, every, loop) == T.step_offset(step + period, canvas, tile, every, loop)
    assert T.step_grid(step, canvas, tile, boundary, every, loop) == \
        T.step_grid(step + period, canvas, tile, boundary, every, loop)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.data())
def test_paste_crop_roundtrip(H, W, data):
    h, w = data.draw(st.integers(1, H)), data.draw(st.integers(1, W))
    win = T.Window(data.draw(st.integers(0, H - 1)), data.draw(st.integers(0, W - 1)), h, w)
    x = torch.randn(2, 3, H, W)
    tile = T.crop(x, win)
    assert tile.shape == (2, 3, h, w)
    y = torch.zeros_like(x)
    T.paste(y, win, tile)
    assert torch.equal(T.crop(y, win), tile)  # crop(paste(t)) == t
    T.paste(x, win, T.crop(x, win))
    assert torch.equal(x, x.clone())  # paste(crop(x)) == x, in place
    z = x.clone()
    T.paste(z, win, T.crop(x, win))
    assert torch.equal(z, x)


def test_crop_wraps_around_the_torus():
    x = torch.arange(16.0).view(4, 4)
    t = T.crop(x, T.Window(3, 3, 2, 2))
    assert t.tolist() == [[15.0, 12.0], [3.0, 0.0]]


def test_paper_grid_and_shift():
    # 4K CogVideoX: 270x480 latent, 90x160 tiles -> 3x3, shift (5, 10) per step, first step already shifted
    g0 = T.step_grid(0, (270, 480), (90, 160), "wrap", 1, 16)
    assert len(g0) == 9 and g0.offset == (5, 10)
    assert g0.rows == (5, 95, 185) and g0.cols == (10, 170, 330)
    assert T.step_grid(15, (270, 480), (90, 160), "wrap", 1, 16).offset == (0, 0)
    # every 3 steps: same offset within a block
    assert {T.step_offset(i, (270, 480), (90, 160), 3, 16) for i in range(3)} == {(5, 10)}
    assert T.step_offset(3, (270, 480), (90, 160), 3, 16) == (10, 20)
    # no shifting
    assert T.step_offset(7, (270, 480), (90, 160), 0, 16) == (0, 0)


def test_uneven_canvas_spreads_overlap_evenly():
    # 1080p from a 480p Wan: 135x240 latent, 60x104 tiles -> 3x3 tiles with overlaps 22-23 rows, 36 cols
    g = T.make_grid((135, 240), (60, 104), "wrap")
    assert g.rows == (0, 45, 90) and g.cols == (0, 80, 160)
    assert T.axis_overlap(g.rows, 60, 135, "wrap") == 15 and T.axis_overlap(g.cols, 104, 240, "wrap") == 24


@settings(max_examples=100, deadline=None)
@given(layouts(), st.integers(0, 40))
def test_merge_of_a_per_cell_field_returns_that_field(layout, step):
    """Blending identical per-cell predictions must return them (exactly on exact grids)."""
    canvas, tile, boundary, every, loop = layout
    grid = T.step_grid(step, canvas, tile, boundary, every, loop)
    assume(len(grid) <= 256)  # a 1x1 tile on an 80x80 canvas is 6400 windows: seconds each, nothing new
    field = torch.randn(1, 2, 3, *canvas)
    merged = T.merge(grid, [T.crop(field, w) for w in grid.windows], field)
    if bool((T.tile_weight(grid) == 1).all()):
        assert torch.equal(merged, field)
    else:
        torch.testing.assert_close(merged, field, rtol=1e-6, atol=1e-6)


def test_ramp_is_positive_and_symmetric():
    for n, ov in [(8, 0), (8, 3), (8, 7), (5, 9)]:
        r = T.ramp(n, ov)
        assert bool((r > 0).all()) and torch.equal(r, r.flip(0))
        assert math.isclose(float(r.max()), 1.0) or ov >= n // 2


def test_axis_starts_rejects_tiles_larger_than_canvas():
    with pytest.raises(ValueError):
        T.axis_starts(10, 11, 0, "wrap")


@settings(max_examples=300, deadline=None)
@given(layouts(), st.integers(0, 60))
def test_cores_partition_the_canvas_inside_their_windows(layout, step):
    canvas, tile, boundary, every, loop = layout
    grid = T.step_grid(step, canvas, tile, boundary, every, loop)
    cnt = torch.zeros(canvas, dtype=torch.int32)
    for win, core in zip(grid.windows, T.cores(grid)):
        T.accumulate(cnt, core, torch.ones(core.height, core.width, dtype=torch.int32))
        # the core's cells are cells of the window
        inside = torch.zeros(canvas, dtype=torch.bool)
        T.paste(inside, win, torch.ones(tile, dtype=torch.bool))
        assert bool(T.crop(inside, core).all())
    assert bool((cnt == 1).all())


@st.composite
def small_layouts(draw):
    """Layouts of at most ~50 windows: the pieces check is quadratic in the window count."""
    th, tw = draw(st.integers(3, 16)), draw(st.integers(3, 16))
    H, W = draw(st.integers(th, 6 * th)), draw(st.integers(tw, 6 * tw))
    return (H, W), (th, tw), draw(st.sampled_from(("wrap", "clamp"))), draw(st.integers(0, 4)), \
        draw(st.integers(1, 20))


@settings(max_examples=150, deadline=None)
@given(small_layouts(), st.integers(0, 30))
def test_pieces_from_cores_rebuild_every_next_window(layout, step):
    """What moves between steps: for each next-step window, the pieces it shares with this step's cores
    tile it exactly, and cutting them from the cores and pasting them gives the canvas crop."""
    canvas, tile, boundary, every, loop = layout
    g0 = T.step_grid(step, canvas, tile, boundary, every, loop)
    g1 = T.step_grid(step + 1, canvas, tile, boundary, every, loop)
    x = torch.randn(2, *canvas)
    held = [(core, T.crop(x, core)) for core in T.cores(g0)]  # what each owner holds
    for win in g1.windows:
        out = torch.full((2, *tile), float("nan"))
        for core, data in held:
            for rect in T.intersections(core, win, canvas):
                ys, xs = T.local(rect, core, canvas)
                yd, xd = T.local(rect, win, canvas)
                assert torch.isnan(out[:, yd, xd]).all()  # no cell arrives twice
                out[:, yd, xd] = data[:, ys, xs]
        assert torch.equal(out, T.crop(x, win))
