"""Issue 14's end-to-end benchmark: a whole render (sketch, upscale + re-encode, tiled refinement, decode +
export) on one host's GPUs, one LocalCUDACluster worker per GPU, before and after the work that spreads
the stages, in one run:

* `before`: the sketch, the upscale and the decode on one worker (as before issue 14), the refinement on
  every worker, eager;
* `after`:  every stage on every worker (CFG branches of the sketch on two, VAE tiles in bands), the
  transformer compiled (`--compile`), after a warm-up render that pays the compile;
* `after-1gpu`: `after` on one worker;
* `after-vae32`: `after` with the VAE in float32, as `before` runs it (`after` takes the model's preset
  `vae_dtype`: bfloat16 for CogVideoX at --dtype bfloat16, float32 for Wan);
* `after-eager`: `after` without `--compile` (and without the warm-up render it needs: where device time
  is short, a conservative `after`: the compiled tile forward is `bench/gpu_tile.py --compile`'s);
* `split-eager`: `after-eager` with SRDiffusion's render model (`--render-arch`, issue 17), switched at
  `--switch-step` of the reduced schedule; its full-schedule time is extrapolated for each of
  `--full-switch` from the two models' measured step periods (the large model's refinement step from an
  `after-eager` run of the same call, where a switch falls inside the refinement).

A reduced schedule (N = --steps, k = --refine-steps) keeps a run inside a device call; a sketch step and a
refinement step cost the same at every schedule index, so the stage times extrapolate to the full schedule
(--full-steps, --full-refine); the VAE stages are timed whole. Per stage: wall time, the GPU memory peak
of every worker, and each worker's busy fraction (compute time of its tasks over the stage's wall time).

    python3 bench/gpu_e2e.py --arch cogvideox1.5-t2v-5b --size 2560x1440 --out '$OUT/e2e_{arch}_{size}.json'
    python3 bench/gpu_e2e.py --arch wan2.1-t2v-14b --size 2560x1440 --frames 81 --full-refine 45 --vae-tile 512
    python3 bench/gpu_e2e.py --arch wan2.1-t2v-14b --render-arch wan2.1-t2v-1.3b --modes split-eager after-eager \
        --size 2560x1440 --frames 81 --steps 4 --switch-step 2 --refine-steps 2 --vae-tile 512
    python3 bench/gpu_e2e.py --scale tiny --size 256x128 --frames 9 --out '/tmp/e2e_{arch}_{size}.json'  # CPU
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from archs import ARCHS, T5_DIM, build  # noqa: E402
from common import busy_fractions, timeline  # noqa: E402

MODES = ("before", "after", "after-1gpu", "after-vae32", "after-eager", "split-eager")


def build_model(arch: str, path: str, scale: str, native=None) -> str:
    """The architecture's transformer and VAE configs with random weights and a one-layer text encoder with
    the real output width (one call per render), saved with `save_pretrained` as users' models are.
    `native`: the sidecar's native size instead of the architecture's (a render model tiles the large
    model's native windows)."""
    if os.path.exists(os.path.join(path, "model_index.json")):
        return path
    if arch.startswith("cogvideox"):
        from gpu_stage2 import build_cogvideox15

        return build_cogvideox15(path, scale)
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    from supergen.backends.tiny import t5_tokenizer

    a = ARCHS[arch]
    tr = build(a, "cuda" if torch.cuda.is_available() else "cpu", scale).cpu()
    tok = t5_tokenizer()
    d = T5_DIM if scale == "full" else 32
    te = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=d, d_kv=64, d_ff=1024, num_layers=1, num_heads=8,
                                     pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
    vae = (AutoencoderKLWan(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                            temperal_downsample=[False, True, True]) if scale == "full" else
           AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]))
    WanPipeline(tokenizer=tok, text_encoder=te, vae=vae, transformer=tr,
                scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0)).save_pretrained(path)
    native = list(native or a.native[:2]) if scale == "full" else [64, 32]
    with open(os.path.join(path, "supergen.json"), "w") as f:
        json.dump({"native_size": native}, f)
    return path


def _memory_reset():
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _memory_peak() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else 0.0


def by_task(stream: list, info: dict) -> dict:
    """Per worker name: compute seconds by kind of task (the key's first word: tile, block, write_piece,
    upscaled, branch, advance, export_stage, ...)."""
    out: dict = {}
    for t in stream:
        name = str(info.get(t["worker"], {}).get("name", t["worker"]))
        kind = str(t["key"]).strip("('").split("-")[0]
        kind = "branch" if kind == "sketch" and "-branch-" in str(t["key"]) else kind
        for ss in t.get("startstops", ()):
            if ss["action"] == "compute":
                w = out.setdefault(name, {})
                w[kind] = round(w.get(kind, 0.0) + ss["stop"] - ss["start"], 2)
    return out


