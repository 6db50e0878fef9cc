"""The sketch stage on a cluster: the sketch written out as per-branch calls (`supergen.sketch`) on one
worker, or with each step's two CFG branches on two workers. Each step's latent (with SRDiffusion's switch,
not the scheduler's or the switch rule's carried state: `sketch.for_branches`) goes from the first worker
to the second and the negative branch's output back (the native latent: megabytes, against seconds of
transformer work per branch); the video is the one worker's."""

from __future__ import annotations

from flows.watch import Watch, finished
from supergen.backends import model_info
from tasks import sketch as tasks
from tasks.stages import StageResult, sketch_stage


def splits(spec, workers: list) -> bool:
    """Whether the sketch's branches are split: two workers and CFG on (two calls a step; a
    guidance-distilled model makes one)."""
    return len(workers) >= 2 and model_info(spec.model).branches(spec.guidance) == 2


def sketch_on_cluster(client, store, workers: list, render_id: str, pins: dict) -> StageResult:
    """Run the sketch stage on `workers` (names; `pins`: submit() arguments that pin to each), split when
    `splits` says so; skipped when the store already holds the sketch."""
    import time

    spec = store.spec()
    if not splits(spec, workers):
        return finished(client, [workers[0]], client.submit(sketch_stage, store, pure=False, **pins[workers[0]]))
    if store.has_array("sketch/latent"):
        return StageResult(0.0, skipped=True)
    a, b = workers[:2]
    t0 = time.perf_counter()

    def on(worker, fn, *args, name):
        return client.submit(fn, store, *args, key=f"sketch-{name}-{render_id}", pure=False, **pins[worker])

    carry = on(a, tasks.first, render_id, name="first")
    futures = [carry]
    for i in range(spec.steps):
        lean = client.submit(tasks.lean, carry, key=f"sketch-lean-{i}-{render_id}", pure=False, **pins[a])
        outs = [on(w, tasks.branch, render_id, lean, i, k, name=f"branch-{i}-{k}") for k, w in enumerate((a, b))]
        carry = on(a, tasks.advance, render_id, carry, i, *outs, name=f"advance-{i}")
        futures += [lean, *outs, carry]
    futures.append(on(a, tasks.save, carry, name="save"))
    try:  # checking between polls for a Ctrl-C some library swallowed, and for a worker gone for good
        Watch(client, [a, b]).wait(futures[-1:])
        futures[-1].result()
    except BaseException:
        client.cancel(futures)
        raise
    return StageResult(time.perf_counter() - t0, forwards=2 * spec.steps)
