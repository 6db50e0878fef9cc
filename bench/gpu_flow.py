"""Issue 5 on GPUs: the Prefect flow on a LocalCUDACluster (one worker per GPU) at a real architecture
size (Wan2.1-1.3B transformer and VAE configs, random weights), against the in-process executor.

    python3 bench/gpu_flow.py --out $OUT/gpu_flow.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def build_wan13b(path: str) -> str:
    """Wan2.1-T2V-1.3B's transformer and VAE configs with random weights; a small UMT5 with the real
    4096-wide output stands in for the 5.7B text encoder (its cost is one call per render)."""
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from supergen.backends.tiny import t5_tokenizer

    torch.manual_seed(0)
    tok = t5_tokenizer()
    te = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=4096, d_kv=64, d_ff=1024, num_layers=1,
                                     num_heads=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    with torch.device("cuda"):
        tr = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128,
                                   in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960,
                                   num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                   eps=1e-6, rope_max_seq_len=1024).to(torch.bfloat16)
        vae = AutoencoderKLWan(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                               temperal_downsample=[False, True, True])
    pipe = WanPipeline(tokenizer=tok, text_encoder=te, vae=vae.cpu(), transformer=tr.cpu(),
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.save_pretrained(path)
    with open(os.path.join(path, "supergen.json"), "w") as f:
        json.dump({"native_size": [832, 480], "presets": {"scale": 2, "frames": 17, "steps": 10,
                                                          "guidance": 5.0, "fps": 16}}, f)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--frames", type=int, default=17)
    args = ap.parse_args()
    import torch

    from common import environment, write_result

    t0 = time.time()
    model = build_wan13b(tempfile.mkdtemp(prefix="wan13b-"))
    build_s = time.time() - t0
    from supergen import RenderSpec

    spec = dict(prompt="a lion walking through tall grass at sunset", model=model, device="cuda",
                dtype="bfloat16", width=1664, height=960, frames=args.frames, steps=10, refine_steps=8,
                checkpoint_every=4)
    result = environment(" ".join(["python3"] + sys.argv))
    result.update(gpus=torch.cuda.device_count(), gpu=torch.cuda.get_device_name(0), model_build_s=round(build_s, 1),
                  spec=spec)
    # the flow first, before this process touches CUDA (dask-cuda warns about a parent CUDA context)
    from flows.cluster import make_cluster
    from flows.render import render as render_flow
    from storage import RenderStore

    with make_cluster() as cluster:
        d = tempfile.mkdtemp()
        t0 = time.time()
        url = render_flow(spec=spec, store_url=d + "/flow", cluster=cluster.scheduler_address)
        flow_s = time.time() - t0
    rec = json.loads(RenderStore.open(url).read_file("render.json"))
    result["flow"] = {"wall_s": round(flow_s, 2), "timings_s": rec["timings_s"], "forwards": rec["forwards"],
                      "tiles_per_step": rec["tiles_per_step"]}
    import supergen

    t0 = time.time()
    r = supergen.render(RenderSpec(**spec))
    result["in_process"] = {"wall_s": round(time.time() - t0, 2), "timings_s": {k: round(v, 3) for k, v in r.timings.items()}}
    flow_latent = RenderStore.open(url).load_stage("final")
    result["max_abs_latent_diff_flow_vs_in_process"] = float((flow_latent - r.latent).abs().max())
    write_result(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
