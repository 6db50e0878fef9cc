"""The tiled VAE on a cluster: the final decode, the sketch's decode and the upscale stage's re-encode with
their tiles spread over the workers in bands (`supergen.vaetiles.bands`). Each worker computes its tiles,
hands its neighbours the strips they blend with, makes its blocks and writes them into the store's array
chunk by chunk; only strips cross workers and no process holds the whole canvas. The result is the
one-worker tiled VAE's bit for bit. Where the VAE runs untiled (a frame within one VAE tile) or one worker
is given, the work stays on one worker as before.

Jobs: "decode" (final latent -> the output frames, uint8), "sketch" (sketch latent -> sketch/video, float:
the upscale's source on every worker and the export's sketch, decoded once), "encode" (upscaled sketch ->
the re-noised start latent)."""

from __future__ import annotations

from supergen import vaetiles
from tasks import vae as tasks

from .watch import Watch, WorkerLost, finished


def vae_on_cluster(client, store, workers: list, pins: dict, job: str) -> bool:
    """Run `job` ("decode", "sketch" or "encode", above) over `workers`; False, having done nothing, where
    it is not spread."""
    spec = store.spec()
    encode = job == "encode"
    if len(workers) < 2:
        return False
    tiling = finished(client, [workers[0]], client.submit(tasks.tiling, store, job, pure=False, **pins[workers[0]]))
    if tiling is None:
        return False
    groups = [g for g in vaetiles.bands(tiling, len(workers)) if g]
    owner = {t: workers[k] for k, g in enumerate(groups) for t in g}
    used = workers[: len(groups)]

    def on(worker, fn, *args, **kw):
        return client.submit(fn, *args, pure=False, **kw, **pins[worker])

    source = {w: on(w, tasks.upscaled, store) if encode else None for w in used}
    eps = {w: on(w, tasks.renoise_noise, store) if encode else None for w in used}
    raw = {t: on(owner[t], tasks.tile, store, tiling, *t, source[owner[t]], job=job) for t in tiling.tiles()}
    cut = {}

    def strip(t, which):
        if (t, which) not in cut:
            cut[(t, which)] = on(owner[t], tasks.strip, raw[t], tiling, which)
        return cut[(t, which)]

    blocks = {}
    for r, c in tiling.tiles():
        w = owner[(r, c)]
        blocks[(r, c)] = on(w, tasks.block, store, tiling, job, raw[(r, c)],
                            strip((r - 1, c), "bottom") if r else None, strip((r, c - 1), "right") if c else None,
                            strip((r - 1, c - 1), "corner") if r and c else None, eps[w], r, c)
    name, offset, size, chunk = _target(store, spec, tiling, job)
    writes: list = []
    for p in vaetiles.pieces(tiling, groups, chunk, offset, size):
        after = writes[p.after] if p.after is not None else None
        writes.append(on(used[p.worker], tasks.write_piece, store, name, p.box, offset, tiling, list(p.blocks),
                         *[blocks[t] for t in p.blocks], after=after))
    try:
        Watch(client, used).wait(writes)
    except WorkerLost:
        client.cancel(list(source.values()) + list(eps.values()) + list(raw.values()) + list(blocks.values()) + writes)
        raise
    client.gather(writes)
    return True


def _target(store, spec, tiling, job: str):
    """The array the blocks go to, created empty: (name, offset and size of the array within the output,
    its chunk (y, x))."""
    from supergen.outputs import frame_tile
    from supergen.spec import crop_box

    h, w = tiling.rows.out_size, tiling.cols.out_size
    if job == "encode":
        clip = store.stage_shape("sketch")[:3]  # (B, C, F'): the canvas latent has the sketch's frames
        return tasks.START, (0, 0), (h, w), store.begin_stage("start", (*clip, h, w))[-2:]
    if job == "sketch":
        return tasks.SKETCH, (0, 0), (h, w), store.begin_video("sketch", (1, 3, spec.frames, h, w))[-2:]
    top, left, h, w = crop_box(spec)
    chunks = store.begin_frames("video", (spec.frames, h, w, 3), spec.fps, frame_tile(spec, tiling.cols.size))
    return tasks.FRAMES, (top, left), (h, w), chunks[1:3]
