"""Tile placement: which worker runs each tile's step. Pure functions of geometry and counts.

Two rules, applied in order:

1. **Cache locality** (`place_by_locality`): a window runs where most of its cells already are, so its
   latent and cache state stay put and only the strips that change owner under the shift move. Ties go
   to the less loaded worker, then to worker order.
2. **Cache-guided rebalancing** (`rebalance`): skipped tiles cost almost nothing, so balance only the
   tiles that compute: while one worker has two more computing tiles than another, move the computing
   tile whose window has most cells on the lighter worker. It gives up some locality (a moved window
   carries its inputs along) to cut the step's makespan.
3. **Branch splitting** (`split_branches`): whole tiles cannot balance 9 tiles on 4 workers (3 on the
   busiest: 75% efficiency). A CFG tile-step is two model calls of equal cost, so the last imbalance is
   evened out in half-tiles: a heavy worker's tile sends one branch to the lightest worker (which receives
   the window's latent and returns one prediction, both tile-sized). 9 tiles on 4 workers then take
   2.5 tile-times instead of 3 (90%).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from .tiling import Window, intersections

Worker = Hashable


def initial_assignment(n_tiles: int, workers: Sequence[Worker]) -> list[Worker]:
    """Contiguous, balanced blocks of row-major tiles (the paper's static assignment)."""
    return [workers[k * len(workers) // n_tiles] for k in range(n_tiles)]


def cells_by_worker(window: Window, owned: Sequence[tuple[Window, Worker]], canvas) -> dict[Worker, int]:
    """How many of `window`'s cells each worker holds, given the (core, worker) ownership of the step."""
    out: dict[Worker, int] = {}
    for core, worker in owned:
        n = sum(r.height * r.width for r in intersections(core, window, canvas))
        if n:
            out[worker] = out.get(worker, 0) + n
    return out


def place_by_locality(cells: Sequence[dict[Worker, int]], workers: Sequence[Worker],
                      capacity: int | None = None) -> list[Worker]:
    """For each tile (given its cells per worker), the worker holding most of them, at most `capacity`
    tiles per worker (default: ceil(tiles / workers), so locality never piles every tile on one worker)."""
    n = len(cells)
    capacity = capacity or -(-n // len(workers))
    load = {w: 0 for w in workers}
    order = sorted(range(n), key=lambda k: -max(cells[k].values(), default=0))  # strongest preferences first
    out: list[Worker | None] = [None] * n
    for k in order:
        rank = {w: i for i, w in enumerate(workers)}
        best = min((w for w in workers if load[w] < capacity),
                   key=lambda w: (-cells[k].get(w, 0), load[w], rank[w]))
        out[k] = best
        load[best] += 1
    return out


def rebalance(assign: Sequence[Worker], computing: Sequence[bool], cells: Sequence[dict[Worker, int]],
              workers: Sequence[Worker]) -> list[Worker]:
    """Even out computing tiles over workers (see module doc); skipped tiles stay where they are."""
    out = list(assign)
    rank = {w: i for i, w in enumerate(workers)}
    while True:
        load = {w: 0 for w in workers}
        for w, c in zip(out, computing):
            if c:
                load[w] += 1
        heavy = max(workers, key=lambda w: (load[w], -rank[w]))
        light = min(workers, key=lambda w: (load[w], rank[w]))
        if load[heavy] - load[light] <= 1:
            return out
        movable = [k for k, (w, c) in enumerate(zip(out, computing)) if c and w == heavy]
        k = max(movable, key=lambda k: (cells[k].get(light, 0), -k))
        out[k] = light


def _branch_load(assign, computing, workers, branches: int) -> dict:
    """Model calls per worker when every computing tile runs all its branches where it is assigned."""
    load = {w: 0 for w in workers}
    for w, c in zip(assign, computing):
        if c:
            load[w] += branches
    return load


def split_branches(assign: Sequence[Worker], computing: Sequence[bool], workers: Sequence[Worker],
                   branches: int = 2) -> list[tuple[int, int, Worker]]:
    """(tile, branch, worker) for each branch to run away from its tile's worker, so that the branch calls
    per worker differ by at most one. Only computing tiles split, each at most once (its last branch
    moves); feed it a tile-balanced assignment (`place_by_locality`/`rebalance`) and few tiles split."""
    if branches < 2:
        return []
    rank = {w: i for i, w in enumerate(workers)}
    load = _branch_load(assign, computing, workers, branches)
    moved: list[tuple[int, int, Worker]] = []
    split: set[int] = set()
    while True:
        heavy = max(workers, key=lambda w: (load[w], -rank[w]))
        light = min(workers, key=lambda w: (load[w], rank[w]))
        whole = [k for k, (w, c) in enumerate(zip(assign, computing)) if c and w == heavy and k not in split]
        if load[heavy] - load[light] <= 1 or not whole:
            return moved
        k = whole[-1]
        moved.append((k, branches - 1, light))
        split.add(k)
        load[heavy] -= 1
        load[light] += 1


def branch_makespan(assign: Sequence[Worker], computing: Sequence[bool], workers: Sequence[Worker],
                    moved: Sequence[tuple[int, int, Worker]] = (), branches: int = 2) -> int:
    """Branch calls on the busiest worker once `moved` branches run elsewhere."""
    load = _branch_load(assign, computing, workers, branches)
    for k, _, w in moved:
        load[assign[k]] -= 1
        load[w] += 1
    return max(load.values(), default=0)


def makespan(assign: Sequence[Worker], computing: Sequence[bool], workers: Sequence[Worker]) -> int:
    """Computing tiles on the busiest worker: the step's length in tile forwards."""
    return max((sum(1 for w2, c in zip(assign, computing) if c and w2 == w) for w in workers), default=0)
