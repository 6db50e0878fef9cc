"""Where a tile's tokens say they are: the rotary positions of a window on the canvas.

The paper's code gives every tile the positions of a native window at the origin (`local`): each tile is
told it is the top-left of a frame, and at 4x it draws the whole scene again; the authors' later code
names this, with the global prompt, as the cause of duplicated objects (spec 1.11, 8.2). The canvas modes
give a tile's tokens the positions of its cells on the canvas, in patch units:

* `canvas`: the cells' own coordinates, counted from the canvas's origin (see below: to RoPE, which is
  relative, the same as `local`);
* `canvas-ntk`: the same positions, each spatial axis's base scaled NTK-style by alpha = clamp(s^2, 1, 64)
  for a canvas s times the native extent along that axis;
* `canvas-interp`: the coordinates scaled into the native extent (positions between the integers).

A window that wraps around the torus keeps counting past the canvas's edge, so positions stay continuous
inside a tile (the wrapped cells sit next to the others, as their latents do). Time is never tiled: its
positions are the stock ones. At native size one tile at the origin gets the stock positions in every mode.

RoPE is relative: attention sees only differences of positions, and `canvas` shifts all of a tile's
positions by one offset, so it renders what `local` renders up to float rounding (tests/test_rope.py). Only
the scaled modes change what a tile sees (the distances between its tokens, as a model trained at the
native extent would see a larger frame); an absolute signal would need positions that jump (a seam taken
mod the canvas), which this module does not make.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .spec import ROPE_MODES as MODES  # noqa: F401  (the spec checks the names; the meanings live here)


@dataclass(frozen=True)
class Place:
    """A window on the canvas, in latent cells, and how its tokens are positioned."""

    top: int
    left: int
    canvas: tuple[int, int]  # latent (H, W)
    native: tuple[int, int]  # the model's native latent (H, W)
    mode: str


def place(mode: str, top: int, left: int, canvas: tuple[int, int], native: tuple[int, int]) -> Place | None:
    """The `Place` of a window, or None for `local` (the stock positions)."""
    return None if mode == "local" else Place(top, left, tuple(canvas), tuple(native), mode)


def axis(p: Place, ax: int, n: int, patch: int, dim: int) -> dict:
    """`get_1d_rotary_pos_embed` arguments for `n` patches along spatial axis `ax` (0: y, 1: x) of a rotary
    sub-embedding of `dim` channels: the positions and the base's scaling."""
    start = (p.top, p.left)[ax]
    pos = start / patch + torch.arange(n, dtype=torch.float64)
    scale = p.canvas[ax] / p.native[ax]
    kw = {"pos": pos}
    if p.mode == "canvas-ntk":
        alpha = min(max(scale * scale, 1.0), 64.0)
        kw["ntk_factor"] = alpha ** (dim / (dim - 2))
    elif p.mode == "canvas-interp":
        kw["linear_factor"] = max(scale, 1.0)
    return kw


def wan_rotary(rope, shape: tuple[int, ...], p: Place) -> tuple[torch.Tensor, torch.Tensor]:
    """What `WanRotaryPosEmbed(hidden_states)` returns for a latent of `shape`, at `p`."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    _, _, f, h, w = shape
    p_t, p_h, p_w = rope.patch_size
    ppf, pph, ppw = f // p_t, h // p_h, w // p_w
    dims = (rope.t_dim, rope.h_dim, rope.w_dim)
    split = (rope.freqs_cos.split(dims, dim=1), rope.freqs_sin.split(dims, dim=1))
    parts = [(split[0][0][:ppf].view(ppf, 1, 1, -1), split[1][0][:ppf].view(ppf, 1, 1, -1))]
    for ax, (n, patch, dim) in enumerate(((pph, p_h, rope.h_dim), (ppw, p_w, rope.w_dim))):
        cos, sin = get_1d_rotary_pos_embed(dim, theta=10000.0, use_real=True, repeat_interleave_real=True,
                                           freqs_dtype=torch.float64, **axis(p, ax, n, patch, dim))
        view = (1, n, 1, -1) if ax == 0 else (1, 1, n, -1)
        parts.append((cos.to(rope.freqs_cos.device).view(view), sin.to(rope.freqs_sin.device).view(view)))
    out = []
    for k in range(2):
        out.append(torch.cat([t[k].expand(ppf, pph, ppw, -1) for t in parts], dim=-1).reshape(1, ppf * pph * ppw, 1, -1))
    return out[0], out[1]


def hunyuan_rotary(rope, shape: tuple[int, ...], p: Place) -> tuple[torch.Tensor, torch.Tensor]:
    """What `HunyuanVideoRotaryPosEmbed(hidden_states)` returns for a latent of `shape`, at `p`: per axis
    a rotary embedding of its float32 positions (time's the stock ones), laid over the (t, y, x) grid."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    _, _, f, h, w = shape
    n = (f // rope.patch_size_t, h // rope.patch_size, w // rope.patch_size)
    axes = [get_1d_rotary_pos_embed(rope.rope_dim[0], torch.arange(n[0], dtype=torch.float32), rope.theta,
                                    use_real=True)]
    for ax in range(2):
        kw = axis(p, ax, n[1 + ax], rope.patch_size, rope.rope_dim[1 + ax])
        kw["pos"] = kw["pos"].float()  # the stock grid is float32
        axes.append(get_1d_rotary_pos_embed(rope.rope_dim[1 + ax], theta=rope.theta, use_real=True, **kw))
    out = []
    for k in range(2):
        parts = [axes[0][k][:, None, None], axes[1][k][None, :, None], axes[2][k][None, None, :]]
        out.append(torch.cat([t.expand(*n, -1) for t in parts], dim=-1).reshape(n[0] * n[1] * n[2], -1))
    return out[0], out[1]


def cogvideox_rotary(embed_dim: int, grid: tuple[int, int], frames: int, patch: int, p: Place, device
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """What CogVideoX 1.5's pipeline builds (`get_3d_rotary_pos_embed`, the "slice" grid) for a window of
    `grid` (h, w) patches and `frames` patch-frames, at `p`."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    dim_t, dim_hw = embed_dim // 4, embed_dim // 8 * 3
    t = get_1d_rotary_pos_embed(dim_t, torch.arange(frames, dtype=torch.float32), use_real=True)
    hw = []
    for ax in range(2):
        kw = axis(p, ax, grid[ax], patch, dim_hw)
        kw["pos"] = kw["pos"].float()  # the pipeline's grids are float32
        hw.append(get_1d_rotary_pos_embed(dim_hw, use_real=True, **kw))
    gh, gw = grid
    out = []
    for k in range(2):
        ft = t[k][:, None, None, :].expand(-1, gh, gw, -1)
        fh = hw[0][k][None, :, None, :].expand(frames, -1, gw, -1)
        fw = hw[1][k][None, None, :, :].expand(frames, gh, -1, -1)
        out.append(torch.cat([ft, fh, fw], dim=-1).view(frames * gh * gw, -1).to(device))
    return out[0], out[1]
