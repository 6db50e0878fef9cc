"""Issue 6, parts 2-4: stage 2 (tiled refinement) of a CogVideoX-1.5-5B-size model (random weights, DDIM,
no cache) at 2K or 4K, 41 frames, on one host's GPUs:

* the Prefect+Dask flow's refine stage on 1, 2, 4 GPUs (one LocalCUDACluster worker per GPU; the workers
  restricted per run) with each placement rule, and the in-process executor on one GPU: per-step times,
  scaling, the flow's overhead, idle time per worker, and whether every run gives the same latent; a
  task-stream profile of each flow run says where a worker's time goes (tile forwards, the bookkeeping
  tasks around them, transfers, idle);
* peak GPU memory per worker;
* the time of every stage (sketch, upscale/re-encode, refine, decode) at that size.

A reduced schedule (N = --steps, k = --refine-steps) keeps a run within a device call; a refinement step
costs the same at every schedule index, so per-step times extrapolate to the paper's 45 steps (and the
sketch's to 50).

    python3 bench/gpu_stage2.py --size 3840x2160 2560x1440 --out '$OUT/stage2_{size}.json'
    python3 bench/gpu_stage2.py --scale tiny --size 192x96 128x64 --frames 9 --out '/tmp/s2_{size}.json'  # CPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from archs import ARCHS  # noqa: E402


def build_cogvideox15(path: str, scale: str) -> str:
    """CogVideoX-1.5-5B's transformer and VAE configs with random weights, the DDIM scheduler the SuperGen
    authors used, and a one-layer T5 with the real 4096-wide output for the 4.7B text encoder (one call per
    render); saved with `save_pretrained` so workers load it the way users' models load."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline
    from transformers import T5Config, T5EncoderModel

    from archs import build
    from supergen.backends.tiny import t5_tokenizer

    if os.path.exists(os.path.join(path, "model_index.json")):
        return path
    device = "cuda" if torch.cuda.is_available() else "cpu"
    arch = ARCHS["cogvideox1.5-t2v-5b"]
    tr = build(arch, device, scale).cpu()
    tok = t5_tokenizer()
    d = 4096 if scale == "full" else 32
    te = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=d, d_kv=64, d_ff=1024, num_layers=1, num_heads=8,
                                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
    vae = (AutoencoderKLCogVideoX(scaling_factor=0.7) if scale == "full" else
           AutoencoderKLCogVideoX(latent_channels=16, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                  norm_num_groups=2, scaling_factor=0.7))
    sched = CogVideoXDDIMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                   timestep_spacing="trailing", clip_sample=False, snr_shift_scale=1.0,
                                   beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   set_alpha_to_one=True)
    pipe = CogVideoXPipeline(tokenizer=tok, text_encoder=te, vae=vae, transformer=tr, scheduler=sched)
    pipe.save_pretrained(path)
    if scale == "tiny":  # a native tile the CPU check can afford
        with open(os.path.join(path, "supergen.json"), "w") as f:
            json.dump({"native_size": [64, 32]}, f)
    return path


def _gpu_memory_reset():
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _gpu_memory_peak() -> float:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else 0.0


def flow_runs(specs: dict[str, dict], root: str, configs: list[tuple[int, str]], export: str | None,
              workers: int, done, with_in_process: bool = True) -> None:
    """One cluster for every size. Per size: sketch and upscale once (the flow's Prefect tasks, on the first
    worker), then the refine stage (the Prefect task the render flow runs) per (GPUs, balance) on a copy of
    that start latent; decode/export once for the size `export`. `done(size, record)` gets each size's
    record as soon as it is complete."""
    from distributed import Client
    from prefect import flow

    from flows.cluster import make_cluster
    from flows.refine import pin_kwargs, worker_names
    from supergen import RenderSpec
    from supergen.executor import prepare
    from tasks.model import ModelHolder

    @flow(name="supergen-stage2-bench")
    def bench_flow():
        with make_cluster(workers) as cluster, Client(cluster, set_as_default=False) as client:
            names = worker_names(client)
            client.register_plugin(ModelHolder())
            for size, spec in specs.items():
                out = {"workers": [str(n) for n in names],
                       "pinned_by_resource": all("resources" in v for v in pin_kwargs(client).values())}
                _one_size(client, names, os.path.join(root, size), prepare(RenderSpec(**spec)), configs,
                          size == export, out, lambda: done(size, out), with_in_process)
                done(size, out)

    bench_flow()


