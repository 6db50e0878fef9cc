"""The sketch stage on a cluster: on one worker, or, for a backend whose sketch is written out as
per-branch calls (`supergen.sketch`), with each step's two CFG branches on two workers. Each step's
latent goes from the first worker to the second and the negative branch's output back (the native
latent: megabytes, against seconds of transformer work per branch); the video is the one worker's."""

from __future__ import annotations

from tasks import sketch as tasks
from tasks.stages import StageResult, sketch_stage


def splits(spec, info, workers: list) -> bool:
    """Whether the sketch's branches are split: two workers, CFG on, a backend that allows it."""
    return len(workers) >= 2 and spec.guidance > 1.0 and info.split_sketch


def sketch_on_cluster(client, store, workers: list, render_id: str, pins: dict) -> StageResult:
    """Run the sketch stage on `workers` (names; `pins`: submit() arguments that pin to each), split when
    `splits` says so; skipped when the store already holds the sketch."""
    import time

    from supergen.backends import model_info

    spec = store.spec()
    if not splits(spec, model_info(spec.model), workers):
        return client.submit(sketch_stage, store, pure=False, **pins[workers[0]]).result()
    if store.has_array("sketch/latent"):
        return StageResult(0.0, skipped=True)
    a, b = workers[:2]
    t0 = time.perf_counter()

    def on(worker, fn, *args, name):
        return client.submit(fn, store, *args, key=f"sketch-{name}-{render_id}", pure=False, **pins[worker])

    x = on(a, tasks.first, render_id, name="first")
    for i in range(spec.steps):
        outs = [on(w, tasks.branch, render_id, x, i, k, name=f"branch-{i}-{k}") for k, w in enumerate((a, b))]
        x = on(a, tasks.advance, render_id, x, i, *outs, name=f"advance-{i}")
    on(a, tasks.save, x, name="save").result()
    return StageResult(time.perf_counter() - t0, forwards=2 * spec.steps)
