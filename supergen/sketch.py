"""Stage 1, the sketch, as a loop of per-branch model calls.

The stock pipeline's denoising loop written out with the backend's own calls: the initial noise from the
sketch's generator, each step's CFG branches as separate transformer calls combined by `Conditioning.guide`,
then one scheduler step. Written out, the two branches of a step can run on two workers (`tasks/sketch.py`)
and give exactly the numbers one worker gives, so a render's sketch is the same whatever the cluster.

What the loop carries from step to step is `(x, state)`: the latent, the scheduler's history (a multistep
solver's previous x0) and the generator's state, so a stochastic solver (CogVideoX's DPM) draws its noise
from the generator that drew the initial latent, in the stock pipeline's order, wherever a step runs.
Wan's pipeline calls its branches separately and this loop equals it bit for bit; CogVideoX's batches them
(one call of batch 2), which this loop equals to rounding (tests/test_sketch.py).
"""

from __future__ import annotations

import dataclasses

import torch

from . import noise, pair
from .backends.base import Backend, Conditioning

Carry = tuple[torch.Tensor, dict[str, torch.Tensor]]


def conditioning(backend: Backend, spec, image) -> Conditioning:
    """Text (and image) conditioning at the sketch's size."""
    return backend.encode_conditioning(spec.prompt, spec.negative_prompt, spec.guidance, image,
                                       (spec.sketch_width, spec.sketch_height), spec.frames, seed=spec.seed)


def first(backend: Backend, spec, cond: Conditioning) -> Carry:
    """The latent the stock pipeline starts from, and the generator's state after drawing its noise."""
    g = noise.generator(spec.seed, "sketch")
    x = backend.initial_latent(spec.sketch_width, spec.sketch_height, spec.frames, g, cond.image_latent)
    return x, {"rng": g.get_state()}


def branch(backend: Backend, spec, cond: Conditioning, index: int, carry: Carry, b: int) -> torch.Tensor:
    """One CFG branch of step `index` on the whole sketch latent (with SRDiffusion, by the model the carry's
    switch gives the step)."""
    x, state = carry
    image = None if cond.image_latent is None else cond.image_latent.to(x.device)
    return backend.predict_branch(x, spec.steps, index, switched(spec, cond, state), b, image)


def for_branches(carry: Carry) -> Carry:
    """What a branch reads of the carry: the latent and SRDiffusion's decided switch, not the scheduler's
    or the switch rule's carried tensors (the rule's previous output is a whole sketch latent, which a
    branch on another worker would otherwise receive every step)."""
    x, state = carry
    return x, {k: v for k, v in state.items() if k == pair.SWITCH}


def switched(spec, cond: Conditioning, state: dict) -> Conditioning:
    """`cond` with SRDiffusion's switch as far as the sketch has decided it (unchanged for one model)."""
    if spec.render_model is None:
        return cond
    return dataclasses.replace(cond, model_switch=pair.switch_of(state, pair.SwitchRule.from_spec(spec)))


def advance(backend: Backend, spec, cond: Conditioning, index: int, carry: Carry,
            outputs: list[torch.Tensor]) -> Carry:
    """The guided prediction of step `index` from its branch outputs, and the scheduler step; with SRDiffusion
    the switch rule reads a large-model step's prediction (`supergen.pair`)."""
    x, state = carry
    g = torch.Generator().set_state(state["rng"])
    rule = {k: v for k, v in state.items() if k.startswith("pair_")}
    state = {k: v.to(x.device) for k, v in state.items() if k != "rng" and k not in rule}
    prediction = cond.guide([o.to(x.device) for o in outputs])
    if spec.render_model is not None:
        r = pair.SwitchRule.from_spec(spec)
        if pair.switch_of(rule, r) is None:  # the large model made this step
            rule = pair.advance_rule(rule, index, prediction, r)
    x, state = backend.step(spec.steps, index, prediction, x, state, seed=spec.seed, generator=g)
    if index == spec.steps - 1:
        x = backend.finish(x, None if cond.image_latent is None else cond.image_latent.to(x.device))
    return x, {**state, **rule, "rng": g.get_state()}


def to_cpu(carry: Carry) -> Carry:
    x, state = carry
    return x.cpu(), {k: v.cpu() for k, v in state.items()}


def models(spec, state: dict) -> dict | None:
    """SRDiffusion's account of a finished sketch (`pair.record`: where the switch fell and why), or None for
    one model."""
    if spec.render_model is None:
        return None
    return pair.record(state, pair.SwitchRule.from_spec(spec), spec.steps)


@torch.no_grad()
def sketch(backend: Backend, spec, image) -> tuple[torch.Tensor, dict | None]:
    """The whole sketch in this process (the reference the split sketch reproduces), and `models`."""
    cond = conditioning(backend, spec, image)
    carry = first(backend, spec, cond)
    for i in range(spec.steps):
        carry = advance(backend, spec, cond, i, carry, [branch(backend, spec, cond, i, carry, b)
                                                        for b in range(cond.branches)])
    return carry[0].float(), models(spec, carry[1])
