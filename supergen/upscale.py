"""Pixel-space upscaling between the sketch and the refinement (the paper upsamples decoded frames, not
latents, to avoid latent-interpolation artefacts)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upscale_video(video: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic per-frame resize of (B, C, F, h, w) in [-1, 1] to (B, C, F, H, W); `size` = (H, W)."""
    b, c, f, h, w = video.shape
    frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # (B*F, C, h, w)
    frames = F.interpolate(frames.float(), size=size, mode="bicubic", align_corners=False).clamp(-1, 1)
    return frames.reshape(b, f, c, *size).permute(0, 2, 1, 3, 4).contiguous()  # (B, C, F, H, W)


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, F, H, W) in [-1, 1] -> (F, H, W, 3) uint8 of the first clip, on the CPU (outputs are files)."""
    v = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(1, 2, 3, 0).contiguous().cpu()
