"""diffusers' tiled VAE (Wan, CogVideoX) as data, so its tiles can run on several workers.

diffusers decodes (or encodes) overlapping tiles one by one, then walks them in row order blending each
tile's top rows with the tile above and its left columns with the tile to its left, *in place*, and keeps
each tile's top-left `keep` part: its block of the output. Because the blends are in place, a block
depends on more than its own tile, but not on much more: on its tile, the bottom rows of the tile above
(themselves blended with the corner tile), the right columns of the tile to the left (blended with the
corner too) and that corner. Given those three strips, `assemble` computes a block exactly as the whole
loop does, with the VAE's own `blend_v`/`blend_h`, so a block can be made on any worker and the output
is the single-process tiled VAE's bit for bit (tests/test_vaetiles.py).

This holds while every tile that is blended into another (any tile but the last of its row or column)
spans at least two blend extents, so that its own blends never reach the strips it hands on: diffusers'
tiles are at least a stride long and supergen's stride is at least three quarters of a tile (`vae_tiling`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Axis:
    """One axis of a tiling: tiles start every `stride` input units and span `tile` (the last ones
    clipped to `size`); in output units each blends `blend` with its predecessor and keeps `keep`."""

    size: int  # input extent
    tile: int
    stride: int
    scale: float  # output units per input unit (8 when decoding, 1/8 when encoding)
    blend: int  # output units
    keep: int  # output units

    @property
    def starts(self) -> range:
        return range(0, self.size, self.stride)

    @property
    def out_size(self) -> int:
        return round(self.size * self.scale)

    def span(self, k: int) -> tuple[int, int]:
        """Input units [start, stop) of tile k."""
        start = k * self.stride
        return start, min(start + self.tile, self.size)

    def block(self, k: int) -> tuple[int, int]:
        """Output units [start, stop) of tile k's block: its kept part, within the output."""
        start, stop = self.span(k)
        out = k * self.keep
        return out, min(out + self.keep, out + round((stop - start) * self.scale), self.out_size)


@dataclass(frozen=True)
class Tiling:
    rows: Axis
    cols: Axis

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows.starts), len(self.cols.starts)

    def tiles(self) -> list[tuple[int, int]]:
        return [(r, c) for r in range(self.shape[0]) for c in range(self.shape[1])]

    def window(self, r: int, c: int) -> tuple[slice, slice]:
        """The input (y, x) slices tile (r, c) reads."""
        return slice(*self.rows.span(r)), slice(*self.cols.span(c))

    def block(self, r: int, c: int) -> tuple[slice, slice]:
        """The output (y, x) slices block (r, c) fills."""
        return slice(*self.rows.block(r)), slice(*self.cols.block(c))


def strips(tile: torch.Tensor, tiling: Tiling) -> dict[str, torch.Tensor]:
    """What a tile hands its neighbours: its bottom rows (to the tile below), its right columns (to the
    tile on its right) and their corner (to the tile below right)."""
    bh, bw = tiling.rows.blend, tiling.cols.blend
    return {"bottom": tile[..., -bh:, :].clone(), "right": tile[..., :, -bw:].clone(),
            "corner": tile[..., -bh:, -bw:].clone()}


def assemble(vae, tiling: Tiling, tile: torch.Tensor, up: torch.Tensor | None = None,
             left: torch.Tensor | None = None, corner: torch.Tensor | None = None) -> torch.Tensor:
    """Block of a raw tile, as diffusers' blend loop leaves it: `up` the bottom strip of the tile above,
    `left` the right strip of the tile to the left, `corner` the corner of the tile above left (each
    None where there is no such tile). The blends run in the loop's order on its neighbourhood."""
    bh, bw = tiling.rows.blend, tiling.cols.blend
    tile = tile.clone()
    if up is not None:
        if corner is not None:  # the tile above had its left columns blended with the corner first
            up = vae.blend_h(corner, up.clone(), bw)
        tile = vae.blend_v(up, tile, bh)
    if left is not None:
        if corner is not None:  # the tile to the left had its top rows blended with the corner first
            left = vae.blend_v(corner, left.clone(), bh)
        tile = vae.blend_h(left, tile, bw)
    return tile[..., : tiling.rows.keep, : tiling.cols.keep]


def run_all(vae, tiling: Tiling, raw: dict[tuple[int, int], torch.Tensor]) -> dict[tuple[int, int], torch.Tensor]:
    """Every block from every raw tile, through the strips a worker would receive: the one-process form
    of what the cluster does."""
    cut = {k: strips(t, tiling) for k, t in raw.items()}
    out = {}
    for r, c in tiling.tiles():
        up = cut[(r - 1, c)]["bottom"] if r else None
        left = cut[(r, c - 1)]["right"] if c else None
        corner = cut[(r - 1, c - 1)]["corner"] if r and c else None
        out[(r, c)] = assemble(vae, tiling, raw[(r, c)], up, left, corner)
    return out


