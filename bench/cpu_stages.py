"""Stage timings of the embedded default model at 2x and 4x, and one tile forward vs the untiled forward
at 4x (and 16x) the area: the cost ratio that motivates tiling.

    .venv/bin/python bench/cpu_stages.py --out bench/results/cpu_stages.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import supergen  # noqa: E402
from supergen import RenderSpec  # noqa: E402
from supergen.backends import load_backend  # noqa: E402

from common import environment, write_result  # noqa: E402


def stage_timings(scale: int, repeats: int) -> dict:
    spec = RenderSpec(prompt="a red circle moving", width=64 * scale, height=64 * scale)
    runs = [supergen.render(spec) for _ in range(repeats)]
    stages = runs[0].timings.keys()
    return {
        "scale": scale, "size": [spec.width, spec.height], "frames": runs[0].spec.frames,
        "tiles_per_step": runs[0].tiles_per_step[0], "refine_steps": runs[0].spec.refine_steps,
        "median_s": {k: round(statistics.median(r.timings[k] for r in runs), 4) for k in stages},
        "total_median_s": round(statistics.median(sum(r.timings.values()) for r in runs), 3),
    }


@torch.no_grad()
def forward_ratio(repeats: int) -> list[dict]:
    be = load_backend("tiny")
    cond = be.encode_conditioning("a red circle", "", 5.0, None, (64, 64), 9)
    out = []
    for tile, cells in ((8, 8), (8, 16), (8, 32), (32, 32), (32, 64)):
        x = torch.randn(1, 16, 3, cells, cells)
        be.predict(x, 10, 5, cond)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            be.predict(x, 10, 5, cond)
            times.append(time.perf_counter() - t0)
        out.append({"tile": [3, tile, tile], "latent": [3, cells, cells], "tokens": 3 * (cells // 2) ** 2,
                    "median_ms": round(1000 * statistics.median(times), 3)})
    base = {row["tile"][1]: row["median_ms"] for row in out if row["tile"] == row["latent"]}
    for row in out:
        tile = row["tile"][1]
        area = (row["latent"][1] // tile) ** 2
        row["area_vs_tile"] = area
        row["cost_vs_tile"] = round(row["median_ms"] / base[tile], 2)
        row["cost_vs_tiles_covering_it"] = round(row["median_ms"] / (base[tile] * area), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/cpu_stages.json")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    result = environment(" ".join(["python"] + sys.argv))
    result["stages"] = [stage_timings(s, args.repeats) for s in (2, 4)]
    result["tile_forward"] = forward_ratio(args.repeats * 4)
    write_result(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
