"""The tile map's record and its markdown (flows/tilemap.py): pure functions of a step's grid and placement."""

from flows import tilemap
from supergen.tiling import Grid


def test_a_steps_record_and_its_markdown_show_workers_branches_and_skips():
    grid = Grid(canvas=(16, 24), tile=(8, 12), boundary="wrap", offset=(2, 3), rows=(2, 10), cols=(3, 15))
    rec = tilemap.step_record(4, grid, ["gpu-0", "gpu-1", "gpu-0", "gpu-1"], {3: ["gpu-1", "gpu-0"]},
                              [True, False, True, True])
    assert rec["grid"] == [2, 2] and rec["offset"] == [2, 3]
    assert [t["window"] for t in rec["tiles"]] == [[2, 3, 8, 12], [2, 15, 8, 12], [10, 3, 8, 12], [10, 15, 8, 12]]
    assert rec["tiles"][3]["branches"] == ["gpu-1", "gpu-0"] and "branches" not in rec["tiles"][0]
    text = tilemap.markdown(rec, 10, tilemap.totals([rec, rec]))
    assert "**Refinement step 5 of 10**: 4 tiles, 3 computed, 1 skipped" in text
    assert "| y 2 | gpu-0 | gpu-1 (skipped) |" in text
    assert "| y 10 | gpu-0 | gpu-1 / branches gpu-1 + gpu-0 |" in text
    assert "| gpu-0 | 4 | 0 |" in text and "| gpu-1 | 2 | 2 |" in text  # two steps' totals

