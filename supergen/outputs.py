"""Encoding a render's outputs: mp4 videos, the contact sheet and the cache skip heat map, and writing
them with the lossless frames into a render store (which stores what it is given, encoding nothing)."""

from __future__ import annotations

import json
import os

import numpy as np
import torch


def write_mp4(path: str, frames: torch.Tensor, fps: int) -> None:
    """(F, H, W, 3) uint8 -> H.264 mp4 (yuv420p, so any player opens it). Where imageio-ffmpeg is not
    installed (a GPU box without a package index), OpenCV's MPEG-4 Part 2 encoder writes it instead."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return _write_mp4_cv2(path, frames, fps)

    f, h, w, _ = frames.shape
    writer = imageio_ffmpeg.write_frames(path, (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         macro_block_size=1, ffmpeg_log_level="error", output_params=["-crf", "12"])
    writer.send(None)  # start the encoder
    for frame in frames.numpy():
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def _write_mp4_cv2(path: str, frames: torch.Tensor, fps: int) -> None:
    import cv2

    f, h, w, _ = frames.shape
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for frame in frames.numpy():
        writer.write(np.ascontiguousarray(frame[..., ::-1]))  # RGB -> BGR
    writer.release()


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


def mp4_bytes(frames: torch.Tensor, fps: int) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "v.mp4")
        write_mp4(path, frames, fps)
        with open(path, "rb") as f:
            return f.read()


def png_bytes(image) -> bytes:
    """PNG at zlib level 1: a 2K contact sheet (10240x2880) encodes in half the time of the default level
    for 8% more bytes; it is a preview, and the lossless frames are in the store."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def read_mp4_bytes(data: bytes) -> np.ndarray:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "v.mp4")
        with open(path, "wb") as f:
            f.write(data)
        return read_mp4(path)


def encode(result) -> dict[str, bytes]:
    """A finished render's files (`RenderResult`): the mp4s, the contact sheet and skip heat map (PNG), and
    render.json. The encoders run side by side: ffmpeg in its own process, zlib with the GIL released; the
    export's wall time is then the slowest file's (video.mp4), not the sum (13.7 s at 2K on one H200
    worker, serial)."""
    from concurrent.futures import ThreadPoolExecutor

    fps = result.spec.fps
    jobs = {"video.mp4": lambda: mp4_bytes(result.video, fps),
            "sketch.mp4": lambda: mp4_bytes(result.sketch_video, fps),
            "contact_sheet.png": lambda: png_bytes(contact_sheet(result.sketch_video, result.video)),
            "cache_skips.png": lambda: png_bytes(skip_heatmap(result.cache.skip_map if result.cache else [])),
            "render.json": lambda: json.dumps(result.report(), indent=1).encode()}
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def frame_tile(spec, latent_width: int) -> tuple[int, int]:
    """The output frames' chunk (y, x) in pixels: one refinement tile."""
    s = spec.canvas_size[0] // latent_width  # pixels per latent cell
    return spec.tile[0] * s, spec.tile[1] * s


def write_outputs(store, result, frames_written: bool = False) -> None:
    """Write a finished render into its render store: its frames, then its files. `frames_written`: the
    workers wrote the output's frames region by region. The owner then calls `store.finish()`."""
    write_frames(store, result.spec, result.latent, None if frames_written else result.video, result.sketch_video)
    write_files(store, result)


def write_frames(store, spec, latent: torch.Tensor, video: torch.Tensor | None, sketch_video: torch.Tensor) -> None:
    """The final latent (unless there), the output's frames (chunked by second and tile; None: written
    already) and the sketch's frames."""
    if not store.has_array("final/latent"):
        store.save_stage("final", latent)
    if video is not None:
        store.save_frames("video", video.numpy(), spec.fps, frame_tile(spec, latent.shape[-1]))
    # lossless, so quality checks compare the output with the sketch itself, not with sketch.mp4's codec
    store.save_frames("sketch", sketch_video.numpy(), spec.fps)


def write_files(store, result) -> None:
    """The encoded files (`encode`) of `result`'s frames: CPU work only."""
    for name, data in encode(result).items():
        store.write_file(name, data)
