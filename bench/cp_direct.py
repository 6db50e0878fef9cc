"""The peer a Wan user would pick for 2K on several GPUs: diffusers' native context parallelism (Ulysses
over every GPU of the process group) running the transformer directly on the whole canvas, no tiles.
One process per GPU (torchrun); random bf16 weights of the published config; one warm-up forward, then
timed forwards of one CFG branch; the full render's denoising time is 2 x steps such forwards.

    torchrun --nproc-per-node 2 bench/cp_direct.py --arch wan2.1-t2v-14b --size 2560x1440x81 --out $OUT/cp.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from archs import ARCHS, build, image_tokens, tile_inputs  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="wan2.1-t2v-14b", choices=[a for a in ARCHS if a.startswith("wan")])
    ap.add_argument("--size", default="2560x1440x81", help="WxHxF of the canvas in pixels")
    ap.add_argument("--forwards", type=int, default=1, help="timed forwards after the warm-up")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=50, help="the full schedule, for the extrapolation")
    ap.add_argument("--scale", choices=["full", "tiny"], default="full")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from diffusers import ContextParallelConfig

    from common import environment, write_result

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    arch = ARCHS[args.arch]
    model = build(arch, device, args.scale)
    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    size = tuple(int(v) for v in args.size.split("x"))
    kw = tile_inputs(arch, model, device, size if args.scale == "full" else None, args.scale)
    times, warm = [], []
    with torch.no_grad():
        for i in range(args.warmup + args.forwards):
            if device.type == "cuda":
                torch.cuda.synchronize()
            dist.barrier()
            t0 = time.perf_counter()
            model(**kw)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dist.barrier()
            (times if i >= args.warmup else warm).append(time.perf_counter() - t0)
            if rank == 0:
                print(f"forward {i}: {time.perf_counter() - t0:.2f} s", flush=True)
    if rank == 0:
        fwd = sum(times) / len(times)
        result = environment(" ".join(["torchrun"] + sys.argv))
        result.update(peer="diffusers context parallelism (Ulysses), direct whole-canvas forward",
                      arch=args.arch, size=args.size, gpus=world, tokens=image_tokens(arch, size),
                      forward_s=[round(t, 2) for t in times], forward_mean_s=round(fwd, 2),
                      warmup_forward_s=[round(t, 2) for t in warm],
                      peak_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda"
                      else 0.0,
                      denoise_full_schedule_s=round(fwd * 2 * args.steps, 1),
                      note=f"{args.steps} steps x 2 CFG branches x one forward; VAE and text encoder not counted")
        write_result(args.out, result)
        print(json.dumps(result), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
