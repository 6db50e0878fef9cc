"""Issue 6, part 1 and 3: one native tile-step of a real architecture (random bf16 weights) on one GPU:
FLOPs counted first (torch's FlopCounterMode, attention added analytically where it does not count it),
then CUDA-event timing of single-branch forwards after a warm-up, the median; a tile-step with CFG is
`branches` such forwards (supergen's backends run CFG branches as separate calls). MFU is against the bf16
matmul peak measured on the same GPU in the same run. The forwards are timed under each --attention kernel
order (`kernels`), and each fused attention kernel alone on the architecture's attention shape;
MFU is reported for the fastest order. With --untiled, also one forward over the whole canvas at each given
size (fastest order): its time and peak memory, or where it runs out of memory.

    python3 bench/gpu_tile.py --arch cogvideox1.5-t2v-5b --untiled 2560x1440x41 3840x2160x41 --out $OUT/x.json
    python3 bench/gpu_tile.py --arch wan2.1-t2v-1.3b --scale tiny --out /tmp/x.json      # CPU check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from archs import ARCHS, build, image_tokens, tile_inputs  # noqa: E402



ORDERS = ("torch", "cudnn", "flash", "efficient")


@contextmanager
def kernels(order: str = "torch"):
    """SDPA kernel priority for the calls inside: torch's own order, or one kernel first (torch skips a kernel
    that cannot take a call, e.g. flash with a mask, and falls through the rest)."""
    if order == "torch":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rest = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]
    first = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION}[order]
    with sdpa_kernel([first] + [b for b in rest if b != first], set_priority=True):
        yield


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


def forward_times(model, kwargs, device, n: int, order: str = "torch") -> list[float]:
    with torch.no_grad(), kernels(order):
        return [timed(lambda: model(**kwargs), device) for _ in range(n)]


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out.sample


def compiled_forwards(model, kwargs, device, n: int, order: str, eager: dict) -> dict:
    """The tile forward as `--compile` runs it (`supergen.compiled`: static shapes, Inductor's cache):
    the first call (compile, or a load from a warm cache), the steady forwards, MFU, and the largest
    difference to eager relative to the output's largest magnitude."""
    with torch.no_grad(), kernels(order):
        ref = _first(model(**kwargs)).float()
        model.compile(dynamic=False)
        first = timed(lambda: model(**kwargs), device)
        out = _first(model(**kwargs)).float()
    times = forward_times(model, kwargs, device, n, order)
    med = statistics.median(times)
    return {"first_call_s": round(first, 2), "forward_s": [round(t, 4) for t in times], "forward_median_s": round(med, 4),
            "speedup_vs_eager": round(eager["forward_median_s"] / med, 3),
            "mfu_vs_measured_peak": round(eager["flops"] / med / 1e12 / eager["matmul_peak"]["tflops"], 3),
            "max_abs_diff_vs_eager_rel": float((out - ref).abs().max() / ref.abs().max()),
            "cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}


def unmasked_forwards(model, kwargs, device, n: int, order: str, result: dict) -> dict:
    """The forwards again as supergen's HunyuanVideo backends run them: 1.0 with every attention's mask
    dropped (the all-true text mask of an unpadded prompt, `UnmaskedAttention`), 1.5 attending among the
    valid tokens alone (`ValidTokensAttention`): seconds, MFU and the largest difference to the masked
    forward's output."""
    from supergen.backends.hunyuan import UnmaskedAttention, ValidTokensAttention, _valid_tokens

    with torch.no_grad(), kernels(order):
        ref = model(**kwargs)[0]
    blocks = list(model.transformer_blocks) + list(getattr(model, "single_transformer_blocks", []))
    v15 = not hasattr(model, "single_transformer_blocks")
    valid = _valid_tokens(kwargs, kwargs["image_embeds"]) if v15 else None  # as the backend sets it, once a call
    for b in blocks:
        b.attn.set_processor((ValidTokensAttention if v15 else UnmaskedAttention)(b.attn.processor))
        if v15:
            b.attn.processor.on, b.attn.processor.valid = True, valid
        else:
            b.attn.processor.drop = True
    try:
        forward_times(model, kwargs, device, 1, order)  # warm-up
        times = forward_times(model, kwargs, device, n, order)
        with torch.no_grad(), kernels(order):
            out = model(**kwargs)[0]
    finally:
        for b in blocks:
            b.attn.set_processor(b.attn.processor.inner)
    med = statistics.median(times)
    return {"forward_s": [round(t, 4) for t in times], "forward_median_s": round(med, 4),
            "speedup_vs_masked": round(result["forward_median_s"] / med, 3),
            "mfu_vs_measured_peak": round(result["flops"] / med / 1e12 / result["matmul_peak"]["tflops"], 3),
            "max_abs_diff_vs_masked_rel": float((out - ref).abs().max() / ref.abs().max())}


def attention_kernels(arch, device, scale: str, iters: int = 5) -> dict:
    """Each fused SDPA kernel alone on the architecture's main attention call at the native tile (joint
    text+image attention for CogVideoX and HunyuanVideo, with HunyuanVideo's prompt mask; image
    self-attention for Wan): seconds per call and TFLOP/s, or why the kernel cannot take it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = {**arch.config, **(arch.tiny if scale == "tiny" else {})}
    heads, dim = cfg["num_attention_heads"], cfg["attention_head_dim"]
    tokens = image_tokens(arch) if scale == "full" else 64
    if arch.cls != "WanTransformer3DModel":
        tokens += arch.text_tokens if scale == "full" else 8
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(1, heads, tokens, dim, generator=g).to(device, torch.bfloat16) for _ in range(3))
    mask = (torch.ones(1, 1, 1, tokens, dtype=torch.bool, device=device)
            if arch.cls == "HunyuanVideoTransformer3DModel" else None)
    flops = 4 * heads * tokens * tokens * dim
    out = {"shape": [1, heads, tokens, dim], "mask": mask is not None}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
        try:
            with torch.no_grad(), sdpa_kernel([getattr(SDPBackend, name)]):
                call = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # noqa: E731
                call()
                t = statistics.median(timed(call, device) for _ in range(iters))
            out[name.lower()] = {"s": round(t, 5), "tflops": round(flops / t / 1e12, 1)}
        except RuntimeError as e:
            out[name.lower()] = {"unsupported": str(e).splitlines()[0][:160]}
    return out


def kernel_profile(model, kwargs, device, top: int = 12) -> dict:
    """One forward under torch.profiler: device time by operator (the kernels each aten op launched; top
    `top`) and by kind (attention, GEMM, the rest), so a missed MFU target can be traced to what costs it."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), profile(activities=acts) as prof:
        model(**kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = [(e.key, getattr(e, attr, 0) or 0) for e in prof.key_averages() if e.key.startswith("aten::")]
    rows = [(k, t) for k, t in rows if t > 0]
    total = sum(t for _, t in rows) or 1

    def kind(name: str) -> str:
        n = name.lower()
        if "attention" in n:
            return "attention"
        if n in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"):
            return "gemm"
        return "other"

    kinds: dict[str, float] = {}
    for k, t in rows:
        kinds[kind(k)] = kinds.get(kind(k), 0.0) + t
    rows.sort(key=lambda r: -r[1])
    return {"total_ms": round(total / 1e3, 2), "share_by_kind": {k: round(v / total, 3) for k, v in kinds.items()},
            "top": [{"op": k[:120], "ms": round(t / 1e3, 2), "share": round(t / total, 3)} for k, t in rows[:top]]}


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
    ap.add_argument("--profile", action="store_true", help="also one forward under torch.profiler: kernel times")
    ap.add_argument("--attention", nargs="+", default=["torch", "cudnn"], choices=ORDERS,
                    help="attention kernel orders to time the forwards under (MFU: the fastest)")
    ap.add_argument("--unmasked", action="store_true",
                    help="HunyuanVideo: then the same forwards as supergen's backends run them: 1.0 with the text "
                         "mask of its unpadded prompts dropped, 1.5 attending among the valid tokens alone")
    ap.add_argument("--compile", action="store_true",
                    help="then the same forwards compiled as --compile compiles them: first call, MFU, difference")
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
    if device.type == "cuda":
        result["sdpa_priority_order"] = [str(torch.nn.attention.SDPBackend(i)).split(".")[-1]
                                         for i in torch._C._get_sdp_priority_order()]
    result["attention_kernels"] = attention_kernels(arch, device, args.scale)
    by_order = {}
    for order in args.attention:
        forward_times(model, kw, device, 1, order)  # warm-up under this order
        by_order[order] = forward_times(model, kw, device, args.forwards, order)
    best = min(by_order, key=lambda o: statistics.median(by_order[o]))
    result["forward_s_by_attention"] = {o: {"forward_s": [round(t, 4) for t in ts],
                                           "median_s": round(statistics.median(ts), 4)} for o, ts in by_order.items()}
    times = by_order[best]
    med = statistics.median(times)
    result.update(attention=best, forward_s=[round(t, 4) for t in times], forward_median_s=round(med, 4),
                  tile_step_s=round(arch.branches * med, 4),
                  tflops_achieved=round(result["flops"] / med / 1e12, 1),
                  mfu_vs_measured_peak=round(result["flops"] / med / 1e12 / result["matmul_peak"]["tflops"], 3))
    if device.type == "cuda":
        result["tile_peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if args.unmasked:
        result["unmasked"] = unmasked_forwards(model, kw, device, args.forwards, best, result)
    if args.compile:
        result["compiled"] = compiled_forwards(model, kw, device, args.forwards, best, result)
    if args.profile:
        with kernels(best):
            result["kernel_profile"] = kernel_profile(model, kw, device)
        print(json.dumps(result["kernel_profile"]), flush=True)
    del kw
    with kernels(best):
        result["untiled"] = [untiled(model, arch, device, tuple(int(v) for v in s.split("x")), args.scale)
                             for s in args.untiled]
    write_result(args.out, result)
    print({k: result[k] for k in ("arch", "params", "image_tokens", "flops", "attention", "forward_median_s",
                                  "tile_step_s", "tflops_achieved", "mfu_vs_measured_peak")},
          {o: v["median_s"] for o, v in result["forward_s_by_attention"].items()}, result["attention_kernels"],
          result["untiled"], flush=True)


if __name__ == "__main__":
    main()
