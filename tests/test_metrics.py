import math

import pytest
import torch

from supergen.metrics import compare_videos, psnr, ssim


def test_psnr_known_value():
    a = torch.full((2, 16, 16, 3), 100, dtype=torch.uint8)
    b = a + 1  # MSE 1 -> 20 log10(255)
    assert psnr(a, b) == pytest.approx([20 * math.log10(255)] * 2)
    assert psnr(a, a) == [math.inf, math.inf]


def test_ssim_identity_and_ordering():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (1, 32, 32, 3), generator=g, dtype=torch.uint8)
    small = (a.int() + torch.randint(-5, 6, a.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    big = (a.int() + torch.randint(-60, 61, a.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    assert ssim(a, a) == pytest.approx([1.0])
    assert 1 > ssim(a, small)[0] > ssim(a, big)[0] > 0
    # a constant offset keeps structure: SSIM stays high while PSNR drops
    shifted = (a.int() + 20).clamp(0, 255).to(torch.uint8)
    assert ssim(a, shifted)[0] > ssim(a, big)[0]


def test_compare_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        compare_videos(torch.zeros(1, 16, 16, 3, dtype=torch.uint8), torch.zeros(2, 16, 16, 3, dtype=torch.uint8))
