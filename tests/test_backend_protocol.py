"""Every backend family provides the `Backend` protocol the sampler is written against: its attributes,
and its methods with the protocol's parameters in the protocol's order (callers pass them by keyword)."""

import inspect

import pytest

from supergen.backends import backend_for_pipeline, tiny
from supergen.backends.base import Backend

METHODS = [name for name, v in vars(Backend).items() if inspect.isfunction(v) and not name.startswith("_")]


@pytest.mark.parametrize("kind", ["wan-t2v", "wan-i2v", "cogvideox15-t2v"])
def test_backend_provides_the_protocol(kind):
    be = backend_for_pipeline(tiny.build(kind), sidecar=tiny.sidecar())
    for name in Backend.__annotations__:
        assert hasattr(be, name), name
    for name in METHODS:
        want = inspect.signature(getattr(Backend, name)).parameters
        have = inspect.signature(getattr(be, name).__func__).parameters
        assert list(have)[:len(want)] == list(want), name
        for p, q in zip(want.values(), have.values()):
            assert (p.default is p.empty) or (q.default is not q.empty), f"{name}: {p.name} needs a default"
