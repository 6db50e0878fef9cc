"""Orchestration cost of the distributed refine on CPU: the same refinement in process and on a Dask
cluster of 1 and 2 worker processes (the embedded model, whose 7 ms tile forwards make the per-task
cost visible), plus tasks per tile-step and bytes moved against an all-gather.

    .venv/bin/python bench/cluster_overhead.py --out bench/results/cluster_overhead_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("SUPERGEN_FORCE_CPU", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment, write_result  # noqa: E402


def main():
    from distributed import Client

    import supergen
    from flows.cluster import make_cluster
    from flows.refine import refine_on_cluster
    from storage import RenderStore
    from supergen import RenderSpec
    from supergen.executor import prepare, render

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/cluster_overhead_cpu.json")
    args = ap.parse_args()
    spec = prepare(RenderSpec(prompt="a red circle moving", width=256, height=256, steps=12, refine_steps=10,
                              checkpoint_every=0))
    inproc = [supergen.render(spec).timings["refine"] for _ in range(3)]
    rows = [{"executor": "in-process", "refine_s": round(statistics.median(inproc), 3)}]
    tile_steps = 16 * spec.refine_steps
    for n in (1, 2):
        with make_cluster(n) as cluster, Client(cluster, set_as_default=False) as c:
            d = tempfile.mkdtemp()
            store = RenderStore.create(d + "/s", spec)
            ref = render(spec, sink=store)  # fills the sketch/start stages of the store
            runs = []
            for _ in range(3):
                store.group.attrs.pop("checkpoints_latest", None)
                t0 = time.perf_counter()
                stats = refine_on_cluster(c, store, spec)
                runs.append((time.perf_counter() - t0, stats))
            wall, stats = sorted(runs, key=lambda r: r[0])[1]
            s = stats.summary()
            rows.append({"executor": f"dask, {n} worker process(es)", "refine_s": round(wall, 3),
                         "tasks": s["tasks"], "tasks_per_tile_step": round(s["tasks"] / tile_steps, 2),
                         "busy_s": s["busy_s"], "bytes_moved": s["bytes_moved"],
                         "allgather_bytes": s["allgather_bytes"],
                         "overhead_per_tile_step_ms": round(1000 * (wall - rows[0]["refine_s"] / n) / tile_steps, 2),
                         "same_latent": bool((RenderStore.open(d + "/s").load_stage("final") - ref.latent).abs().max() == 0)})
            print(rows[-1], flush=True)
    result = environment(" ".join(["python"] + sys.argv))
    result.update(spec=spec.to_dict(), tile_steps=tile_steps, rows=rows)
    write_result(args.out, result)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
