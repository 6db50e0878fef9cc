"""Writing a render's outputs: video.mp4, sketch.mp4, a contact sheet and render.json."""

from __future__ import annotations

import json
import os

import numpy as np
import torch


def write_mp4(path: str, frames: torch.Tensor, fps: int) -> None:
    """(F, H, W, 3) uint8 -> H.264 mp4 (yuv420p, so any player opens it)."""
    import imageio_ffmpeg

    f, h, w, _ = frames.shape
    writer = imageio_ffmpeg.write_frames(path, (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         macro_block_size=1, ffmpeg_log_level="error", output_params=["-crf", "12"])
    writer.send(None)  # start the encoder
    for frame in frames.numpy():
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def read_mp4(path: str) -> np.ndarray:
    """(F, H, W, 3) uint8 frames of an mp4."""
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(path)
    meta = next(gen)
    w, h = meta["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen])


def contact_sheet(sketch: torch.Tensor, final: torch.Tensor, columns: int = 4):
    """PIL image: sampled frames, sketch (upscaled with nearest, to show its real detail) above final."""
    from PIL import Image

    n = final.shape[0]
    idx = sorted({round(i * (n - 1) / max(1, columns - 1)) for i in range(columns)})
    H, W = final.shape[1:3]
    sheet = Image.new("RGB", (W * len(idx), H * 2), "black")
    for j, f in enumerate(idx):
        lo = Image.fromarray(sketch[min(f, sketch.shape[0] - 1)].numpy()).resize((W, H), Image.NEAREST)
        sheet.paste(lo, (j * W, 0))
        sheet.paste(Image.fromarray(final[f].numpy()), (j * W, H))
    return sheet


def skip_heatmap(skip_map: list[list[int]], cell: int = 12):
    """PIL image of a cache's decisions: one row per tile, one column per refinement step; dark =
    computed, bright = reused from the cache, grey = no such tile at that step (tile count varies)."""
    from PIL import Image

    n_tiles = max((len(r) for r in skip_map), default=0)
    grid = np.full((max(1, n_tiles), max(1, len(skip_map))), 128, np.uint8)
    for step, row in enumerate(skip_map):
        for tile, skipped in enumerate(row):
            grid[tile, step] = 235 if skipped else 30
    return Image.fromarray(grid).resize((grid.shape[1] * cell, grid.shape[0] * cell), Image.NEAREST)


def write_outputs(result, out_dir: str) -> dict[str, str]:
    """Write every output of `result` into `out_dir`; render.json last, so its presence means complete."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    fps = result.spec.fps
    paths = {name: os.path.join(out_dir, name) for name in ("video.mp4", "sketch.mp4", "contact_sheet.png",
                                                              "cache_skips.png", "latent.safetensors",
                                                              "render.json")}
    write_mp4(paths["video.mp4"], result.video, fps)
    write_mp4(paths["sketch.mp4"], result.sketch_video, fps)
    contact_sheet(result.sketch_video, result.video).save(paths["contact_sheet.png"])
    skip_heatmap(result.cache.skip_map if result.cache else []).save(paths["cache_skips.png"])
    save_file({"final": result.latent.contiguous(), "sketch": result.sketch_latent.contiguous()},
              paths["latent.safetensors"])
    tmp = paths["render.json"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result.report(), f, indent=1)
    os.replace(tmp, paths["render.json"])
    return paths


def compare_renders(a_dir: str, b_dir: str) -> dict:
    """PSNR/SSIM per frame and mean between two renders' videos, and the max abs difference of their final
    latents."""
    from safetensors.torch import load_file

    from .metrics import compare_videos

    for d in (a_dir, b_dir):
        if not os.path.isfile(os.path.join(d, "render.json")):
            raise FileNotFoundError(f"{d!r} is not a finished render (no render.json)")
    out = compare_videos(read_mp4(os.path.join(a_dir, "video.mp4")), read_mp4(os.path.join(b_dir, "video.mp4")))
    la = load_file(os.path.join(a_dir, "latent.safetensors"))["final"]
    lb = load_file(os.path.join(b_dir, "latent.safetensors"))["final"]
    out["latent_max_abs_diff"] = float((la - lb).abs().max()) if la.shape == lb.shape else None
    return out
