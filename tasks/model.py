"""The worker-side model holder: each worker loads a model once and keeps it across tasks and renders.

Registered on a cluster as a Dask WorkerPlugin (`client.register_plugin(ModelHolder())`; registering it
again is a no-op, so every stage may); tasks reach it through the worker (`holder()`), never through a
module global or an argument. The start scripts give every worker one thread, but a worker started with
more must still load each model once: the holder's state changes under a lock.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict

from distributed import WorkerPlugin, get_worker

NAME = "supergen-models"


class ModelHolder(WorkerPlugin):
    name = NAME
    idempotent = True  # registering it again keeps the loaded one (else Dask tears it down and reloads)

    def __init__(self, max_models: int = 1, max_renders: int = 4):
        self.max_models, self.max_renders = max_models, max_renders

    def setup(self, worker):
        self.worker = worker
        self.backends: OrderedDict = OrderedDict()  # (model, render model, device, dtypes, compile, LoRAs) -> backend
        self.conds: OrderedDict = OrderedDict()  # (render id, frame size) -> conditioning (text, image condition)
        self.switches: dict = {}  # render id -> SRDiffusion's switch step
        self.loads = 0
        self.lock = threading.RLock()

    def teardown(self, worker):
        import gc

        import torch

        self.backends.clear()
        self.conds.clear()
        self.switches.clear()
        gc.collect()  # pipelines hold reference cycles: free their GPU memory now, not at some later collection
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def backend(self, spec, store):
        """The render's models, loaded on first use; its LoRA adapters are the store's copies (`local_loras`)."""
        key = (spec.model, spec.render_model, spec.device, spec.dtype, spec.compile, spec.vae_dtype, tuple(spec.lora))
        with self.lock:
            return self._backend(key, spec, store)

    def _backend(self, key, spec, store):
        from supergen.executor import load_models

        if key not in self.backends:
            while len(self.backends) >= self.max_models:  # one model per GPU: evict the least recent
                self.backends.popitem(last=False)
                self.conds.clear()
            self.backends[key] = load_models(local_loras(spec, store))  # with SRDiffusion, both of the pair
            self.loads += 1
        self.backends.move_to_end(key)
        return self.backends[key]

    def conditioning(self, render_id: str, spec, store, size: tuple[int, int] | None = None,
                     switch_required: bool = False):
        """Text/image conditioning of a render for a frame of `size` (width, height; default the canvas),
        computed once per worker and kept for its steps. The image is the render store's copy: no worker
        needs the original path."""
        with self.lock:
            return self._conditioning(render_id, spec, store, tuple(size or spec.canvas_size), switch_required)

    def _conditioning(self, render_id, spec, store, size, switch_required):
        key = (render_id, size)
        if key not in self.conds:
            from supergen.tilestep import cpu_conditioning

            be = self.backend(spec, store)
            image = stored_image(store)
            cond = be.encode_conditioning(spec.prompt, spec.negative_prompt, spec.guidance, image, size,
                                          spec.frames, seed=spec.seed)
            self.conds[key] = cpu_conditioning(cond)
            while len(self.conds) > 2 * self.max_renders:  # a sketch's and a canvas's per render
                self.conds.popitem(last=False)
        self.conds.move_to_end(key)
        cond = self.conds[key]
        if spec.render_model is not None and size == tuple(spec.canvas_size):  # SRDiffusion: the sketch's switch
            switch = self._switch(render_id, store)
            if switch is None and switch_required:
                from supergen.errors import SupergenError

                raise SupergenError(f"{store.url}: the sketch's SRDiffusion switch is missing from the store (its "
                                    "sketch/latent record): the refinement cannot tell which model predicts a step")
            cond = dataclasses.replace(cond, model_switch=switch)
        return cond

    def _switch(self, render_id: str, store) -> int | None:
        """Where the render's sketch switched to the render model (known once the sketch is saved)."""
        if render_id not in self.switches:
            models = store.stage_record("sketch")
            if models is None:
                return None  # the sketch is still running (a worker warming up): asked again later
            self.switches[render_id] = models["switch_step"]
            while len(self.switches) > 4 * self.max_renders:
                self.switches.pop(next(iter(self.switches)))
        return self.switches[render_id]


def local_loras(spec, store):
    """`spec` with its LoRA adapters read from the store's copies, fetched into this host's temporary folder:
    hosts share no disk, so the submitter's paths may not exist here (or hold other files)."""
    import os
    import tempfile

    from supergen import lora

    if not spec.lora:
        return spec
    folder = os.path.join(tempfile.gettempdir(), "supergen-lora")
    local = []
    for k, entry in enumerate(spec.lora):
        adapter = lora.parse(entry)
        path = store.fetch_lora(k, folder)
        local.append(entry if path is None else lora.Lora(path, adapter.scale).entry())
    return spec.replace(lora=tuple(local))


def stored_image(store):
    """The render's conditioning image (PIL, RGB) from the store's copy; None for a text-to-video render."""
    from supergen.inputs import decode_image

    data = store.input_image()
    return None if data is None else decode_image(data)


def holder() -> ModelHolder:
    worker = get_worker()
    if NAME not in worker.plugins:
        raise RuntimeError(f"worker {worker.name} has no {NAME} plugin: register tasks.model.ModelHolder()")
    return worker.plugins[NAME]
