"""The tiled VAE as tiles and blocks (`supergen.vaetiles`): every block made from its tile and three strips
of its neighbours is the single-process tiled VAE's output, bit for bit, for Wan and CogVideoX."""

import pytest
import torch

from supergen import vaetiles
from supergen.backends import load_backend


@pytest.mark.parametrize("kind,frames,vae_dtype", [("wan-t2v", 5, "float32"), ("cogvideox15-t2v", 9, "float32"),
                                                    ("cogvideox-t2v", 9, "float32"), ("wan-t2v", 5, "bfloat16"),
                                                    ("cogvideox15-t2v", 9, "bfloat16")])
def test_blocks_are_the_tiled_vae_bit_for_bit(kind, frames, vae_dtype, tiny_dir):
    be = load_backend(tiny_dir(kind), vae_dtype=vae_dtype)
    g = torch.Generator().manual_seed(0)
    s = be.info.vae_spatial
    # a 3 x 3 grid of 64-px tiles (stride 48) over a 136 x 120 frame, the last row and column clipped
    video = torch.rand(1, 3, frames, 136, 120, generator=g) * 2 - 1
    tiling = be.vae_tiling((136, 120), 64, encode=True)
    assert tiling.shape == (3, 3)
    z = vaetiles.run(be, video, tiling, encode=True)
    assert z.dtype == torch.float32 and torch.equal(z, be.encode(video, vae_tile=64))

    z = torch.randn(z.shape, generator=g)
    tiling = be.vae_tiling(tuple(z.shape[-2:]), 64)
    assert tiling.shape == (3, 3) and (tiling.rows.out_size, tiling.cols.out_size) == (z.shape[-2] * s, z.shape[-1] * s)
    out = vaetiles.run(be, z, tiling, frames=frames)
    assert out.dtype == torch.float32 and torch.equal(out, be.decode(z, frames=frames, vae_tile=64))


@pytest.mark.parametrize("kind,frames", [("wan-t2v", 5), ("cogvideox15-t2v", 9)])
def test_a_bfloat16_vae_runs_and_stays_near_the_float32_one(kind, frames, tiny_dir):
    """`vae_dtype` reaches the VAE: its weights are cast, its outputs come back float32, and they differ
    from float32's by bfloat16's rounding on average (random weights amplify it at a few pixels)."""
    full, half = load_backend(tiny_dir(kind)), load_backend(tiny_dir(kind), vae_dtype="bfloat16")
    assert next(half.pipe.vae.parameters()).dtype == torch.bfloat16
    video = torch.rand(1, 3, frames, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z32, z16 = full.encode(video), half.encode(video)
    assert z16.dtype == torch.float32 and not torch.equal(z16, z32)
    assert (z16 - z32).abs().mean() <= 0.03 * z32.abs().mean()
    v32, v16 = full.decode(z32, frames=frames), half.decode(z32, frames=frames)
    assert v16.dtype == torch.float32 and 0 < (v16 - v32).abs().mean() <= 0.01  # of the [-1, 1] range


def test_an_untiled_size_has_no_tiling(tiny_dir):
    be = load_backend(tiny_dir("wan-t2v"))
    assert be.vae_tiling((8, 8), 64) is None and be.vae_tiling((64, 64), None, encode=True) is None


def _tiling(h, w, tile=8, stride=6, scale=8):
    return vaetiles.Tiling(vaetiles.Axis(h, tile, stride, scale, (tile - stride) * scale, stride * scale),
                           vaetiles.Axis(w, tile, stride, scale, (tile - stride) * scale, stride * scale))


@pytest.mark.parametrize("h,w,n", [(14, 16, 1), (14, 16, 2), (14, 16, 3), (30, 13, 2), (40, 70, 5), (16, 50, 2)])
def test_bands_split_the_tiles_contiguously_and_evenly(h, w, n):
    t = _tiling(h, w)
    groups = [g for g in vaetiles.bands(t, n) if g]
    assert sorted(x for g in groups for x in g) == t.tiles()
    across = t.shape[1] >= t.shape[0]
    lines = [{x[1] if across else x[0] for x in g} for g in groups]
    assert all(max(a) + 1 == min(b) for a, b in zip(lines, lines[1:]))  # contiguous, in order
    assert len(groups) == min(n, t.shape[1] if across else t.shape[0])
    # even by work (a tile's window area), within one line's work of each other
    work = [sum((ys.stop - ys.start) * (xs.stop - xs.start) for ys, xs in (t.window(*x) for x in g)) for g in groups]
    axis = t.cols if across else t.rows
    line = max(b - a for a, b in (axis.span(k) for k in range(len(axis.starts))))
    other = (t.rows if across else t.cols).span
    assert max(work) - min(work) <= line * sum(b - a for a, b in (other(k) for k in range(t.shape[0 if across else 1])))


def test_a_narrow_last_column_does_not_unbalance_the_bands():
    """7 columns of which the last is half as wide: 3 and 4 columns (6 x 512 + 256 px), not 4 and 3."""
    t = _tiling(12, 40)  # 8-cell tiles every 6 cells: 7 columns, the last 4 cells wide
    assert t.shape[1] == 7 and (lambda a: a[1] - a[0])(t.cols.span(6)) < 8
    assert [sorted({c for _, c in g}) for g in vaetiles.bands(t, 2)] == [[0, 1, 2], [3, 4, 5, 6]]


@pytest.mark.parametrize("h,w,n,chunk,offset,size", [
    (14, 16, 2, (64, 64), (0, 0), None), (14, 16, 3, (40, 56), (5, 3), (100, 120)),
    (30, 13, 2, (96, 33), (8, 1), (230, 100)), (40, 70, 5, (128, 200), (0, 0), None)])
def test_pieces_write_every_output_pixel_once_and_order_the_writers_of_a_chunk(h, w, n, chunk, offset, size):
    t = _tiling(h, w)
    groups = vaetiles.bands(t, n)
    ps = vaetiles.pieces(t, groups, chunk, offset, size)
    H, W = size or (t.rows.out_size, t.cols.out_size)
    hits = torch.zeros(H, W, dtype=torch.int32)
    for p in ps:
        y0, y1, x0, x1 = p.box
        hits[y0:y1, x0:x1] += 1
        assert y0 // chunk[0] == (y1 - 1) // chunk[0] and x0 // chunk[1] == (x1 - 1) // chunk[1]  # one chunk
        owned = {x for g in [groups[p.worker]] for x in g}
        assert set(p.blocks) <= owned
        if p.after is not None:  # the previous writer of the same chunk, another worker
            q = ps[p.after]
            assert (q.box[0] // chunk[0], q.box[2] // chunk[1]) == (y0 // chunk[0], x0 // chunk[1])
            assert q.worker < p.worker
    assert torch.equal(hits, torch.ones_like(hits))
    if n == 1:
        assert all(p.after is None for p in ps)
