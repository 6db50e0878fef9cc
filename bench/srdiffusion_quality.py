"""SRDiffusion on the embedded world (issue 17): the world model alone against the world model sketching the
high-noise steps and its render model (`python -m supergen.train dit --layers 3 --init ...`, 3 of its 6
blocks) the rest, in both stages. Same captions, seeds and presets; the pair switches by the adaptive rule
(or at `--switch-step`).

* native size (64x64, the sketch plus its one-tile refinement): caption adherence (background and object
  colours, direction) of each, and the pair's PSNR/SSIM against the model alone;
* 4x (256x256, the preset render): the quality suite's adherence, sketch fidelity, seams and flicker of
  each, the pair's PSNR/SSIM against the model alone, and the CPU seconds of each stage.
Targets: adherence within 5 points of the model alone, PSNR >= 28 dB against it.

    .venv/bin/python bench/srdiffusion_quality.py --render-model DIR --out bench/results/srdiffusion_world_cpu.json
"""

from __future__ import annotations

import argparse
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from supergen import RenderSpec, quality, world  # noqa: E402
from supergen.executor import render  # noqa: E402
from supergen.metrics import compare_videos  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, write_result  # noqa: E402
from quality_grid import mean_rows, summary  # noqa: E402
from world_adherence import scored  # noqa: E402


def native_row(alone, pair, caption: str) -> dict:
    """Adherence of both at native size (as `world_adherence.py` scores a sample) and the pair against alone."""
    out = {"caption": caption, "switch_step": pair.models["switch_step"]}
    for name, r in (("alone", alone), ("pair", pair)):
        out[name] = scored(r.video, caption)
    cmp = compare_videos(alone.video, pair.video)
    return {**out, "psnr_db": cmp["psnr_db"]["mean"], "ssim": cmp["ssim"]["mean"]}


def rates(rows: list[dict], who: str) -> dict:
    dirs = [d for r in rows for d in r[who]["directions"] if d is not None]
    return {"colours": round(sum(r[who]["colours"] for r in rows) / len(rows), 3),
            "direction": round(sum(dirs) / len(dirs), 3) if dirs else None,
            "score": round(sum(r[who]["score"] for r in rows) / len(rows), 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="world")
    ap.add_argument("--render-model", required=True)
    ap.add_argument("--switch-step", type=int, help="a fixed switch [default: the adaptive rule]")
    ap.add_argument("--native", type=int, default=40, help="captions at native size")
    ap.add_argument("--canvas", type=int, default=8, help="captions at 4x")
    ap.add_argument("--seed", type=int, default=777, help="scene sampler seed (training draws other seeds)")
    ap.add_argument("--out", default="bench/results/srdiffusion_world_cpu.json")
    args = ap.parse_args()
    result = {**environment(" ".join(["python"] + sys.argv)), "model": args.model,
              "render_model": os.path.basename(os.path.normpath(args.render_model))}
    rng = random.Random(args.seed)
    captions = [world.sample_scene(rng, max_shapes=2).caption for _ in range(max(args.native, args.canvas))]

    def both(caption, seed, **size):
        base = RenderSpec(prompt=caption, model=args.model, seed=seed, checkpoint_every=0, **size)
        return render(base), render(base.replace(render_model=args.render_model, switch_step=args.switch_step))

    native = []
    for i, caption in enumerate(captions[: args.native]):
        native.append(native_row(*both(caption, i, width=64, height=64), caption))
        print("native", i, {k: native[-1][k] for k in ("switch_step", "psnr_db")}, flush=True)
        result["native"] = {"rows": native, "alone": rates(native, "alone"), "pair": rates(native, "pair"),
                            "psnr_db": round(sum(r["psnr_db"] for r in native) / len(native), 2),
                            "ssim": round(sum(r["ssim"] for r in native) / len(native), 4)}
        write_result(args.out, result)
    canvas = []
    for i, caption in enumerate(captions[: args.canvas]):
        alone, pair = both(caption, i, width=256, height=256)
        row = {"caption": caption, "switch": pair.models}
        for name, r in (("alone", alone), ("pair", pair)):
            row[name] = {**summary(quality.assess(r.video, r.sketch_video, r.spec.to_dict())),
                         **{f"{k}_s": round(v, 2) for k, v in r.timings.items()}}
        cmp = compare_videos(alone.video, pair.video)
        row.update(psnr_db=cmp["psnr_db"]["mean"], ssim=cmp["ssim"]["mean"])
        canvas.append(row)
        print("4x", i, {k: row[k] for k in ("psnr_db", "ssim")}, row["pair"]["adherence"], flush=True)
        result["canvas"] = {"rows": canvas, **{who: mean_rows([r[who] for r in canvas]) for who in ("alone", "pair")},
                            "psnr_db": round(sum(r["psnr_db"] for r in canvas) / len(canvas), 2),
                            "ssim": round(sum(r["ssim"] for r in canvas) / len(canvas), 4)}
        write_result(args.out, result)


if __name__ == "__main__":
    main()
