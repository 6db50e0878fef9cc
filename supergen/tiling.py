"""Tile geometry: the grid, its per-step shift, crop/paste of windows and the weighted merge.

Everything here is a pure function of integers (or of tensors for crop/paste/merge), so the in-process
executor and cluster workers compute the same windows from the same spec without talking to each other.

The rule for canvases that are not a whole number of tiles, per axis of size `S` and tile `T`:

* `n = ceil(S / T)` tiles, all of size `T` (tiles never shrink: the model only sees its native size).
* `wrap` (the paper's torus): tile k starts at `floor(k * S / n) + offset (mod S)`. Spacing is `S / n <= T`,
  so the windows cover the circle; the total overlap `n*T - S` is spread evenly over the n seams. With
  `S = n*T` this is exactly the paper's non-overlapping grid.
* `clamp`: windows stay inside the canvas. Base starts `round(k * (S-T)/(n-1))` shifted by `-offset` and
  clamped to `[0, S-T]`, continued until the last window touches the end. Consecutive starts differ by
  at most `T`, so every cell is covered; the count may grow by one while shifted.
* Merge: predictions are averaged with per-axis weights that ramp linearly over the widest overlap of
  that axis (weight 1 where an axis has no overlap, so an exact grid merges as a plain mosaic, bit for bit).
* Shift: before every `every`-th refinement step the grid moves by one quantum `max(1, T // loop)` per
  axis (0 on an axis with a single tile that spans it). Offsets cycle with period `loop` shifts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True, slots=True)
class Window:
    """A tile window on the latent canvas. `top`/`left` are in `[0, H)` x `[0, W)`; with `wrap` the window
    may run past the bottom/right edge and continue from the top/left."""

    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True, slots=True)
class Grid:
    """The tile layout of one refinement step."""

    canvas: tuple[int, int]  # (H, W) latent cells
    tile: tuple[int, int]
    boundary: str
    offset: tuple[int, int]
    rows: tuple[int, ...]  # window starts along H
    cols: tuple[int, ...]  # window starts along W

    @property
    def windows(self) -> list[Window]:
        """Row-major windows; index = row * len(cols) + col."""
        th, tw = self.tile
        return [Window(r, c, th, tw) for r in self.rows for c in self.cols]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)


def tiles_per_axis(size: int, tile: int) -> int:
    return math.ceil(size / tile)


def shift_quantum(size: int, tile: int, loop: int) -> int:
    """Latent cells the grid moves per shift on one axis (the paper: tile // loop_step)."""
    if tile >= size:
        return 0  # one tile spans the axis: moving it would only roll the content
    return max(1, tile // loop)


def shift_count(step: int, every: int) -> int:
    """How many shifts have happened by refinement step `step` (shifts come *before* a step's compute,
    so with every=1 the first step already runs shifted, as in the paper's shift_timesteps=0..k-1)."""
    if every <= 0:
        return 0
    return step // every + 1


def step_offset(step: int, canvas: tuple[int, int], tile: tuple[int, int], every: int, loop: int) -> tuple[int, int]:
    """Grid offset (dy, dx) at refinement step `step`. Periodic in `step` with period `every * loop`."""
    c = shift_count(step, every) % loop
    return tuple(c * shift_quantum(s, t, loop) for s, t in zip(canvas, tile))


@lru_cache(maxsize=4096)
def axis_starts(size: int, tile: int, offset: int, boundary: str) -> tuple[int, ...]:
    """Window starts along one axis; see the module docstring for the rule."""
    if tile > size or tile < 1:
        raise ValueError(f"tile {tile} must be in [1, {size}]")
    n = tiles_per_axis(size, tile)
    if boundary == "wrap":
        return tuple((k * size // n + offset) % size for k in range(n))
    if boundary != "clamp":
        raise ValueError(f"unknown boundary {boundary!r}")
    if n == 1:
        return (0,)
    spacing = (size - tile) / (n - 1)
    starts: list[int] = []
    k = 0
    while True:
        s = min(max(round(k * spacing) - offset, 0), size - tile)
        if not starts or s != starts[-1]:
            starts.append(s)
        if s >= size - tile:
            return tuple(starts)
        k += 1


def make_grid(canvas: tuple[int, int], tile: tuple[int, int], boundary: str, offset: tuple[int, int] = (0, 0)) -> Grid:
    rows = axis_starts(canvas[0], tile[0], offset[0], boundary)
    cols = axis_starts(canvas[1], tile[1], offset[1], boundary)
    return Grid(tuple(canvas), tuple(tile), boundary, tuple(offset), rows, cols)


def step_grid(step: int, canvas, tile, boundary: str, every: int, loop: int) -> Grid:
    """The grid used at refinement step `step`."""
    return make_grid(canvas, tile, boundary, step_offset(step, canvas, tile, every, loop))


def axis_cores(starts: tuple[int, ...], size: int, boundary: str) -> list[tuple[int, int]]:
    """(start, length) of the cells each window *owns* on one axis: from its start to the next window's
    start. Owned ranges partition the axis and lie inside their windows (consecutive starts differ by at
    most the tile), so state written per core has exactly one writer."""
    order = sorted(range(len(starts)), key=lambda k: starts[k])
    out: list[tuple[int, int]] = [(0, 0)] * len(starts)
    for j, k in enumerate(order):
        if j + 1 < len(order):
            nxt = starts[order[j + 1]]
        else:
            nxt = starts[order[0]] + size if boundary == "wrap" else size
        begin = starts[k] if (boundary == "wrap" or j > 0) else 0
        out[k] = (begin, nxt - begin)
    return out


def cores(grid: Grid) -> list[Window]:
    """The owned part of every window, row-major like `grid.windows`; together they partition the canvas."""
    rows = axis_cores(grid.rows, grid.canvas[0], grid.boundary)
    cols = axis_cores(grid.cols, grid.canvas[1], grid.boundary)
    return [Window(r, c, rh, cw) for r, rh in rows for c, cw in cols]


def _axis_pieces(start: int, length: int, size: int) -> list[tuple[int, int]]:
    return [(c.start, c.stop - c.start) for c, _ in _segments(start % size, length, size)]


def intersections(a: Window, b: Window, canvas: tuple[int, int]) -> list[Window]:
    """The cells two (possibly wrapping) windows share, as non-wrapping rectangles in canvas coordinates."""
    out = []
    for ay, ah in _axis_pieces(a.top, a.height, canvas[0]):
        for by, bh in _axis_pieces(b.top, b.height, canvas[0]):
            y0, y1 = max(ay, by), min(ay + ah, by + bh)
            if y0 >= y1:
                continue
            for ax, aw in _axis_pieces(a.left, a.width, canvas[1]):
                for bx, bw in _axis_pieces(b.left, b.width, canvas[1]):
                    x0, x1 = max(ax, bx), min(ax + aw, bx + bw)
                    if x0 < x1:
                        out.append(Window(y0, x0, y1 - y0, x1 - x0))
    return out


def local(rect: Window, win: Window, canvas: tuple[int, int]) -> tuple[slice, slice]:
    """Where a canvas rectangle inside `win` sits in a (..., win.height, win.width) tile tensor."""
    dy, dx = (rect.top - win.top) % canvas[0], (rect.left - win.left) % canvas[1]
    return slice(dy, dy + rect.height), slice(dx, dx + rect.width)


def full_window(canvas: tuple[int, int]) -> Window:
    return Window(0, 0, canvas[0], canvas[1])


# ---------------------------------------------------------------------------------------------------
# Crop and paste on the (possibly wrapping) canvas


def _segments(start: int, length: int, size: int) -> list[tuple[slice, slice]]:
    """(canvas slice, tile slice) pairs covering [start, start+length) modulo size: one or two pieces."""
    first = min(length, size - start)
    segs = [(slice(start, start + first), slice(0, first))]
    if first < length:
        segs.append((slice(0, length - first), slice(first, length)))
    return segs


def _pieces(win: Window, canvas: tuple[int, int]):
    for cy, ty in _segments(win.top, win.height, canvas[0]):
        for cx, tx in _segments(win.left, win.width, canvas[1]):
            yield (cy, cx), (ty, tx)


def crop(x: torch.Tensor, win: Window) -> torch.Tensor:
    """The window of `x` (..., H, W) as a contiguous (..., h, w) tensor; wraps at the edges."""
    H, W = x.shape[-2:]
    if win.top + win.height <= H and win.left + win.width <= W:
        return x[..., win.top : win.top + win.height, win.left : win.left + win.width].contiguous()
    out = x.new_empty(*x.shape[:-2], win.height, win.width)
    for (cy, cx), (ty, tx) in _pieces(win, (H, W)):
        out[..., ty, tx] = x[..., cy, cx]
    return out


def paste(x: torch.Tensor, win: Window, tile: torch.Tensor) -> None:
    """Write `tile` into the window of `x` in place (the inverse of `crop`)."""
    for (cy, cx), (ty, tx) in _pieces(win, x.shape[-2:]):
        x[..., cy, cx] = tile[..., ty, tx]


def accumulate(x: torch.Tensor, win: Window, tile: torch.Tensor) -> None:
    """Add `tile` into the window of `x` in place."""
    for (cy, cx), (ty, tx) in _pieces(win, x.shape[-2:]):
        x[..., cy, cx] += tile[..., ty, tx]


# ---------------------------------------------------------------------------------------------------
# Merge weights


def axis_overlap(starts: tuple[int, ...], tile: int, size: int, boundary: str) -> int:
    """The widest overlap between neighbouring windows on one axis (0 for an exact partition)."""
    if len(starts) == 1:
        return 0
    ordered = sorted(starts)
    gaps = [b - a for a, b in zip(ordered, ordered[1:])]
    if boundary == "wrap":
        gaps.append(ordered[0] + size - ordered[-1])
    return max(0, max(tile - g for g in gaps))


def ramp(length: int, overlap: int) -> torch.Tensor:
    """1-D weights: 1 inside, rising linearly over `overlap` cells at both ends, always > 0."""
    if overlap <= 0:
        return torch.ones(length)
    i = torch.arange(length, dtype=torch.float64)
    w = torch.minimum((i + 1) / (overlap + 1), (length - i) / (overlap + 1)).clamp(max=1.0)
    return w.float()


def tile_weight(grid: Grid) -> torch.Tensor:
    """(h, w) merge weight shared by every window of `grid`."""
    oy = axis_overlap(grid.rows, grid.tile[0], grid.canvas[0], grid.boundary)
    ox = axis_overlap(grid.cols, grid.tile[1], grid.canvas[1], grid.boundary)
    return ramp(grid.tile[0], oy)[:, None] * ramp(grid.tile[1], ox)[None, :]


def merge(grid: Grid, predictions: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Weighted average of per-window predictions into one canvas prediction shaped like `like`
    (`merge_region` over the whole canvas)."""
    full, canvas = full_window(grid.canvas), grid.canvas
    parts = [(n, rect, pred[(..., *local(rect, win, canvas))])
             for n, (win, pred) in enumerate(zip(grid.windows, predictions))
             for rect in intersections(win, full, canvas)]
    return merge_region(grid, full, parts, like.shape[:-2], like.device)


def merge_region(grid: Grid, region: Window, parts, lead: tuple[int, ...], device=None) -> torch.Tensor:
    """The merged prediction over `region`, a canvas rectangle that does not wrap, from `parts`: (window
    index, canvas rectangle inside both the window and the region, that window's prediction there), any
    order. The one merge of every executor: in process over the whole canvas, on a cluster per core.

    Windows are added in grid order, so a cell's value does not depend on who sent which part. Where the
    grid is an exact partition every weight is 1 and the result is the mosaic of predictions, bit for bit;
    elsewhere each cell is sum(w_i * p_i) / sum(w_i) over the windows that cover it.
    """
    w = tile_weight(grid).to(device)
    exact = bool((w == 1).all())
    acc = torch.zeros(tuple(lead) + (region.height, region.width), dtype=torch.float32, device=device)
    wsum = None if exact else torch.zeros(region.height, region.width, dtype=torch.float32, device=device)
    for n, rect, part in sorted(parts, key=lambda p: p[0]):
        ys, xs = local(rect, grid.windows[n], grid.canvas)
        yd, xd = local(rect, region, grid.canvas)
        part = part.to(device).float()
        if exact:
            acc[..., yd, xd] = part
        else:
            acc[..., yd, xd] += part * w[ys, xs]
            wsum[yd, xd] += w[ys, xs]
    return acc if exact else acc / wsum


def coverage(grid: Grid) -> torch.Tensor:
    """(H, W) count of windows covering each latent cell; used by tests and `validate` checks."""
    cnt = torch.zeros(grid.canvas, dtype=torch.int32)
    one = torch.ones(grid.tile, dtype=torch.int32)
    for win in grid.windows:
        accumulate(cnt, win, one)
    return cnt
