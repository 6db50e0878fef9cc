"""Properties of the distributed step plan (supergen.stepplan), over random canvases, tiles, shifts, worker
counts, skip patterns and balance modes: the plan is what the Dask driver submits, so these hold of
every distributed render."""

from hypothesis import given, settings
from hypothesis import strategies as st

from supergen.stepplan import plan_compute, plan_gather
from supergen.tiling import intersections, step_grid

CELL, PRED = 7, 3  # bytes per latent cell and per prediction cell: any distinct numbers


@st.composite
def steps(draw):
    rows, cols = draw(st.integers(6, 40)), draw(st.integers(6, 40))
    tile = (draw(st.integers(3, rows)), draw(st.integers(3, cols)))
    boundary = draw(st.sampled_from(["wrap", "clamp"]))
    i = draw(st.integers(1, 6))
    workers = [f"w{k}" for k in range(draw(st.integers(1, 4)))]
    grids = [step_grid(j, (rows, cols), tile, boundary, 1, 4) for j in (i - 1, i)]
    computing = [draw(st.lists(st.booleans(), min_size=len(g), max_size=len(g))) for g in grids]
    balance = draw(st.sampled_from(["locality", "tiles", "branches"]))
    return grids, workers, computing, balance, draw(st.booleans()), draw(st.sampled_from([1, 2]))


def _two_steps(grids, workers, computing, balance, cache_on, branches):
    g0 = plan_gather(0, grids[0], None, workers, CELL, from_store=True)
    c0 = plan_compute(g0, grids[0], computing[0], workers, balance, cache_on, branches, CELL, PRED)
    g1 = plan_gather(1, grids[1], (g0.cores, c0.workers), workers, CELL, from_store=False)
    c1 = plan_compute(g1, grids[1], computing[1], workers, balance, cache_on, branches, CELL, PRED)
    return (g0, c0), (g1, c1)


@settings(max_examples=150, deadline=None)
@given(steps())
def test_every_cell_is_advanced_by_exactly_one_worker(case):
    grids = case[0]
    for (g, c), grid in zip(_two_steps(*case), grids):
        area = [[0] * grid.canvas[1] for _ in range(grid.canvas[0])]
        for core in g.cores:
            for r in intersections(core, core, grid.canvas):
                for y in range(r.top, r.top + r.height):
                    for x in range(r.left, r.left + r.width):
                        area[y][x] += 1
        assert all(v == 1 for row in area for v in row)  # cores partition the canvas
        assert len(c.workers) == len(g.cores) == len(grid)  # core k advances on window k's one worker
        assert all(k in c.overlaps[k] for k in range(len(grid)))  # a core merges its own window


@settings(max_examples=150, deadline=None)
@given(steps())
def test_bytes_moved_are_the_sum_of_the_listed_transfers(case):
    grids = case[0]
    (g0, c0), (g1, c1) = _two_steps(*case)
    assert g0.moved_bytes == 0 and g0.pieces == ()  # the first step reads the store
    crossing = sum(sum(r.height * r.width for r in intersections(g0.cores[p.core], grids[1].windows[p.window],
                                                                grids[1].canvas))
                   for p in g1.pieces if p.crosses)
    assert g1.moved_bytes == crossing * CELL  # cells counted per worker == pieces that cross, cell by cell
    for g, c, grid in ((g0, c0, grids[0]), (g1, c1, grids[1])):
        assert c.strip_bytes == sum(s.cells for s in c.strips) * PRED
        assert all(c.workers[s.window] != c.workers[s.core] for s in c.strips)
        local = {(m, k) for k in range(len(grid)) for m in c.overlaps[k] if c.workers[m] == c.workers[k]}
        assert {(s.window, s.core) for s in c.strips} | local == {(m, k) for k in range(len(grid))
                                                                 for m in c.overlaps[k]}


@settings(max_examples=150, deadline=None)
@given(steps())
def test_skipped_windows_never_move(case):
    computing = case[2]
    for (g, c), comp in zip(_two_steps(*case), computing):
        for m, busy in enumerate(comp):
            if not busy:
                assert c.workers[m] == g.workers[m] and m not in c.split


@settings(max_examples=100, deadline=None)
@given(steps())
def test_one_worker_moves_nothing(case):
    grids, _, computing, balance, cache_on, branches = case
    for g, c in _two_steps(grids, ["only"], computing, balance, cache_on, branches):
        assert g.moved_bytes == 0 and c.moved_bytes == 0 and not c.strips and not c.branches
        assert not any(p.crosses for p in g.pieces)
