"""Reconstruction PSNR of the embedded model's VAE on held-out world scenes (whole frames, 17 frames),
at native size and at the 4x canvas, through the shipped folder in float32 as a render runs it.
Target: >= 32 dB at both.

    .venv/bin/python bench/world_vae.py --out bench/results/world_vae_cpu.json
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from supergen.backends import load_backend  # noqa: E402
from supergen.train import data, vae  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, write_result  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/world_vae_cpu.json")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--model", default="world", help="embedded name or a diffusers folder")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    model = load_backend(args.model).pipe.vae.float().eval().to(args.device)
    out = {}
    with torch.no_grad():
        for label, size, n in (("native_64", 64, args.clips), ("canvas_4x_256", 256, max(2, args.clips // 4))):
            x, _ = data.held_out(n, size, 17, args.device)
            y = vae.reconstruct(model, x, batch=2)
            per_frame = [round(vae.psnr(y[:, :, f], x[:, :, f]), 2) for f in range(x.shape[2])]
            per_clip = [round(vae.psnr(y[i], x[i]), 2) for i in range(n)]
            out[label] = {"clips": n, "psnr_db": round(vae.psnr(y, x), 3), "per_frame_db": per_frame,
                          "per_clip_db": per_clip, "target_db": 32.0}
            print(label, out[label]["psnr_db"], flush=True)
    result = environment(" ".join(["python"] + sys.argv))
    result.update(model=args.model, held_out_seed=10_000, **out)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
