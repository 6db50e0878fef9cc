"""The live tile map: for each refinement step, which worker denoised which tile (and where its CFG
branches ran, when split) and which tiles the cache skipped. The driver keeps it in the render store
(`tile_map.json`, rewritten after every step, so it is there after the fact and for a resumed render) and
the flow shows its newest step as a Prefect markdown artifact that updates in place."""

from __future__ import annotations

import json

FILE = "tile_map.json"


def step_record(step: int, grid, workers: list[str], branches: dict[int, list[str]], computed: list[bool]) -> dict:
    """One step of the map: its grid offset and, per tile (row-major), its window in latent cells
    [top, left, height, width], its worker, whether it computed (False: the cache reused its residual) and,
    for a tile whose branches ran apart, their workers."""
    tiles = []
    for m, win in enumerate(grid.windows):
        tile = {"window": [win.top, win.left, win.height, win.width], "worker": str(workers[m]),
                "computed": bool(computed[m])}
        if m in branches:
            tile["branches"] = [str(w) for w in branches[m]]
        tiles.append(tile)
    return {"step": step, "grid": [len(grid.rows), len(grid.cols)], "offset": list(grid.offset), "tiles": tiles}


def markdown(record: dict, refine_steps: int, totals: dict[str, list[int]]) -> str:
    """The artifact: the newest step as a grid of its tiles (worker, skipped), and per worker the tiles it
    computed and the cache skipped so far (`totals`)."""
    rows, cols = record["grid"]
    tiles = record["tiles"]
    skipped = sum(not t["computed"] for t in tiles)
    lines = [f"**Refinement step {record['step'] + 1} of {refine_steps}**: {len(tiles)} tiles, "
             f"{len(tiles) - skipped} computed, {skipped} skipped by the cache; grid offset "
             f"{tuple(record['offset'])} latent cells", "",
             "| | " + " | ".join(f"x {tiles[c]['window'][1]}" for c in range(cols)) + " |",
             "|---" * (cols + 1) + "|"]
    for r in range(rows):
        cells = []
        for c in range(cols):
            t = tiles[r * cols + c]
            cell = t["worker"] if t["computed"] else f"{t['worker']} (skipped)"
            if "branches" in t:
                cell += " / branches " + " + ".join(t["branches"])
            cells.append(cell)
        lines.append(f"| y {tiles[r * cols]['window'][0]} | " + " | ".join(cells) + " |")
    lines += ["", "| worker | tiles computed | tiles skipped |", "|---|---|---|"]
    lines += [f"| {w} | {c} | {s} |" for w, (c, s) in sorted(totals.items())]
    return "\n".join(lines)


class TileMap:
    """The map of one render's refinement, as the store keeps it."""

    def __init__(self, store, first_step: int = 0):
        self.store = store
        self.steps = [s for s in read(store) if s["step"] < first_step]  # a resumed render keeps the steps done

    def add(self, record: dict) -> None:
        self.steps.append(record)
        self.store.write_file(FILE, json.dumps({"steps": self.steps}).encode())


def totals(steps: list[dict]) -> dict[str, list[int]]:
    """Per worker: [tiles computed, tiles the cache skipped] over `steps`."""
    out: dict[str, list[int]] = {}
    for rec in steps:
        for t in rec["tiles"]:
            out.setdefault(t["worker"], [0, 0])[0 if t["computed"] else 1] += 1
    return out


def read(store) -> list[dict]:
    """The steps a store's tile map holds ([] before the refinement wrote any)."""
    from storage import StoreError

    try:
        return json.loads(store.read_file(FILE))["steps"]
    except StoreError:  # none yet (a store that cannot be read fails at the map's first write)
        return []