def paste(tiling: Tiling, blocks: dict[tuple[int, int], torch.Tensor], like: torch.Tensor,
          shape: tuple[int, ...]) -> torch.Tensor:
    """The output of shape `shape` (..., rows.out_size, cols.out_size) from its blocks."""
    out = like.new_empty(shape)
    for (r, c), b in blocks.items():
        ys, xs = tiling.block(r, c)
        out[..., ys, xs] = b[..., : ys.stop - ys.start, : xs.stop - xs.start]
    return out


@torch.no_grad()
def run(backend, x: torch.Tensor, tiling: Tiling, encode: bool = False, frames: int | None = None) -> torch.Tensor:
    """The backend's tiled `decode` (or `encode`) of `x`, tile by tile and block by block in this process:
    what the workers of a cluster compute between them."""
    raw = {(r, c): backend.vae_tile(x[(..., *tiling.window(r, c))], encode, frames) for r, c in tiling.tiles()}
    blocks = run_all(backend.pipe.vae, tiling, raw)
    first = raw[(0, 0)]
    out = paste(tiling, blocks, first, (*first.shape[:-2], tiling.rows.out_size, tiling.cols.out_size))
    return backend.vae_finish(out, encode, frames)


# -- spreading the tiles over workers ----------------------------------------------------------------

def bands(tiling: Tiling, n: int) -> list[list[tuple[int, int]]]:
    """The tiles in `n` contiguous bands of near-equal work (columns of tiles for a wide grid, rows for a
    tall one), so only the tiles along a band's edge hand strips to another worker. A line's work is its
    tiles' extent across it (a clipped last column is narrower): each line goes to the band whose share
    of the total holds its middle. Fewer bands when the grid has fewer columns (rows)."""
    rows, cols = tiling.shape
    across = cols >= rows
    axis = tiling.cols if across else tiling.rows
    work = [b - a for a, b in (axis.span(k) for k in range(cols if across else rows))]
    n = max(1, min(n, len(work)))
    total, acc, band = sum(work), 0, []
    for w in work:
        band.append(min(n - 1, int((acc + w / 2) * n / total)))
        acc += w
    return [[(r, c) for r in range(rows) for c in range(cols) if band[c if across else r] == k] for k in range(n)]


@dataclass(frozen=True)
class Piece:
    """What one worker writes into one chunk of an output array: `box` (y0, y1, x0, x1) in the array's
    coordinates, made of `blocks`; `after`: the index of the piece of the same chunk written before it
    (zarr rewrites a chunk as a whole, so two writers of one chunk go one after the other), or None."""

    worker: int
    box: tuple[int, int, int, int]
    blocks: tuple[tuple[int, int], ...]
    after: int | None


def pieces(tiling: Tiling, groups: list[list[tuple[int, int]]], chunk: tuple[int, int],
           offset: tuple[int, int] = (0, 0), size: tuple[int, int] | None = None) -> list[Piece]:
    """The writes that put every block of `tiling` into an array chunked `chunk` (y, x): each worker's
    blocks (`groups`) cut by the chunk grid, in the array's coordinates, which are the output's shifted by
    -`offset` and clipped to `size` (a centre crop). Pieces of one chunk are ordered by worker."""
    H, W = size or (tiling.rows.out_size, tiling.cols.out_size)
    owner = {t: w for w, ts in enumerate(groups) for t in ts}
    by_chunk: dict[tuple[int, int], dict[int, list]] = {}
    for (r, c), w in sorted(owner.items()):
        ys, xs = tiling.block(r, c)
        y0, y1 = max(0, ys.start - offset[0]), min(H, ys.stop - offset[0])
        x0, x1 = max(0, xs.start - offset[1]), min(W, xs.stop - offset[1])
        for cy in range(y0 // chunk[0], -(-y1 // chunk[0])) if y1 > y0 else ():
            for cx in range(x0 // chunk[1], -(-x1 // chunk[1])) if x1 > x0 else ():
                box = (max(y0, cy * chunk[0]), min(y1, (cy + 1) * chunk[0]),
                       max(x0, cx * chunk[1]), min(x1, (cx + 1) * chunk[1]))
                by_chunk.setdefault((cy, cx), {}).setdefault(w, []).append(((r, c), box))
    out: list[Piece] = []
    for key in sorted(by_chunk):
        prev = None
        for w, parts in sorted(by_chunk[key].items()):
            boxes = [b for _, b in parts]
            box = (min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes),
                   max(b[3] for b in boxes))
            out.append(Piece(w, box, tuple(t for t, _ in parts), prev))
            prev = len(out) - 1
    return out
