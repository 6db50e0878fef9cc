"""Stage 1, the sketch, as a loop of per-branch model calls.

The stock pipeline's denoising loop written out with the backend's own calls: the initial noise from the
same generator, each step's CFG branches as separate transformer calls combined by `Conditioning.guide`,
then one scheduler step. Written out, the two branches of a step can run on two workers
(`tasks/sketch.py`) and give exactly the numbers one worker gives, so a render's sketch is the same
whatever the cluster. Wan's stock pipeline calls its branches separately too, and this loop equals it
(tests/test_sketch.py); a backend whose pipeline batches the branches (CogVideoX) keeps the stock pipeline
on one worker (`ModelInfo.split_sketch`).
"""

from __future__ import annotations

import torch

from . import noise
from .backends.base import Backend, Conditioning


def conditioning(backend: Backend, spec, image) -> Conditioning:
    """Text (and image) conditioning at the sketch's size."""
    return backend.encode_conditioning(spec.prompt, spec.negative_prompt, spec.guidance, image,
                                       (spec.sketch_width, spec.sketch_height), spec.frames, seed=spec.seed)


def first_latent(backend: Backend, spec) -> torch.Tensor:
    """The pure noise the stock pipeline starts from, drawn from the same generator."""
    return backend.initial_latent(spec.sketch_width, spec.sketch_height, spec.frames,
                                  noise.generator(spec.seed, "sketch"))


def branch(backend: Backend, spec, cond: Conditioning, index: int, x: torch.Tensor, b: int) -> torch.Tensor:
    """One CFG branch of step `index` on the whole sketch latent."""
    image = None if cond.image_latent is None else cond.image_latent.to(x.device)
    return backend.predict_branch(x, spec.steps, index, cond, b, image)


def advance(backend: Backend, spec, cond: Conditioning, index: int, x: torch.Tensor,
            outputs: list[torch.Tensor]) -> torch.Tensor:
    """The guided prediction of step `index` from its branch outputs, and the scheduler step."""
    pred = cond.guide([o.to(x.device) for o in outputs])
    return backend.step(spec.steps, index, pred, x, {}, seed=spec.seed)[0]


@torch.no_grad()
def sketch(backend: Backend, spec, image) -> torch.Tensor:
    """The whole sketch in this process: the reference the split sketch reproduces."""
    cond = conditioning(backend, spec, image)
    x = first_latent(backend, spec)
    for i in range(spec.steps):
        x = advance(backend, spec, cond, i, x, [branch(backend, spec, cond, i, x, b) for b in range(cond.branches)])
    return x.float()
