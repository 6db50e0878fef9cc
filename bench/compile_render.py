"""`--compile` end to end: the default world render compiled in process with a cold and then a warm
compile cache, against eager (time, difference), and compiled on a Dask cluster of 2 workers that share
the cache (the same video as compiled in process?). CPU here; on GPUs `bench/gpu_tile.py --compile`
measures the big architectures' tile forwards.

    .venv/bin/python bench/compile_render.py --out bench/results/compile_render_cpu.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment, write_result  # noqa: E402

PROMPT = "a red striped circle moving left on a blue background"


def in_process(cache: str, compile: bool) -> dict:
    """One render in a fresh process (a compile starts from the on-disk cache alone): wall time, stage
    times and the final latent (saved for comparison)."""
    out = tempfile.mktemp(suffix=".pt")
    code = ("import sys, time, torch, supergen; t = time.time(); "
            f"r = supergen.render(supergen.RenderSpec(prompt={PROMPT!r}, compile={compile})); "
            f"torch.save({{'latent': r.latent, 'video': r.video}}, {out!r}); "
            "print(round(time.time() - t, 2), r.timings)")
    env = {**os.environ, "SUPERGEN_COMPILE_CACHE": cache}
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return {"wall_s": round(time.time() - t0, 2), "stdout": p.stdout.strip().splitlines()[-1], "result": out}


def on_cluster(cache: str, workers: int) -> str:
    from distributed import Client

    from flows.cluster import make_cluster
    from flows.render import run_stages
    from storage import RenderStore
    from supergen import RenderSpec
    from supergen.executor import prepare

    os.environ["SUPERGEN_COMPILE_CACHE"] = cache  # the workers inherit it
    spec = prepare(RenderSpec(prompt=PROMPT, compile=True))
    url = tempfile.mkdtemp() + "/s"
    with make_cluster(n_workers=workers) as cluster, Client(cluster) as client:
        store = RenderStore.create(url, spec)
        run_stages(client, store)
    return url


def main():
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/compile_render_cpu.json")
    args = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="inductor-")
    eager = in_process(cache, False)
    cold = in_process(cache, True)
    warm = in_process(cache, True)
    from storage import RenderStore

    stores, walls = {}, {}
    for n in (1, 2):
        t0 = time.time()
        stores[n] = RenderStore.open(on_cluster(cache, n))
        walls[f"{n}_workers"] = round(time.time() - t0, 2)
    ref, comp = torch.load(eager["result"]), torch.load(warm["result"])
    video = {n: torch.from_numpy(st.video_frames()) for n, st in stores.items()}
    latent = {n: st.load_stage("final") for n, st in stores.items()}

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max())

    result = environment(" ".join(["python"] + sys.argv))
    result.update(prompt=PROMPT, eager=eager, compiled_cold_cache=cold, compiled_warm_cache=warm,
                  compiled_on_cluster_wall_s=walls,
                  final_latent_max_diff_compiled_vs_eager_rel=rel(comp["latent"], ref["latent"]),
                  video_max_abs_diff_compiled_vs_eager=int((comp["video"].int() - ref["video"].int()).abs().max()),
                  same_video_1_vs_2_workers=bool(torch.equal(video[1], video[2])),
                  same_final_latent_1_vs_2_workers=bool(torch.equal(latent[1], latent[2])),
                  # in process torch runs 2 threads, each worker 1: Inductor's CPU kernels split reductions by
                  # thread count (GPU kernels do not depend on it)
                  final_latent_max_diff_cluster_vs_in_process_rel=rel(latent[2], comp["latent"]),
                  video_max_abs_diff_cluster_vs_in_process=int((video[2].int() - comp["video"].int()).abs().max()))
    for k in ("eager", "compiled_cold_cache", "compiled_warm_cache"):
        result[k].pop("result")
    write_result(args.out, result)
    print({k: v for k, v in result.items() if k not in ("versions",)}, flush=True)


if __name__ == "__main__":
    main()