def run_render(client, store, serial: list, spread: list, progress=None) -> dict:
    """The four stages as `flows.render.run_stages` drives them, the sketch, upscale and decode on `serial`
    and the refinement on `spread` (worker names), each stage timed with its memory peaks and busy
    fractions; `progress(stages)` after each stage (a call cut short keeps the stages it measured)."""
    from distributed import get_task_stream

    from flows.refine import workers_info
    from flows.render import PLAIN_STAGES as S
    from tasks.model import ModelHolder
    from tasks.stages import warm_worker

    rid = uuid.uuid4().hex[:8]
    client.register_plugin(ModelHolder())
    client.gather([client.submit(warm_worker, store, rid, workers=[w], pure=False) for w in spread])
    info = workers_info(client)
    stages, timings = {}, {}

    def timed(name, fn, *args):
        client.run(_memory_reset)
        with get_task_stream(client) as ts:
            t0 = time.time()
            out = fn(*args)
            t1 = time.time()
        peaks = client.run(_memory_peak)
        stages[name] = {"s": round(t1 - t0, 2), "busy": busy_fractions(ts.data, info, t0, t1),
                        "peak_memory_gib": {str(info[a]["name"]): v for a, v in peaks.items() if a in info},
                        "compute_s_by_task": by_task(ts.data, info), "timeline": timeline(ts.data, info, t0)}
        if name in STEP_KEY:
            ends = step_ends(ts.data, name)
            stages[name]["step_ends_s"] = [round(e - t0, 3) for e in ends]
            stages[name]["step_s"] = step_period(ends)
        timings[name] = t1 - t0
        if progress:
            progress(stages)
        return out

    sk = timed("sketch", S.sketch, client, store, rid, serial)
    store.advance("sketched")
    timed("upscale", S.upscale, client, store, serial)
    store.advance("refining")
    refined = timed("refine", S.refine, client, store, "branches", rid, spread)
    store.advance("refined")
    timed("decode_export", S.export, client, store, dict(timings), refined, sk.forwards, serial)
    store.finish()
    return {"stages": stages, "forwards": {"sketch": sk.forwards, "refine": refined["forwards"]},
            "tiles_per_step": refined["tiles_per_step"]}


