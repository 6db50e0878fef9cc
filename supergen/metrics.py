"""Fidelity metrics between two videos, with no pretrained weights (they run anywhere, CI included)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _frames(v) -> torch.Tensor:
    """(F, H, W, 3) uint8 (tensor or array) -> (F, 3, H, W) float64 in [0, 255]."""
    v = torch.as_tensor(v)
    if v.ndim != 4 or v.shape[-1] != 3:
        raise ValueError(f"expected (frames, H, W, 3) video, got shape {tuple(v.shape)}")
    return v.permute(0, 3, 1, 2).to(torch.float64)


def psnr(a, b, peak: float = 255.0) -> list[float]:
    """Per-frame PSNR in dB, 10 log10(peak^2 / MSE); inf for identical frames."""
    x, y = _frames(a), _frames(b)
    _same_shape(x, y)
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3))
    return [math.inf if m == 0 else 10 * math.log10(peak**2 / float(m)) for m in mse]


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, size, size)


def ssim(a, b, peak: float = 255.0) -> list[float]:
    """Per-frame SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1=0.01, K2=0.03), averaged
    over the RGB channels and the valid (unpadded) window positions."""
    x, y = _frames(a), _frames(b)
    _same_shape(x, y)
    w = _gaussian()
    if min(x.shape[-2:]) < w.shape[-1]:
        raise ValueError(f"frames must be at least {w.shape[-1]} px on each side for SSIM")
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2

    def blur(t):
        return F.conv2d(t, w, groups=3)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return [float(v) for v in s.mean(dim=(1, 2, 3))]


def _same_shape(x, y):
    if x.shape != y.shape:
        raise ValueError(f"videos differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")


def compare_videos(a, b) -> dict:
    p, s = psnr(a, b), ssim(a, b)
    finite = [v for v in p if math.isfinite(v)]
    return {
        "psnr_db": {"per_frame": [round(v, 4) if math.isfinite(v) else "inf" for v in p],
                    "mean": round(sum(finite) / len(finite), 4) if finite else "inf"},
        "ssim": {"per_frame": [round(v, 6) for v in s], "mean": round(sum(s) / len(s), 6)},
    }
