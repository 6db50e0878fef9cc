"""Training clips from the procedural world: whole frames and zoomed crops.

A native-size tile of a 4x canvas sees a quarter of the frame's width: large shapes cut by the tile's
edges, flat background, textures four times coarser in pixels. The model refines exactly such tiles, so
a share of every batch is crops zoomed log-uniformly up to `max_zoom`, captioned with the whole scene's
caption (a tile is always prompted with the whole clip's prompt).
"""

from __future__ import annotations

import random

import torch

from .. import world


def clips(rng: random.Random, n: int, size: int, frames: int, device, crop_share: float = 0.4,
          max_zoom: float = 8.0, max_offset: int = 0) -> tuple[torch.Tensor, list[str]]:
    """(n, 3, frames, size, size) in [-1, 1] and the n captions. `max_offset` starts clips up to that many
    frames into their scene, so short clips see every phase of a motion."""
    scenes = [world.sample_scene(rng) for _ in range(n)]
    views = [world.random_view(rng, s.aspect, max_zoom) if rng.random() < crop_share else (0.0, 0.0, s.aspect, 1.0)
             for s in scenes]
    first = rng.randint(0, max_offset) if max_offset else 0
    video = world.render(scenes, size, size, frames, views=views, first_frame=first, device=device)
    return video, [s.caption for s in scenes]


def held_out(n: int, size: int, frames: int, device, seed: int = 10_000) -> tuple[torch.Tensor, list[str]]:
    """Whole-frame clips of scenes no training batch draws (a separate seed)."""
    return clips(random.Random(seed), n, size, frames, device, crop_share=0.0)