def _one_size(client, names, root, resolved, configs, export, out, save, with_in_process=True):
    from distributed import get_task_stream

    from flows import render as F
    from storage import RenderStore
    from tasks import stages

    out["runs"] = []
    base = RenderStore.create(os.path.join(root, "base"), resolved)
    t0 = time.perf_counter()
    client.gather([client.submit(stages.warm_worker, base, "warm", workers=[w], pure=False) for w in names])
    out["model_and_conditioning_all_workers_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    sk = F.sketch(client, base)
    out["sketch_s"], out["sketch_forwards"] = round(time.perf_counter() - t0, 2), sk.forwards
    t0 = time.perf_counter()
    F.upscale(client, base)
    out["upscale_s"] = round(time.perf_counter() - t0, 2)
    start, sketch_latent = base.load_stage("start"), base.load_stage("sketch")
    for gpus, balance in configs:
        use = names[:gpus]
        store = RenderStore.create(os.path.join(root, f"g{gpus}-{balance}"), resolved)
        store.save_stage("sketch", sketch_latent)
        store.save_stage("start", start)
        rid = uuid.uuid4().hex[:8]
        client.gather([client.submit(stages.warm_worker, store, rid, workers=[w], pure=False) for w in use])
        client.run(_gpu_memory_reset)
        t0 = time.perf_counter()
        with get_task_stream(client) as stream:
            refined = F.refine(client, store, balance, rid, use)
        wall = time.perf_counter() - t0
        peaks = client.run(_gpu_memory_peak)
        info = client.scheduler_info(n_workers=-1)["workers"]
        named = [{**r, "worker": info.get(r.get("worker"), {}).get("name", r.get("worker"))} for r in stream.data]
        steps = refined["per_step"]
        run = {"gpus": gpus, "balance": balance, "refine_stage_s": round(wall, 3),
               "step_s": [round(s["wall_s"], 3) for s in steps],
               "step_median_s": round(statistics.median(s["wall_s"] for s in steps), 3),
               "peak_memory_gib": {str(info[a]["name"]): v for a, v in peaks.items() if info[a]["name"] in use},
               **{k: refined[k] for k in ("tasks", "forwards", "bytes_moved", "allgather_bytes", "busy_s", "idle_s",
                                          "branches_moved")},
               "idle_s_per_step": [s["idle_s"] for s in steps], "store": store.url,
               "task_profile": task_profile(named, len(steps))}
        out["runs"].append(run)
        save()
        print(json.dumps({k: v for k, v in run.items() if k != "idle_s_per_step"}), flush=True)
    if with_in_process:  # the in-process executor on GPU 0 while the workers idle (models stay resident)
        out["in_process"], ref = in_process(resolved.to_dict(), start)
    else:  # the reference is then the first flow run
        ref = RenderStore.open(out["runs"][0]["store"]).load_stage("final")
    _compare(out, ref)
    save()
    if export:
        t0 = time.perf_counter()
        try:
            F.export(client, store, {}, refined, 0, use)
            out["decode_export_s"] = round(time.perf_counter() - t0, 2)
        except Exception as e:  # keep what was measured
            out["decode_export_error"] = f"{type(e).__name__}: {str(e)[:300]}"


def task_profile(records: list[dict], steps: int) -> dict:
    """Per worker and refinement step: seconds computing each kind of task (the key's first word: denoise,
    branch, gather, advance, pieces, strips, ...), seconds receiving inputs, and the seconds covered by no
    task (where the GPU waits on the driver or on another worker)."""
    by_worker: dict[str, dict] = {}
    for r in records:
        w = by_worker.setdefault(str(r.get("worker")), {"compute": {}, "transfer_s": 0.0, "spans": []})
        kind = str(r["key"]).split("-", 1)[0]
        for ss in r.get("startstops", []):
            d = ss["stop"] - ss["start"]
            if ss["action"] == "compute":
                w["compute"][kind] = w["compute"].get(kind, 0.0) + d
            elif ss["action"] == "transfer":
                w["transfer_s"] += d
            w["spans"].append((ss["start"], ss["stop"]))
    out = {}
    for name, w in by_worker.items():
        spans = sorted(w["spans"])
        covered, end = 0.0, None
        for a, b in spans:  # union of the task intervals
            if end is None or a > end:
                covered, end = covered + (b - a), b
            elif b > end:
                covered, end = covered + (b - end), b
        window = spans[-1][1] - spans[0][0] if spans else 0.0
        out[name] = {"per_step_compute_s": {k: round(v / steps, 4) for k, v in sorted(w["compute"].items())},
                     "per_step_transfer_s": round(w["transfer_s"] / steps, 4),
                     "per_step_uncovered_s": round((window - covered) / steps, 4)}
    return out


def _compare(out, ref):
    """Same latent as in process? The flow's overhead on one GPU, speedup and scaling efficiency."""
    from storage import RenderStore

    ip = out.get("in_process")
    vs = "in_process" if ip else f"{out['runs'][0]['gpus']}gpu_{out['runs'][0]['balance']}"
    for run in out["runs"]:
        latent = RenderStore.open(run["store"]).load_stage("final")
        run[f"max_abs_latent_diff_vs_{vs}"] = float((latent - ref).abs().max())
        if ip and run["gpus"] == 1:  # the flow's cost over the in-process executor on the same GPU
            run["overhead_vs_in_process"] = round(run["step_median_s"] / ip["step_median_s"] - 1, 4)
    one = next((x for x in out["runs"] if x["gpus"] == 1), None)
    for run in out["runs"]:
        if one:
            run["speedup_vs_flow_1gpu"] = round(one["step_median_s"] / run["step_median_s"], 3)
            run["scaling_efficiency"] = round(run["speedup_vs_flow_1gpu"] / run["gpus"], 3)


def in_process(spec: dict, start: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """The in-process executor's refinement loop (`supergen.refine.refine_step`) on one GPU, per step."""
    from supergen import RenderSpec
    from supergen.backends import load_backend
    from supergen.executor import prepare
    from supergen.refine import RefinePlan, refine_step

    s = prepare(RenderSpec.from_dict(spec))
    t0 = time.perf_counter()
    be = load_backend(s.model, s.device, s.dtype)
    load_s = time.perf_counter() - t0
    cond = be.encode_conditioning(s.prompt, s.negative_prompt, s.guidance, None, s.canvas_size, s.frames, s.seed)
    plan = RefinePlan.from_spec(s, be.info.vae_spatial)
    x, state, steps = start.to(be.device), {}, []
    _gpu_memory_reset()
    for i in range(plan.refine_steps):
        t0 = time.perf_counter()
        x, state, grid = refine_step(be, cond, plan, i, x, state, seed=s.seed)
        if x.is_cuda:
            torch.cuda.synchronize()
        steps.append(time.perf_counter() - t0)
    return {"load_s": round(load_s, 2), "tiles_per_step": len(grid), "step_s": [round(t, 3) for t in steps],
            "step_median_s": round(statistics.median(steps), 3), "refine_s": round(sum(steps), 3),
            "peak_memory_gib": _gpu_memory_peak()}, x.cpu()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", nargs="+", default=["3840x2160"], help="WxH of each target")
    ap.add_argument("--frames", type=int, default=41)
    ap.add_argument("--steps", type=int, default=4, help="N: the schedule (the sketch runs all of it)")
    ap.add_argument("--refine-steps", type=int, default=3, help="k: refinement steps timed")
    ap.add_argument("--configs", default="1:locality,2:branches,4:tiles,4:branches",
                    help="GPUs:balance of each flow run, comma separated")
    ap.add_argument("--vae-tile", type=int, help="VAE tile in pixels [default: the model's preset]")
    ap.add_argument("--model-dir", default=os.path.join(tempfile.gettempdir(), "supergen-bench", "cogvideox15-5b"))
    ap.add_argument("--no-in-process", action="store_true", help="flow runs only")
    ap.add_argument("--scale", choices=["full", "tiny"], default="full")
    ap.add_argument("--export", help="WxH whose decode/export stage runs and is timed, or 'none' "
                                     "[default: the first size]")
    ap.add_argument("--out", required=True, help="JSON path per size; {size} is replaced by WxH")
    args = ap.parse_args()
    from common import environment, write_result

    gpus = torch.cuda.device_count()
    configs = [(int(g), b) for g, b in (c.split(":") for c in args.configs.split(","))]
    workers = gpus or 2  # the CPU check: two CPU workers stand in for GPUs
    configs = [c for c in configs if c[0] <= workers]
    env = environment(" ".join(["python3"] + sys.argv))
    t0 = time.time()
    model = build_cogvideox15(args.model_dir + ("-tiny" if args.scale == "tiny" else ""), args.scale)
    build_s = round(time.time() - t0, 1)
    specs, results = {}, {}
    for size in args.size:
        width, height = (int(v) for v in size.split("x"))
        specs[size] = dict(prompt="a lion walking through tall grass at sunset", model=model, width=width,
                           height=height, frames=args.frames, steps=args.steps, refine_steps=args.refine_steps,
                           cache="none", checkpoint_every=0, vae_tile=args.vae_tile,
                           seed=0, **({"device": "cuda", "dtype": "bfloat16"} if gpus else {}))
    root = tempfile.mkdtemp(prefix="stage2-")

    def save(size):
        write_result(args.out.replace("{size}", size), results[size])

    def flow_done(size, record):
        results[size] = {**env, "model_build_s": build_s, "spec": specs[size], "gpus": gpus, "scale": args.scale,
                         "flow": record}
        save(size)  # written now: a call cut short keeps what it measured

    flow_runs(specs, root, configs, args.export or args.size[0], workers, flow_done, not args.no_in_process)
    for size, r in results.items():
        flow, ip = r["flow"], r["flow"].get("in_process")
        r["extrapolated"] = {"sketch_50_steps_s": round(flow["sketch_s"] / args.steps * 50, 1),
                             "refine_45_steps_s": {f"{x['gpus']}gpu-{x['balance']}": round(x["step_median_s"] * 45, 1)
                                                   for x in flow["runs"]}}
        if ip:
            r["extrapolated"]["in_process_refine_45_steps_s"] = round(ip["step_median_s"] * 45, 1)
        save(size)
        print(size, json.dumps(r["extrapolated"]), json.dumps(ip))
        for x in flow["runs"]:
            print(size, json.dumps({k: v for k, v in x.items() if k not in ("store", "idle_s_per_step")}))


if __name__ == "__main__":
    main()
