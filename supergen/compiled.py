"""`--compile`: torch.compile of a backend's transformers, with an on-disk compile cache every worker of a
host shares, so only the first worker compiles cold and a later start costs seconds.

Static shapes (`dynamic=False`): every tile of a render has one shape, so a worker compiles the tile
forward once (and the sketch's, when its shape differs, once more). Were a second shape to make torch
compile a dynamic graph, a worker that saw the sketch would run other kernels than one that did not, and
the video would depend on the cluster; static graphs keep it the same whatever the worker count.
"""

from __future__ import annotations

import os

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # Inductor's FX-graph and kernel caches live here
SUPERGEN_ENV = "SUPERGEN_COMPILE_CACHE"


def compile_backend(backend) -> None:
    """Compile the transformer(s) in place, lazily: the first forward of each shape compiles (or loads
    from the cache). The cache is Inductor's own, /tmp/torchinductor_<user>, which every process of a user
    on a host shares; SUPERGEN_COMPILE_CACHE puts it elsewhere (a volume that outlives the machine)."""
    if os.environ.get(SUPERGEN_ENV):
        os.environ[CACHE_ENV] = os.environ[SUPERGEN_ENV]
    for name in ("transformer", "transformer_2"):
        module = getattr(backend.pipe, name, None)
        if module is not None:
            module.compile(dynamic=False)
