"""Seeded noise. All noise is drawn on the CPU from generators keyed by (seed, purpose), so the video
depends only on the spec and seed: not on the device, nor on how many workers share the work."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for one purpose ("sketch", "renoise", ...) derived from the render seed."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator(seed: int, purpose: str) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(derive_seed(seed, purpose))


def gaussian(shape, seed: int, purpose: str) -> torch.Tensor:
    """Standard normal float32 noise on the CPU."""
    return torch.randn(tuple(shape), generator=generator(seed, purpose), dtype=torch.float32)
