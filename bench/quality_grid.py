"""What tiling, shifting, boundaries and the region cache do to the embedded world model's output.

Methods, at 4x, 8x and an odd aspect, each on the same sketches and re-noised starts (stages shared
through an in-memory sink, so only the refinement differs):
  bicubic       the sketch's bicubic upscale (no refinement)
  direct        one window over the whole canvas (no tiles; the model far outside its training size)
  no-shift      native tiles, the grid never moves
  shift-wrap    native tiles, the grid shifts every step, windows wrap (the paper; the default)
  shift-clamp   as shift-wrap, windows clamped inside the canvas
  rope-ntk      as shift-wrap, the tiles' rotary positions from the canvas, NTK-scaled bases (--rope)
  rope-interp   as shift-wrap, the tiles' canvas positions scaled into the native extent
  clamp-ntk     as shift-clamp, with rope-ntk's positions
  loop4, loop2  as shift-wrap with the shift quantum tile // 4 or tile // 2 (the paper's tile // 16 is one
                cell of the world model's 8-cell tile, as tile // 8 and // 32 are: max(1, tile // loop))
  (`--rope canvas` renders what shift-wrap renders up to rounding: RoPE is relative, supergen/rope.py)
Then the cache grid at 4x (tau x alpha for `region`, tau for `uniform`) against `none`: refinement speedup,
transformer calls, PSNR/SSIM of the video vs `none`.
`--i2v`: an image-to-video model (`python -m supergen.train dit --i2v ...`), each caption's render
conditioned on its scene's first frame, drawn exactly at the canvas size.

    .venv/bin/python bench/quality_grid.py --out bench/results/quality_grid_cpu.json
    .venv/bin/python bench/quality_grid.py --model DIR --i2v --sizes 4x 8x --skip cache --out ...
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from supergen import RenderSpec, quality, world  # noqa: E402
from supergen.backends import load_backend  # noqa: E402
from supergen.executor import render  # noqa: E402
from supergen.metrics import compare_videos  # noqa: E402
from supergen.upscale import to_uint8  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, write_result  # noqa: E402

SIZES = {"2x": (128, 128), "4x": (256, 256), "odd": (336, 208), "8x": (512, 512)}
METHODS = ("bicubic", "direct", "no-shift", "shift-wrap", "shift-clamp", "rope-ntk", "rope-interp", "clamp-ntk", "loop4",
           "loop2")
TAUS = (0.05, 0.1, 0.2, 0.4, 0.6, 0.8)
ALPHAS = (0.0, 0.5)


class Stages:
    """A render sink that keeps stage latents in memory: later methods reuse the sketch and the re-noised
    start of the first, so they differ by the refinement alone."""

    def __init__(self, share=("sketch", "start")):
        self.stages, self.records, self.share = {}, {}, share

    def load_stage(self, name):
        return self.stages.get(name) if name in self.share else None

    def save_stage(self, name, tensor, record=None):
        self.stages.setdefault(name, tensor.clone())
        self.records.setdefault(name, record)

    def stage_record(self, name):
        return self.records.get(name) if name in self.share else None

    def save_checkpoint(self, ckpt):
        pass

    def load_checkpoint(self):
        return None

    def input_image(self):
        return None


def first_frame(scene, size, folder: str, name: str) -> str:
    """A PNG of `scene`'s first frame at `size` (width, height): the image an I2V render is conditioned on."""
    from PIL import Image

    w, h = size
    path = os.path.join(folder, f"first-{name}-{w}x{h}.png")
    if os.path.isfile(path):  # every variant of a caption at a size conditions on the one image
        return path
    Image.fromarray(to_uint8(world.render([scene], w, h, 1))[0].numpy()).save(path)
    return path


def base_spec(args, scene, seed: int, size, **fields) -> RenderSpec:
    """The spec every variant of one caption starts from (with its first frame for an I2V model)."""
    image = first_frame(scene, size, args.images, str(seed)) if args.i2v else None
    return RenderSpec(prompt=scene.caption, seed=seed, checkpoint_every=0, model=args.model, image=image, **fields)