def warm_up(client, spec, root: str, workers: list) -> float:
    """Pay the compile: a two-step sketch and one refinement step of the same sizes on every worker (the
    start latent is noise: only the shapes matter), so the measured render runs warm, as every render after
    a worker's first does (the compile cache also serves other workers and restarts)."""
    from flows.render import PLAIN_STAGES as S
    from storage import RenderStore
    from supergen import RenderSpec
    from supergen.backends import model_info
    from supergen.executor import prepare

    s = prepare(RenderSpec(**{**spec, "steps": 2, "refine_steps": 1}), here=False)
    store = RenderStore.create(os.path.join(root, f"warm-{uuid.uuid4().hex[:6]}"), s)
    t0 = time.time()
    rid = uuid.uuid4().hex[:8]
    S.sketch(client, store, rid, workers)
    s_px = model_info(s.model).vae_spatial  # the sketch's (B, C, F') at the canvas's latent size
    w, h = s.canvas_size
    store.save_stage("start", torch.randn(*store.stage_shape("sketch")[:3], h // s_px, w // s_px))
    S.refine(client, store, "branches", rid, workers)
    return round(time.time() - t0, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="cogvideox1.5-t2v-5b", choices=["cogvideox1.5-t2v-5b", "wan2.1-t2v-14b",
                                                                      "wan2.1-t2v-1.3b"])
    ap.add_argument("--size", nargs="+", default=["2560x1440"], help="WxH of each render")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--frames", type=int, default=41)
    ap.add_argument("--steps", type=int, default=3, help="N run: the sketch's steps")
    ap.add_argument("--refine-steps", type=int, default=2, help="k run")
    ap.add_argument("--full-steps", type=int, default=50)
    ap.add_argument("--full-refine", type=int, default=45)
    ap.add_argument("--vae-tile", type=int)
    ap.add_argument("--render-arch", choices=["wan2.1-t2v-1.3b"], help="split-eager's render model")
    ap.add_argument("--switch-step", type=int, default=2, help="split-eager: the reduced schedule's switch")
    ap.add_argument("--full-switch", type=int, nargs="+", default=[5, 10, 15, 20, 30],
                    help="split-eager: full-schedule switch steps to extrapolate to")
    ap.add_argument("--scale", choices=["full", "tiny"], default="full")
    ap.add_argument("--model-dir", help="[default: a folder per architecture under the temp dir]")
    ap.add_argument("--out", help="JSON per size; {arch} and {size} are replaced")
    ap.add_argument("--build-only", action="store_true", help="build the model folder (if missing) and stop")
    args = ap.parse_args()
    from distributed import Client

    from common import environment, write_result
    from flows.cluster import make_cluster
    from flows.refine import worker_names
    from storage import RenderStore
    from supergen import RenderSpec
    from supergen.executor import prepare

    gpus = torch.cuda.device_count()
    env = environment(" ".join(["python3"] + sys.argv))
    t0 = time.time()
    model = build_model(args.arch, args.model_dir or os.path.join(tempfile.gettempdir(), "supergen-bench",
                                                                  f"{args.arch}-{args.scale}"), args.scale)
    render_model = None
    if args.render_arch:
        render_model = build_model(args.render_arch, os.path.join(os.path.dirname(model), f"{args.render_arch}-{args.scale}"),
                                   args.scale, native=ARCHS[args.arch].native[:2] if args.scale == "full" else None)
    elif "split-eager" in args.modes:
        ap.error("split-eager needs --render-arch")
    build_s = round(time.time() - t0, 1)
    if args.build_only:
        return print(model, f"{build_s} s", flush=True)
    if not args.out:
        ap.error("--out is required")
    root = tempfile.mkdtemp(prefix="e2e-")
    warm = {}
    with make_cluster(gpus or 2) as cluster, Client(cluster, set_as_default=False) as client:
        names = worker_names(client)
        for size in args.size:
            width, height = (int(v) for v in size.split("x"))
            base = dict(prompt="a lion walking through tall grass at sunset", model=model, width=width, height=height,
                        frames=args.frames, steps=args.steps, refine_steps=args.refine_steps, cache="none",
                        checkpoint_every=0, vae_tile=args.vae_tile, seed=0,
                        **({"device": "cuda", "dtype": "bfloat16"} if gpus else {}))
            out = {**env, "arch": args.arch, "scale": args.scale, "model_build_s": build_s, "spec": base,
                   "workers": [str(n) for n in names], "runs": {}}
            path = args.out.replace("{arch}", args.arch).replace("{size}", size)
            for mode in args.modes:
                spec = {**base, "compile": mode not in ("before", "after-eager", "split-eager"),
                        "vae_dtype": "float32" if mode in ("before", "after-vae32") else None}
                if mode == "split-eager":
                    spec.update(render_model=render_model, switch_step=args.switch_step)
                use = names[:1] if mode == "after-1gpu" else names
                serial = use[:1] if mode == "before" else use
                if spec["compile"] and not warm:  # the sketch and tile shapes of every size here are alike
                    warm[size] = warm_up(client, spec, root, names)
                out["warm_up_s"] = warm
                store = RenderStore.create(os.path.join(root, f"{size}-{mode}"), prepare(RenderSpec(**spec), here=False))
                t1 = time.time()
                rec = run_render(client, store, serial, use, progress=lambda stages: write_result(
                    path, {**out, "runs": {**out["runs"], mode: {"stages": stages, "partial": True}}}))
                rec["wall_s"] = round(time.time() - t1, 2)
                rec["store"] = store.url
                rec["vae_dtype"] = store.spec().vae_dtype  # the resolved preset where the spec leaves it unset
                rec["extrapolated_s"] = extrapolate(rec["stages"], args)
                if mode == "split-eager":
                    rec["extrapolated_split_s"] = {s: extrapolate_split(rec["stages"], args, s, out["runs"])
                                                   for s in args.full_switch}
                out["runs"][mode] = rec
                write_result(path, out)  # written now: a call cut short keeps what it measured
                print(size, mode, json.dumps({k: rec[k] for k in ("wall_s", "extrapolated_s")}), flush=True)
            compare(out, args)
            write_result(path, out)
            print(size, json.dumps({m: {k: v for k, v in r.items() if k.startswith(("max_abs", "speedup"))}
                                    for m, r in out["runs"].items()}), flush=True)


STEP_KEY = {"sketch": re.compile(r"sketch-advance-(\d+)-"), "refine": re.compile(r"advance-s(\d+)-")}


def step_ends(stream: list, stage: str) -> list[float]:
    """When each denoising step of `stage` ended: its last `advance` task's stop, in step order."""
    ends: dict[int, float] = {}
    for t in stream:
        m = STEP_KEY[stage].search(str(t["key"]))
        for ss in t.get("startstops", ()) if m else ():
            if ss["action"] == "compute":
                ends[int(m.group(1))] = max(ends.get(int(m.group(1)), 0.0), ss["stop"])
    return [ends[i] for i in sorted(ends)]


def step_period(ends: list[float]) -> float | None:
    """The steady-state seconds per step: the median gap between consecutive steps' ends (None under two)."""
    gaps = sorted(b - a for a, b in zip(ends, ends[1:]))
    return round(gaps[len(gaps) // 2], 3) if gaps else None


def extrapolate(stages: dict, args) -> dict:
    """The full schedule's stage times: the run's stage plus its missing steps at the measured steady step
    period, so a stage's fixed costs (the text encoding, the first step's reads, the final write) count
    once; the VAE stages as measured. Where a stage ran one step, its time scaled per step (an upper bound)."""
    s = {"upscale": stages["upscale"]["s"], "decode_export": stages["decode_export"]["s"]}
    for name, run, full in (("sketch", args.steps, args.full_steps), ("refine", args.refine_steps, args.full_refine)):
        period = stages[name].get("step_s")
        s[name] = stages[name]["s"] + (full - run) * period if period else stages[name]["s"] / run * full
    s = {k: s[k] for k in ("sketch", "upscale", "refine", "decode_export")}
    return {**{k: round(v, 1) for k, v in s.items()}, "total": round(sum(s.values()), 1)}


def extrapolate_split(stages: dict, args, switch: int, runs: dict) -> dict:
    """split-eager's full-schedule stage times with the switch at `switch` of --full-steps: each model's
    steps at its measured period (the sketch's large steps are those before --switch-step; the refinement's
    large-model period from the same call's `after-eager` run, needed only where `switch` falls inside the
    refinement)."""
    ends = stages["sketch"].get("step_ends_s") or []
    run_switch = args.switch_step
    large = step_period(ends[:run_switch])
    small = step_period(ends[run_switch:])
    if large is None or small is None:
        return {"error": "the sketch needs two steps of each model to measure their periods"}
    sketch = stages["sketch"]["s"] + (switch - run_switch) * large + \
        ((args.full_steps - switch) - (args.steps - run_switch)) * small
    first_refined = args.full_steps - args.full_refine
    large_refine = max(0, switch - first_refined)
    small_period = stages["refine"].get("step_s") or stages["refine"]["s"] / args.refine_steps
    refine = stages["refine"]["s"] + (args.full_refine - large_refine - args.refine_steps) * small_period
    if large_refine:
        eager = runs.get("after-eager", {}).get("stages", {}).get("refine", {}).get("step_s")
        if eager is None:
            return {"error": f"a switch at {switch} falls inside the refinement: needs an after-eager run"}
        refine += large_refine * eager
    s = {"sketch": sketch, "upscale": stages["upscale"]["s"], "refine": refine,
         "decode_export": stages["decode_export"]["s"]}
    return {**{k: round(v, 1) for k, v in s.items()}, "total": round(sum(s.values()), 1),
            "large_refine_steps": large_refine, "sketch_large_step_s": large, "sketch_small_step_s": small}


def compare(out: dict, args) -> None:
    """Each run's final latent and video against the first run of the same kind (eager or compiled: the
    same video whatever the worker count) and against `before`, and the speedup over `before`; the split
    render's speedup over the large model alone (`after-eager`) at each full-schedule switch."""
    import numpy as np

    from storage import RenderStore

    runs = out["runs"]
    loaded = {m: RenderStore.open(r["store"]) for m, r in runs.items() if m != "split-eager"}
    loaded = {m: (st.load_stage("final"), st.video_frames().astype(int)) for m, st in loaded.items()}
    for name, r in runs.items():
        if name == "split-eager":  # another model's steps: a different video by design
            continue
        same_kind = next(m for m in loaded if (m == "before") == (name == "before"))
        for ref in dict.fromkeys([same_kind, "before"]):
            if ref in loaded and ref != name:
                r[f"max_abs_latent_diff_vs_{ref}"] = float((loaded[name][0] - loaded[ref][0]).abs().max())
                r[f"max_abs_video_diff_vs_{ref}"] = int(np.abs(loaded[name][1] - loaded[ref][1]).max())
        if "before" in runs:
            r["speedup_vs_before"] = round(runs["before"]["extrapolated_s"]["total"] / r["extrapolated_s"]["total"], 3)
    alone = runs.get("after-eager", {}).get("extrapolated_s", {}).get("total")
    split = runs.get("split-eager", {})
    if alone and "extrapolated_split_s" in split:  # the split's runs came first: extrapolate again with both
        split["extrapolated_split_s"] = {s: extrapolate_split(split["stages"], args, s, runs)
                                         for s in args.full_switch}
        split["speedup_vs_large_alone"] = {s: round(alone / e["total"], 3)
                                           for s, e in split["extrapolated_split_s"].items() if "total" in e}

if __name__ == "__main__":
    main()
