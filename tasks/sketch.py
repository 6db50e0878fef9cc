"""The sketch's tasks when its CFG branches run on two workers (`supergen.sketch` written out as tasks):
each takes the step's latent, the worker's resident model and the render's conditioning at sketch size."""

from __future__ import annotations

import torch

from supergen import sketch
from supergen.memory import guarded

from .model import holder


def _model(store, render_id: str):
    spec = store.spec()
    h = holder()
    be = h.backend(spec)
    return spec, be, h.conditioning(render_id, spec, store, size=(spec.sketch_width, spec.sketch_height))


@guarded("sketch")
def first(store, render_id: str) -> torch.Tensor:
    spec, be, _ = _model(store, render_id)
    return sketch.first_latent(be, spec).cpu()


@guarded("sketch")
def branch(store, render_id: str, x: torch.Tensor, index: int, b: int) -> torch.Tensor:
    spec, be, cond = _model(store, render_id)
    return sketch.branch(be, spec, cond, index, x.to(be.device), b).cpu()


@guarded("sketch")
def advance(store, render_id: str, x: torch.Tensor, index: int, *outputs: torch.Tensor) -> torch.Tensor:
    spec, be, cond = _model(store, render_id)
    return sketch.advance(be, spec, cond, index, x.to(be.device), list(outputs)).cpu()


def save(store, x: torch.Tensor) -> None:
    store.save_stage("sketch", x.float())
