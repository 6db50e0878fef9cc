"""Stage 2: tiled refinement. `RefinePlan` places the refinement in the schedule and its tiles on the
canvas; `refine_step` is one whole step on the canvas in this process, the reference the distributed
executor (`tilestep`, one tile's share of a step) must reproduce."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import rope
from .backends.base import Backend, Conditioning
from .cache import TileCache
from .tiling import Grid, Window, crop, merge, step_grid


@dataclass(frozen=True)
class RefinePlan:
    """Where the refinement sits in the schedule and how its tiles move."""

    steps: int  # N
    refine_steps: int  # k
    canvas: tuple[int, int]  # latent (H, W)
    tile: tuple[int, int]
    boundary: str
    shift_every: int
    shift_loop: int
    rope: str = "local"  # the tiles' rotary positions (`supergen.rope`)
    native: tuple[int, int] | None = None  # the model's native latent (H, W); None: the tile

    @property
    def start(self) -> int:
        """Schedule index of the first refinement step (the paper's T - k)."""
        return self.steps - self.refine_steps

    def grid(self, i: int) -> Grid:
        return step_grid(i, self.canvas, self.tile, self.boundary, self.shift_every, self.shift_loop)

    def place(self, win: Window) -> rope.Place | None:
        """Where window `win`'s tokens are told they are (None: the stock positions)."""
        return rope.place(self.rope, win.top, win.left, self.canvas, self.native or self.tile)

    @classmethod
    def from_spec(cls, spec, vae_spatial: int, native: tuple[int, int] | None = None) -> RefinePlan:
        """The plan of a resolved spec: the grid covers the canvas (the output is its centre crop)."""
        width, height = spec.canvas_size
        return cls(spec.steps, spec.refine_steps, (height // vae_spatial, width // vae_spatial),
                   tuple(spec.tile), spec.boundary, spec.shift_every, spec.shift_loop,
                   getattr(spec, "rope", None) or "local", tuple(native) if native else None)


def refine_step(backend: Backend, cond: Conditioning, plan: RefinePlan, i: int, x: torch.Tensor,
                state: dict[str, torch.Tensor], seed: int = 0, cache: TileCache | None = None,
                on_tile: Callable[[int, int], None] | None = None):
    """Refinement step `i` (0-based) on the canvas `x`: predict every window (or reuse it from `cache`),
    merge, one scheduler step. Returns (x_next, scheduler state, grid)."""
    grid = plan.grid(i)
    index = plan.start + i
    image = cond.image_latent
    if cache is not None:
        cache.begin_step(i, grid, x)
    preds = []
    for n, win in enumerate(grid.windows):
        x_tile = crop(x, win)
        image_tile = None if image is None else crop(image, win)

        def predict(x_tile=x_tile, image_tile=image_tile, at=plan.place(win)):  # same prompt, own image crop
            return backend.predict(x_tile, plan.steps, index, cond, image_latent=image_tile, place=at)

        preds.append(predict() if cache is None else cache.tile(n, x_tile, predict))
        if on_tile is not None:
            on_tile(n + 1, len(grid))
    if cache is not None:
        cache.end_step()
    prediction = merge(grid, preds, x)
    x, state = backend.step(plan.steps, index, prediction, x, state, seed=seed)
    return x, state, grid
