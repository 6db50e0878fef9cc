"""The plan of one distributed refinement step, as values: what runs where and which bytes cross workers.

A step has two halves, split by the one thing the driver must wait for (the region cache's skip
decisions, from each gathered window's observation):

* `plan_gather`: where each window of step i is assembled (cache locality over the previous step's
  owners) and which of the previous step's cores send it pieces;
* `plan_compute`: where each window is denoised (rebalanced over workers when skips leave some idle),
  which CFG branches run away from their window's worker, and which prediction strips cross to the
  worker that advances an overlapped core.

Both are pure functions of geometry, placement and counts (supergen.placement), so "where do bytes move
between workers" has one answer, the Dask driver (flows/refine.py) only submits what a plan says, and
the plan's properties are tested without a cluster: every core advanced by one worker, the bytes equal
the sum of the listed transfers, skipped windows never move, one worker moves nothing.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from .placement import cells_by_worker, initial_assignment, place_by_locality, rebalance, split_branches
from .tiling import Grid, Window, cores, intersections

Worker = Hashable


@dataclass(frozen=True)
class Piece:
    """Core `core` of the previous step sends its part of window `window` (crossing workers or not)."""

    core: int
    window: int
    crosses: bool


@dataclass(frozen=True)
class GatherPlan:
    step: int
    cores: tuple[Window, ...]  # this step's owned cores, row-major like the grid's windows
    workers: tuple[Worker, ...]  # where each window is gathered
    cells: tuple[dict, ...]  # per window: how many of its cells each worker held after the previous step
    pieces: tuple[Piece, ...]  # empty when the step reads the store (first step, after a checkpoint)
    moved_bytes: int  # cells that cross workers to reach their window, x bytes per cell


@dataclass(frozen=True)
class Branch:
    """CFG branch `branch` of window `window` runs on `worker` (not the window's denoise worker)."""

    window: int
    branch: int
    worker: Worker


@dataclass(frozen=True)
class Strip:
    """The part of window `window`'s prediction on core `core`: crosses from the window's denoise worker
    to the core's, `cells` cells."""

    window: int
    core: int
    cells: int


@dataclass(frozen=True)
class ComputePlan:
    workers: tuple[Worker, ...]  # where each window is denoised; core k advances where window k is
    split: tuple[int, ...]  # windows whose CFG branches run as separate tasks (some of them elsewhere)
    branches: tuple[Branch, ...]  # the branches of split windows that run away from the window's worker
    strips: tuple[Strip, ...]
    overlaps: tuple[tuple[int, ...], ...]  # per core: the windows whose predictions it merges, in order
    rebalanced_bytes: int  # windows denoised away from where they were gathered (their inputs travel)
    branch_bytes: int  # each away branch: the window's latent out (when not already there), a prediction back
    strip_bytes: int

    @property
    def moved_bytes(self) -> int:
        return self.rebalanced_bytes + self.branch_bytes + self.strip_bytes

    def branch_worker(self, window: int, branch: int) -> Worker:
        for b in self.branches:
            if (b.window, b.branch) == (window, branch):
                return b.worker
        return self.workers[window]


def plan_gather(step: int, grid: Grid, prev: tuple[Sequence[Window], Sequence[Worker]] | None,
                workers: Sequence[Worker], cell_bytes: int, from_store: bool) -> GatherPlan:
    """Where step `step`'s windows are gathered, given the previous step's (cores, workers) or None."""
    n, canvas = len(grid), grid.canvas
    if prev is None:
        cells = [{} for _ in range(n)]
        where = initial_assignment(n, workers)
    else:
        owned = list(zip(prev[0], prev[1]))
        cells = [cells_by_worker(win, owned, canvas) for win in grid.windows]
        where = place_by_locality(cells, workers)
    pieces, moved = [], 0
    if not from_store:
        p_cores, p_workers = prev
        for m, win in enumerate(grid.windows):
            for k, core in enumerate(p_cores):
                if intersections(core, win, canvas):
                    pieces.append(Piece(k, m, p_workers[k] != where[m]))
            moved += sum(v for w, v in cells[m].items() if w != where[m]) * cell_bytes
    return GatherPlan(step, tuple(cores(grid)), tuple(where), tuple(cells), tuple(pieces), moved)


def plan_compute(gather: GatherPlan, grid: Grid, computing: Sequence[bool], workers: Sequence[Worker],
                 balance: str, cache_on: bool, branches: int, cell_bytes: int, pred_cell_bytes: int) -> ComputePlan:
    """Where each gathered window is denoised and what crosses workers to advance every core."""
    canvas, g = grid.canvas, gather.workers
    c = rebalance(g, computing, gather.cells, workers) if (balance != "locality" and cache_on) else list(g)
    tile_cells = grid.tile[0] * grid.tile[1]
    rebalanced = sum(tile_cells * cell_bytes for a, b in zip(g, c) if a != b)
    split = split_branches(c, computing, workers, branches) if balance == "branches" else []
    away = {(m, b): w for m, b, w in split}
    moved_branches, branch_bytes = [], 0
    for m in sorted({m for m, _, _ in split}):
        for b in range(branches):
            w = away.get((m, b), c[m])
            if w != c[m]:
                moved_branches.append(Branch(m, b, w))
                branch_bytes += tile_cells * pred_cell_bytes * ((w != g[m]) + 1)
    strips, overlaps = [], []
    for k, core in enumerate(gather.cores):
        mine = []
        for m, win in enumerate(grid.windows):
            rects = intersections(win, core, canvas)
            if not rects:
                continue
            mine.append(m)
            if c[m] != c[k]:
                strips.append(Strip(m, k, sum(r.height * r.width for r in rects)))
        overlaps.append(tuple(mine))
    return ComputePlan(tuple(c), tuple(sorted({m for m, _, _ in split})), tuple(moved_branches), tuple(strips), tuple(overlaps), rebalanced, branch_bytes,
                       sum(s.cells for s in strips) * pred_cell_bytes)
