"""The tiled VAE's tasks when its tiles are spread over workers (`flows/vae.py` submits them): a tile on
its worker, the strips it hands its neighbours, a block from a tile and three strips, and the writes of
blocks into the store's arrays, chunk by chunk. Decoding reads the final latent's windows from the store
and writes the output frames; encoding reads the upscaled sketch (made on each worker) and writes the
re-noised start latent. Tiles and blocks stay in the workers' memory; only strips move between them."""

from __future__ import annotations

import numpy as np
import torch

from supergen import vaetiles
from supergen.executor import canvas_video, renoise_noise as canvas_noise
from supergen.memory import guarded
from supergen.refine import RefinePlan
from supergen.upscale import to_uint8

from .model import holder
from .stages import sketch_video

FRAMES, START, SKETCH = "video/frames", "start/latent", "sketch/video"  # what decode, encode, sketch write


def _model(store):
    spec = store.spec()
    return spec, holder().backend(spec, store)


def tiling(store, job: str) -> vaetiles.Tiling | None:
    """The tiles of `job` (`flows/vae.py`); None where the VAE runs untiled."""
    spec, be = _model(store)
    w, h = (spec.sketch_width, spec.sketch_height) if job == "sketch" else spec.canvas_size
    s = be.info.vae_spatial
    return be.vae_tiling((h, w) if job == "encode" else (h // s, w // s), spec.vae_tile, job == "encode")


@guarded("upscale")
def upscaled(store) -> torch.Tensor:
    """The decoded sketch (the store's, or decoded here) bicubic-upscaled to the canvas, on this worker
    (CPU), for its encode tiles."""
    spec, be = _model(store)
    return canvas_video(spec, sketch_video(store, spec, be)).cpu()


@guarded("upscale")
def renoise_noise(store) -> torch.Tensor:
    """The canvas's re-noising noise, drawn whole (one generator) so any block is a slice of it."""
    spec, be = _model(store)
    cw, ch = spec.canvas_size
    return canvas_noise(spec, be.latent_shape(spec.frames, ch, cw))


@guarded("vae")
def tile(store, tiling: vaetiles.Tiling, r: int, c: int, source: torch.Tensor | None = None,
         job: str = "decode") -> torch.Tensor:
    """Tile (r, c) before blending: of `source` (encoding) or of the final (sketch) latent in the store.
    Float32 on the host whatever the VAE's dtype (exact for bfloat16, which Dask's tensor serialiser cannot
    send); `block` casts it back before blending."""
    spec, be = _model(store)
    ys, xs = tiling.window(r, c)
    if job == "encode":
        return be.vae_tile(source[..., ys, xs], True).float().cpu()
    stage = "sketch" if job == "sketch" else "final"
    return be.vae_tile(store.stage_region(stage, ys, xs), False, spec.frames).float().cpu()


def strip(raw: torch.Tensor, tiling: vaetiles.Tiling, which: str) -> torch.Tensor:
    return vaetiles.strips(raw, tiling)[which]


@guarded("vae")
def block(store, tiling: vaetiles.Tiling, job: str, raw: torch.Tensor, up=None, left=None, corner=None,
          eps: torch.Tensor | None = None, r: int = 0, c: int = 0):
    """Block (r, c) as its array holds it: frames (F, h, w, 3) uint8 when decoding, the float video when
    decoding the sketch; when encoding the normalised latent re-noised to the refinement's start, with
    `eps` the canvas's noise."""
    spec, be = _model(store)
    encode = job == "encode"
    # blended on the worker's device in the VAE's dtype, as the one-GPU tiled VAE blends (seconds of CPU
    # work per tile at 2K); the tiles and strips travel as float32 (`tile`), so the cast back is exact
    dtype = be.pipe.vae.dtype
    raw, up, left, corner = (None if x is None else x.to(be.device, dtype) for x in (raw, up, left, corner))
    out = be.vae_finish(vaetiles.assemble(be.pipe.vae, tiling, raw, up, left, corner), encode, spec.frames)
    if job == "sketch":
        return out.float().cpu().numpy()
    if job == "decode":
        return to_uint8(out).numpy()
    ys, xs = tiling.block(r, c)
    start = RefinePlan.from_spec(spec, be.info.vae_spatial).start
    return be.renoise(out, eps[..., ys, xs].to(out), spec.steps, start).float().cpu().numpy()


def write_piece(store, name: str, box: tuple[int, int, int, int], offset: tuple[int, int],
                tiling: vaetiles.Tiling, ids: list, *blocks, after=None) -> None:
    """Paste `blocks` (of tiles `ids`) into `box` (y0, y1, x0, x1, array coordinates, which are the output's
    shifted by -`offset`) of the array `name` and write it. `after`: the write of the same chunk that must
    land first (only its completion matters)."""
    y0, y1, x0, x1 = box
    axis = 1 if name == FRAMES else 3  # frames (F, y, x, rgb); latents and videos (B, C, F, y, x)
    first = blocks[0]
    shape = list(first.shape)
    shape[axis], shape[axis + 1] = y1 - y0, x1 - x0
    piece = np.zeros(shape, first.dtype)
    lead = (slice(None),) * axis
    for (r, c), data in zip(ids, blocks):
        ys, xs = tiling.block(r, c)
        by0, by1 = max(y0, ys.start - offset[0]), min(y1, ys.stop - offset[0])
        bx0, bx1 = max(x0, xs.start - offset[1]), min(x1, xs.stop - offset[1])
        if by1 <= by0 or bx1 <= bx0:
            continue
        src = data[lead + (slice(by0 + offset[0] - ys.start, by1 + offset[0] - ys.start),
                           slice(bx0 + offset[1] - xs.start, bx1 + offset[1] - xs.start))]
        piece[lead + (slice(by0 - y0, by1 - y0), slice(bx0 - x0, bx1 - x0))] = src
    store.write_region(name, lead + (slice(y0, y1), slice(x0, x1)), piece)
