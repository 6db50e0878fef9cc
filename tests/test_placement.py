from hypothesis import given, settings
from hypothesis import strategies as st

from supergen import placement as P
from supergen.tiling import cores, step_grid


def test_initial_assignment_is_balanced_and_contiguous():
    assert P.initial_assignment(9, ["a", "b", "c", "d"]) == ["a", "a", "a", "b", "b", "c", "c", "d", "d"]
    assert P.initial_assignment(4, [0, 1]) == [0, 0, 1, 1]


def test_locality_follows_the_shift():
    """One quantum of shift: each window mostly overlaps its own previous core, so it stays put."""
    canvas, tile = (270, 480), (90, 160)
    workers = [0, 1, 2]
    g0, g1 = step_grid(0, canvas, tile, "wrap", 1, 16), step_grid(1, canvas, tile, "wrap", 1, 16)
    owners = P.initial_assignment(len(g0), workers)
    owned = list(zip(cores(g0), owners))
    cells = [P.cells_by_worker(w, owned, canvas) for w in g1.windows]
    assert P.place_by_locality(cells, workers) == owners
    # strips that change owner are a small part of the canvas
    moved = sum(sum(v for w, v in c.items() if w != o) for c, o in zip(cells, owners))
    assert 0 < moved < 0.25 * canvas[0] * canvas[1]


@st.composite
def steps(draw):
    """A step to place: (workers, each tile's worker, which tiles compute), 1-20 tiles on 1-6 workers."""
    n, w = draw(st.integers(1, 20)), draw(st.integers(1, 6))
    workers = list(range(w))
    return (workers, draw(st.lists(st.sampled_from(workers), min_size=n, max_size=n)),
            draw(st.lists(st.booleans(), min_size=n, max_size=n)))


@settings(max_examples=200, deadline=None)
@given(steps())
def test_rebalance_minimises_the_makespan_and_keeps_skips(step):
    workers, assign, computing = step
    w = len(workers)
    cells = [{a: 10} for a in assign]
    out = P.rebalance(assign, computing, cells, workers)
    assert P.makespan(out, computing, workers) == -(-sum(computing) // w)  # the optimum
    assert all(o == a for o, a, c in zip(out, assign, computing) if not c)  # skipped tiles never move


def test_rebalance_prefers_tiles_with_cells_on_the_target():
    assign, computing = [0, 0, 0, 1], [True, True, True, False]
    cells = [{0: 10}, {0: 6, 1: 4}, {0: 10}, {1: 10}]
    assert P.rebalance(assign, computing, cells, [0, 1]) == [0, 1, 0, 1]


def test_branch_splitting_balances_nine_tiles_on_four_workers():
    """The 4K case: 9 tiles on 4 GPUs is 3 tile-times on the busiest (75%); splitting one CFG tile gives
    2.5 (90%), the best possible in half-tiles."""
    workers = ["a", "b", "c", "d"]
    assign = P.initial_assignment(9, workers)
    moved = P.split_branches(assign, [True] * 9, workers)
    assert moved == [(2, 1, "b")]
    assert P.branch_makespan(assign, [True] * 9, workers) == 6
    assert P.branch_makespan(assign, [True] * 9, workers, moved) == 5
    assert P.split_branches(P.initial_assignment(8, workers), [True] * 8, workers) == []  # already even
    assert P.split_branches(assign, [True] * 9, workers, branches=1) == []  # no CFG: nothing to split


@settings(max_examples=200, deadline=None)
@given(steps())
def test_branch_splitting_is_optimal_after_tile_balancing(step):
    workers, assign, computing = step
    w = len(workers)
    balanced = P.rebalance(assign, computing, [{a: 1} for a in assign], workers)
    moved = P.split_branches(balanced, computing, workers)
    assert P.branch_makespan(balanced, computing, workers, moved) == -(-2 * sum(computing) // w)  # the optimum
    assert all(computing[k] and b == 1 and wk != balanced[k] for k, b, wk in moved)  # computing tiles, moved away
    assert len({k for k, _, _ in moved}) == len(moved)  # each tile splits at most once
