"""Cache-guided rebalancing: idle time per worker per step with and without it, on a CPU cluster
of 3 worker processes, the embedded model with the region cache skipping tiles.

The same render runs with each placement rule: `locality` (each window where most of its cells are),
`tiles` (computing tiles moved to the workers the cache left idle) and `branches` (plus CFG branches split
over workers). Per step it records the model calls per worker (the balance, free of timing noise), the
busiest worker's calls (the step's length in model calls) and the idle seconds per worker. Every rule
must give the same latent.

    .venv/bin/python bench/rebalance_cpu.py --out bench/results/rebalance_cpu.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("SUPERGEN_FORCE_CPU", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment, write_result  # noqa: E402


def main():
    from distributed import Client

    from flows.cluster import make_cluster
    from flows.render import run_stages
    from storage import RenderStore
    from supergen import RenderSpec
    from supergen.executor import prepare

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/rebalance_cpu.json")
    ap.add_argument("--workers", type=int, default=3)
    args = ap.parse_args()
    spec = prepare(RenderSpec(prompt="a red circle moving", width=320, height=320, frames=9, steps=14,
                              refine_steps=12, cache="region", cache_threshold=5.0, cache_warmup=2,
                              checkpoint_every=0, seed=1))
    result = environment(" ".join(["python3"] + sys.argv))
    result.update(spec=spec.to_dict(), workers=args.workers, runs={})
    finals = {}
    with make_cluster(args.workers) as cluster, Client(cluster, set_as_default=False) as client:
        for balance in ("locality", "tiles", "branches"):
            store = RenderStore.create(os.path.join(tempfile.mkdtemp(), "s"), spec)
            out = run_stages(client, store, balance=balance)
            r = out["refine"]
            steps = r["per_step"]
            makespan = [max(s["calls"].values()) for s in steps]
            result["runs"][balance] = {
                "refine_s": round(out["timings"]["refine"], 3),
                "calls_per_worker_per_step": [s["calls"] for s in steps],
                "busiest_calls_per_step": makespan,
                "busiest_calls_total": sum(makespan),
                "ideal_calls_total": sum(-(-sum(s["calls"].values()) // args.workers) for s in steps),
                "computing_tiles_per_step": [s["computed"] for s in steps],
                "idle_s_per_worker_per_step": [s["idle_s"] for s in steps],
                "idle_s_total": r["idle_s"], "busy_s_total": r["busy_s"],
                "idle_fraction": round(r["idle_s"] / (r["idle_s"] + r["busy_s"]), 4),
                "branches_moved": r["branches_moved"], "bytes_moved": r["bytes_moved"],
                "skip_ratio": r["cache"].get("skip_ratio"),
            }
            finals[balance] = store.load_stage("final")
            print(balance, {k: v for k, v in result["runs"][balance].items() if "per_step" not in k}, flush=True)
    base = finals["locality"]
    result["max_abs_latent_diff_vs_locality"] = {b: float((x - base).abs().max()) for b, x in finals.items()}
    write_result(args.out, result)
    print(result["max_abs_latent_diff_vs_locality"])


if __name__ == "__main__":
    main()
