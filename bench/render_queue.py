"""Many renders, one cluster: a queue of renders started together on one Dask cluster (each its own
store and driver thread, as concurrent Prefect flow runs drive them), with the busy fraction of every
worker over the queue (compute time of its tasks over the queue's wall time), the renders' stage times,
and whether each render's video is the one it gives alone.

    .venv/bin/python bench/render_queue.py --out bench/results/render_queue_cpu.json      # the world model
    python3 bench/render_queue.py --model DIR --device cuda --dtype bfloat16 --width 2560 --height 1440 ...
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import busy_fractions, environment, timeline, write_result  # noqa: E402


def main():
    from distributed import Client, get_task_stream

    from flows.cluster import make_cluster
    from flows.refine import workers_info
    from flows.render import run_stages
    from storage import RenderStore
    from supergen import RenderSpec
    from supergen.executor import prepare

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/render_queue_cpu.json")
    ap.add_argument("--renders", type=int, default=4)
    ap.add_argument("--workers", type=int, help="CPU workers (default: one per GPU, else 2)")
    ap.add_argument("--model", default="world")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--width", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--frames", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--refine-steps", type=int)
    ap.add_argument("--vae-tile", type=int)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    base = {k: v for k, v in dict(model=args.model, device=args.device, dtype=args.dtype, width=args.width,
                                  height=args.height, frames=args.frames, steps=args.steps,
                                  refine_steps=args.refine_steps, vae_tile=args.vae_tile, compile=args.compile,
                                  checkpoint_every=0).items() if v is not None}
    prompts = ["a red striped circle moving left on a blue background",
               "a yellow square moving up on a purple gradient background",
               "a white diamond bouncing on a green background",
               "a cyan checkered triangle moving right on a black background"]
    specs = [prepare(RenderSpec(prompt=prompts[k % len(prompts)], seed=k, **base), here=False)
             for k in range(args.renders)]
    root = tempfile.mkdtemp()
    rows, errors = [None] * len(specs), []
    with make_cluster(n_workers=args.workers) as cluster, Client(cluster) as client:
        alone = RenderStore.create(f"{root}/alone", specs[0])
        t = time.perf_counter()
        run_stages(client, alone)  # also loads the model on every worker: the queue measures renders, not loads
        alone_s = time.perf_counter() - t

        def go(k):
            try:
                store = RenderStore.create(f"{root}/r{k}", specs[k])
                t = time.perf_counter()
                out = run_stages(client, store)
                rows[k] = {"prompt": specs[k].prompt, "wall_s": round(time.perf_counter() - t, 2),
                           "timings_s": {n: round(v, 2) for n, v in out["timings"].items()}}
            except Exception:  # reported below
                import traceback

                errors.append(traceback.format_exc())

        with get_task_stream(client) as ts:
            t0 = time.time()
            threads = [threading.Thread(target=go, args=(k,)) for k in range(len(specs))]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            t1 = time.time()
        info = workers_info(client)
        busy = busy_fractions(ts.data, info, t0, t1)
        tasks = timeline(ts.data, info, t0)  # where a worker's idle time sits
    same = bool(RenderStore.open(f"{root}/r0").load_stage("final").equal(RenderStore.open(f"{root}/alone")
                                                                          .load_stage("final")))
    result = environment(" ".join(["python"] + sys.argv))
    result.update(spec=specs[0].to_dict(), renders=rows, errors=errors, queue_wall_s=round(t1 - t0, 2),
                  one_render_alone_s=round(alone_s, 2), busy_fraction=busy,
                  queue_speedup_vs_serial=round(alone_s * len(specs) / (t1 - t0), 3),
                  first_render_same_as_alone=same, target_busy=0.95, timeline=tasks)
    write_result(args.out, result)
    print({k: result[k] for k in ("queue_wall_s", "one_render_alone_s", "busy_fraction", "queue_speedup_vs_serial",
                                  "first_render_same_as_alone", "errors")}, flush=True)


if __name__ == "__main__":
    main()
