"""The sketch's tasks when its CFG branches run on two workers (`supergen.sketch` written out as tasks):
each takes the step's carry (latent and scheduler state), the worker's resident model and the render's
conditioning at sketch size."""

from __future__ import annotations

import torch

from supergen import sketch
from supergen.memory import guarded

from .model import holder


def _model(store, render_id: str):
    spec = store.spec()
    h = holder()
    be = h.backend(spec, store)
    return spec, be, h.conditioning(render_id, spec, store, size=(spec.sketch_width, spec.sketch_height))


def _on(device, carry: sketch.Carry) -> sketch.Carry:
    x, state = carry
    return x.to(device), state


@guarded("sketch")
def first(store, render_id: str) -> sketch.Carry:
    spec, be, cond = _model(store, render_id)
    return sketch.to_cpu(sketch.first(be, spec, cond))


@guarded("sketch")
def branch(store, render_id: str, carry: sketch.Carry, index: int, b: int) -> torch.Tensor:
    spec, be, cond = _model(store, render_id)
    return sketch.branch(be, spec, cond, index, _on(be.device, carry), b).cpu()


def lean(carry: sketch.Carry) -> sketch.Carry:
    return sketch.for_branches(carry)


@guarded("sketch")
def advance(store, render_id: str, carry: sketch.Carry, index: int, *outputs: torch.Tensor) -> sketch.Carry:
    spec, be, cond = _model(store, render_id)
    return sketch.to_cpu(sketch.advance(be, spec, cond, index, _on(be.device, carry), list(outputs)))


def save(store, carry: sketch.Carry) -> None:
    store.save_stage("sketch", carry[0].float(), sketch.models(store.spec(), carry[1]))
