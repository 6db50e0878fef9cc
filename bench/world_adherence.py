"""Caption adherence of the embedded world model at its native size: sample the stock pipeline (the
sketch stage alone) for captions of held-out scenes and check background, object colours and motion
with `supergen.quality.world_adherence`. Targets: >= 85% of samples with the caption's background and
object colours, >= 80% moving in the captioned direction.

    .venv/bin/python bench/world_adherence.py --out bench/results/world_adherence_cpu.json
"""

from __future__ import annotations

import argparse
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from supergen import noise, quality, world  # noqa: E402
from supergen.backends import load_backend  # noqa: E402
from supergen.upscale import to_uint8  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, write_result  # noqa: E402


def sample(be, caption: str, seed: int, steps: int, guidance: float, frames: int):
    z = be.sketch(caption, "", None, 64, 64, frames, steps, guidance, noise.generator(seed, "sketch"))
    return to_uint8(be.decode(z))


def scored(video, caption: str) -> dict:
    """One sample's adherence as this benchmark counts it: the background, the gradient, the background and
    every object's colour together, and each non-bouncing object's direction (None where it was not found)."""
    a = quality.world_adherence(video, caption)
    c = a["checks"]
    objects = [v for k, v in c.items() if k.endswith("_present")]
    return {"background": c["background"], "gradient": c["gradient"], "colours": c["background"] and all(objects),
            "objects_present": objects, "directions": [o["motion_ok"] for o in a["objects"] if o["motion"] != "bouncing"],
            "score": a["score"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/world_adherence_cpu.json")
    ap.add_argument("--model", default="world")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--max-shapes", type=int, default=1)
    ap.add_argument("--seed", type=int, default=777, help="scene sampler seed (training draws other seeds)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    be = load_backend(args.model, args.device)
    rng = random.Random(args.seed)
    rows = []
    for i in range(args.n):
        caption = world.sample_scene(rng, max_shapes=args.max_shapes).caption
        rows.append({"caption": caption, **scored(sample(be, caption, i, args.steps, args.guidance, 17), caption)})
        print(i, caption, {k: rows[-1][k] for k in ("background", "colours", "directions")}, flush=True)
    dirs = [d for r in rows for d in r["directions"] if d is not None]
    summary = {"samples": len(rows),
               "background_match": sum(r["background"] for r in rows) / len(rows),
               "background_and_object_colours_match": sum(r["colours"] for r in rows) / len(rows),
               "gradient_match": sum(r["gradient"] for r in rows) / len(rows),
               "direction_match": sum(dirs) / len(dirs) if dirs else None, "directed_objects": len(dirs),
               "targets": {"colours": 0.85, "direction": 0.80}}
    print(summary)
    result = environment(" ".join(["python"] + sys.argv))
    result.update(model=args.model, steps=args.steps, guidance=args.guidance, summary=summary, rows=rows)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