def method_spec(base: RenderSpec, method: str, size) -> RenderSpec:
    w, h = size
    if method == "direct":
        return base.replace(width=w, height=h, tile=(h // 8, w // 8))
    extra = {"no-shift": dict(shift_every=0), "shift-clamp": dict(boundary="clamp"),
             "rope-ntk": dict(rope="canvas-ntk"), "rope-interp": dict(rope="canvas-interp"),
             "clamp-ntk": dict(boundary="clamp", rope="canvas-ntk"),
             "loop4": dict(shift_loop=4), "loop2": dict(shift_loop=2)}.get(method, {})
    return base.replace(width=w, height=h, **{"boundary": "wrap", **extra})  # wrapped unless named: not the preset


def summary(a: dict) -> dict:
    w = a.get("world", {})
    return {"seam": a["seam"]["score"], "periodicity": a["periodicity"]["score"],
            "flicker": a["flicker"]["excursion"], "sketch_psnr_db": a["sketch_fidelity"]["psnr_db"],
            "sketch_ssim": a["sketch_fidelity"]["ssim"], "detail_gain": a["detail_gain"],
            "adherence": w.get("adherence", {}).get("score"),
            "duplicated": w.get("duplication", {}).get("duplicated")}


def mean_rows(rows: list[dict]) -> dict:
    keys = rows[0].keys()
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if isinstance(r[k], (int, float)) and not isinstance(r[k], bool)]
        flags = [r[k] for r in rows if isinstance(r[k], bool)]
        out[k] = round(sum(vals) / len(vals), 4) if vals else (round(sum(flags) / len(flags), 3) if flags else None)
    return out


def variant_sheet(videos: dict, width: int = 256, columns: int = 3):
    """PIL image: one row per method (its label, then `columns` frames spread over the clip, each
    `width` px wide), the methods' videos of one caption, for the eye."""
    from PIL import Image, ImageDraw

    label_w = 110
    first = next(iter(videos.values()))
    n, h, w = first.shape[:3]
    th = round(h * width / w)
    idx = [round(i * (n - 1) / max(1, columns - 1)) for i in range(columns)]
    sheet = Image.new("RGB", (label_w + width * columns, th * len(videos)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, video) in enumerate(videos.items()):
        draw.text((6, r * th + th // 2 - 6), name, fill="black")
        for c, f in enumerate(idx):
            frame = Image.fromarray(video[f].numpy()).resize((width, th), Image.LANCZOS)
            sheet.paste(frame, (label_w + c * width, r * th))
    return sheet


def methods(be, scenes, args, save=lambda rows: None) -> list[dict]:
    rows = []
    for label, size in SIZES.items():
        if args.sizes and label not in args.sizes:
            continue
        for p, scene in enumerate(scenes[: args.prompts_8x] if label == "8x" else scenes):
            sink, prompt = Stages(), scene.caption
            base = base_spec(args, scene, p, size, steps=args.steps, refine_steps=args.refine_steps)
            first, videos = None, {}
            for m in ("shift-wrap",) + tuple(x for x in args.methods if x != "shift-wrap"):
                if m == "bicubic":
                    video, spec, secs = quality.bicubic(first.sketch_video, tuple(first.video.shape[1:3])), first.spec, 0.0
                else:
                    t0 = time.perf_counter()
                    r = render(method_spec(base, m, size), backend=be, sink=sink)
                    video, spec, secs = r.video, r.spec, time.perf_counter() - t0
                    first = first or r
                videos[m] = video
                a = quality.assess(video, first.sketch_video, spec.to_dict())
                rows.append({"size": label, "method": m, "prompt": prompt, "seconds": round(secs, 2),
                             "canvas": list(size), "sketch": [spec.sketch_width, spec.sketch_height],
                             **summary(a)})
                print(rows[-1], flush=True)
            if args.sheet and p == 0:  # the first caption of each size, one row per method
                variant_sheet(videos).save(args.sheet.replace("{size}", label), optimize=True)
            save(rows)
    return rows


def depth(be, scenes, args) -> list[dict]:
    """Refinement depth k of N at 4x: where the re-noised start sits decides how much of the sketch
    survives (fidelity, duplication) and how much detail the tiles add. The sketch is shared; the start
    is not (it depends on k)."""
    rows = []
    for steps in args.depth_steps:
        for p, scene in enumerate(scenes):
            sink, prompt = Stages(share=("sketch",)), scene.caption
            for frac in args.depth_fractions:
                k = max(1, round(frac * steps))
                spec = base_spec(args, scene, p, SIZES["4x"], steps=steps, refine_steps=k)
                r = render(spec, backend=be, sink=sink)
                a = quality.assess(r.video, r.sketch_video, r.spec.to_dict())
                rows.append({"steps": steps, "refine_steps": k, "prompt": prompt,
                             "refine_s": round(r.timings["refine"], 2), **summary(a)})
                print(rows[-1], flush=True)
    return rows


def cache_grid(be, scenes, args) -> list[dict]:
    rows = []
    for p, scene in enumerate(scenes[: args.cache_prompts]):
        sink, prompt = Stages(), scene.caption
        base = base_spec(args, scene, p, SIZES["4x"], steps=args.cache_steps, refine_steps=args.cache_refine_steps,
                         cache_warmup=args.cache_warmup)
        ref = render(base, backend=be, sink=sink)
        rows.append({"prompt": prompt, "policy": "none", "tau": None, "alpha": None, "skip_ratio": 0.0,
                     "refine_s": round(ref.timings["refine"], 3), "calls": ref.forwards["refine"]})
        grid = [("region", t, a) for t in TAUS for a in ALPHAS] + [("uniform", t, None) for t in TAUS]
        for policy, tau, alpha in grid:
            spec = base.replace(cache=policy, cache_threshold=tau, **({} if alpha is None else {"cache_alpha": alpha}))
            r = render(spec, backend=be, sink=sink)
            cmp = compare_videos(ref.video, r.video)
            rows.append({"prompt": prompt, "policy": policy, "tau": tau, "alpha": alpha,
                         "skip_ratio": r.cache.to_dict()["skip_ratio"], "refine_s": round(r.timings["refine"], 3),
                         "calls": r.forwards["refine"],
                         "speedup": round(ref.timings["refine"] / r.timings["refine"], 3),
                         "call_ratio": round(ref.forwards["refine"] / max(1, r.forwards["refine"]), 3),
                         "psnr_db": cmp["psnr_db"]["mean"], "ssim": cmp["ssim"]["mean"]})
            print(rows[-1], flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/quality_grid_cpu.json")
    ap.add_argument("--model", default="world")
    ap.add_argument("--prompts", type=int, default=3, help="world captions sampled (seeded)")
    ap.add_argument("--prompts-8x", type=int, default=1, help="of those, how many also render at 8x")
    ap.add_argument("--sizes", nargs="*", help=f"subset of {list(SIZES)}")
    ap.add_argument("--cache-prompts", type=int, default=2)
    ap.add_argument("--cache-steps", type=int, default=20, help="N for the cache grid")
    ap.add_argument("--cache-refine-steps", type=int, default=18,
                    help="k for the cache grid: deep, so the cache has steps to skip after its warm-up")
    ap.add_argument("--cache-warmup", type=int, default=5)
    ap.add_argument("--depth-steps", type=int, nargs="*", default=[10, 20])
    ap.add_argument("--depth-fractions", type=float, nargs="*", default=[0.9, 0.7, 0.5, 0.3])
    ap.add_argument("--skip", nargs="*", default=[], choices=["methods", "depth", "cache"])
    ap.add_argument("--sheet", help="PNG path ({size} replaced): the first caption's methods, a row each")
    ap.add_argument("--steps", type=int, help="N of the methods' renders [default: the model's preset]")
    ap.add_argument("--refine-steps", type=int, help="k of the methods' renders [default: the preset]")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS,
                    help="the methods rendered (shift-wrap always: the others share its stages)")
    ap.add_argument("--i2v", action="store_true", help="the model is image-to-video: condition on first frames")
    args = ap.parse_args()
    be = load_backend(args.model)
    rng = random.Random(2026)
    scenes = [world.sample_scene(rng, max_shapes=2) for _ in range(args.prompts)]
    args.images = tempfile.mkdtemp(prefix="quality-grid-")
    result = environment(" ".join(["python"] + sys.argv))
    result["model"] = args.model
    if "methods" not in args.skip:
        rows = methods(be, scenes, args, save=lambda rows: write_result(args.out, {**result, "methods": rows}))
        result["methods"] = rows
        result["methods_mean"] = [{"size": s, "method": m, **mean_rows(
            [{k: v for k, v in r.items() if k not in ("size", "method", "prompt", "canvas", "sketch")}
             for r in rows if r["size"] == s and r["method"] == m])}
            for s in SIZES for m in METHODS if any(r["size"] == s and r["method"] == m for r in rows)]
    if "depth" not in args.skip:
        rows = result["depth"] = depth(be, scenes, args)
        result["depth_mean"] = [{"steps": n, "refine_steps": k, **mean_rows(
            [{kk: v for kk, v in r.items() if kk not in ("steps", "refine_steps", "prompt")}
             for r in rows if (r["steps"], r["refine_steps"]) == (n, k)])}
            for n, k in dict.fromkeys((r["steps"], r["refine_steps"]) for r in rows)]
    if "cache" not in args.skip:
        result["cache"] = cache_grid(be, scenes, args)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
