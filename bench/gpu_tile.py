"""Issue 6, part 1 and 3: one native tile-step of a real architecture (random bf16 weights) on one GPU:
FLOPs counted first (torch's FlopCounterMode, attention added analytically where it does not count it),
then CUDA-event timing of single-branch forwards after a warm-up, the median; a tile-step with CFG is
`branches` such forwards (supergen's backends run CFG branches as separate calls). MFU is against the bf16
matmul peak measured on the same GPU in the same run. With --untiled, also one forward over the whole
canvas at each given size: its time and peak memory, or where it runs out of memory.

    python3 bench/gpu_tile.py --arch cogvideox1.5-t2v-5b --untiled 2560x1440x41 3840x2160x41 --out $OUT/x.json
    python3 bench/gpu_tile.py --arch wan2.1-t2v-1.3b --scale tiny --out /tmp/x.json      # CPU check
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from archs import ARCHS, build, image_tokens, tile_inputs  # noqa: E402


def timed(fn, device) -> float:
    """Seconds of fn(), by CUDA events on a GPU."""
    if device.type == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def matmul_peak(device, sizes=(4096, 8192, 16384), iters=30) -> dict:
    """Best bf16 matmul throughput (TFLOP/s) over square sizes: the roofline MFU is measured against."""
    if device.type != "cuda":
        sizes, iters = (256,), 3
    best = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        t = timed(lambda: [a @ b for _ in range(iters)], device)
        best[n] = 2 * n**3 * iters / t / 1e12
        del a, b
    return {"tflops_by_size": {str(k): round(v, 1) for k, v in best.items()}, "tflops": round(max(best.values()), 1)}


def count_flops(model, kwargs) -> dict:
    """FLOPs of one forward: matmuls from FlopCounterMode; attention from the counter when it counts the
    SDPA kernel in use, else 4*B*H*Lq*Lk*D per call."""
    from torch.utils.flop_counter import FlopCounterMode

    sdpa = torch.nn.functional.scaled_dot_product_attention
    analytic = [0]

    def counting(*a, **kw):
        q, k = (a[0] if a else kw["query"]), (a[1] if len(a) > 1 else kw["key"])
        analytic[0] += 4 * q.shape[0] * q.shape[1] * q.shape[-2] * k.shape[-2] * q.shape[-1]
        return sdpa(*a, **kw)

    torch.nn.functional.scaled_dot_product_attention = counting
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(**kwargs)
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
    ops = {str(k): v for k, v in fc.get_flop_counts().get("Global", {}).items()}
    counted_attn = sum(v for k, v in ops.items() if "scaled_dot_product" in k)
    total = fc.get_total_flops() + (0 if counted_attn else analytic[0])
    return {"flops": int(total), "attention_flops": int(counted_attn or analytic[0]),
            "attention_counted_by": "FlopCounterMode" if counted_attn else "analytic"}


def forward_times(model, kwargs, device, n: int) -> list[float]:
    with torch.no_grad():
        return [timed(lambda: model(**kwargs), device) for _ in range(n)]


def untiled(model, arch, device, size, scale) -> dict:
    """One forward over the whole canvas: seconds and peak memory, or the out-of-memory it hits."""
    out = {"size": "x".join(map(str, size)), "tokens": image_tokens(arch, size)}
    try:
        kw = tile_inputs(arch, model, device, size, scale)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        out["forward_s"] = round(forward_times(model, kw, device, 1)[0], 3)
        if device.type == "cuda":
            out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    except torch.cuda.OutOfMemoryError as e:
        out["oom"] = str(e).splitlines()[0][:200]
    finally:
        kw = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", required=True, choices=sorted(ARCHS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--forwards", type=int, default=4, help="timed single-branch forwards after the warm-up")
    ap.add_argument("--untiled", nargs="*", default=[], help="WxHxF canvases for one untiled forward each")
    ap.add_argument("--scale", choices=["full", "tiny"], default="full")
    args = ap.parse_args()
    from common import environment, write_result

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    arch = ARCHS[args.arch]
    result = environment(" ".join(["python3"] + sys.argv))
    result.update(arch=arch.name, diffusers_class=arch.cls, config=arch.config, scale=args.scale, note=arch.note,
                  native_tile={"width": arch.native[0], "height": arch.native[1], "frames": arch.native[2]},
                  image_tokens=image_tokens(arch), text_tokens=arch.text_tokens, branches=arch.branches)
    result["matmul_peak"] = matmul_peak(device)
    t0 = time.time()
    model = build(arch, device, args.scale)
    result["params"] = sum(p.numel() for p in model.parameters())
    result["build_s"] = round(time.time() - t0, 1)
    kw = tile_inputs(arch, model, device, scale=args.scale)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result.update(count_flops(model, kw))  # also the warm-up forward
    times = forward_times(model, kw, device, args.forwards)
    med = statistics.median(times)
    result.update(forward_s=[round(t, 4) for t in times], forward_median_s=round(med, 4),
                  tile_step_s=round(arch.branches * med, 4),
                  tflops_achieved=round(result["flops"] / med / 1e12, 1),
                  mfu_vs_measured_peak=round(result["flops"] / med / 1e12 / result["matmul_peak"]["tflops"], 3))
    if device.type == "cuda":
        result["tile_peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    del kw
    result["untiled"] = [untiled(model, arch, device, tuple(int(v) for v in s.split("x")), args.scale)
                         for s in args.untiled]
    write_result(args.out, result)
    print({k: result[k] for k in ("arch", "params", "image_tokens", "flops", "forward_median_s", "tile_step_s",
                                  "tflops_achieved", "mfu_vs_measured_peak")}, result["untiled"], flush=True)


if __name__ == "__main__":
    main()
