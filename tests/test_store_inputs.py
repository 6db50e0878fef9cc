"""A render's conditioning image travels in its store: cluster workers and resumes condition on the
store's copy, never on the path the spec names (on another host that path need not exist). Here the file
at the path is deleted once the store is made."""

import shutil

import pytest
import torch
from distributed import Client, LocalCluster

from storage import RenderStore
from supergen import RenderSpec, SpecError
from supergen.backends import load_backend
from supergen.executor import load_image, prepare, sketch_latent
from tasks.model import ModelHolder, holder
from tasks.stages import sketch_stage, warm_worker


def _image_latent(render_id: str, spec, store):
    return holder().conditioning(render_id, spec, store).image_latent


def _i2v_store(image_path, tmp_path):
    """An image-to-video render's store, made from a copy of the image at a path the test then removes."""
    path = tmp_path / "cond.png"
    shutil.copy(image_path, path)
    spec = prepare(RenderSpec(prompt="a disc", model="tiny-i2v", image=str(path), width=128, height=96, frames=5,
                              steps=4, refine_steps=2))
    return path, spec, RenderStore.create(str(tmp_path / "s"), spec)


def test_workers_condition_on_the_stored_image(image_path, tmp_path):
    path, spec, store = _i2v_store(image_path, tmp_path)
    original = load_image(spec)
    path.unlink()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        client.register_plugin(ModelHolder())
        client.submit(sketch_stage, store, pure=False).result()
        client.submit(warm_worker, store, "r1", pure=False).result()
        on_worker = client.submit(_image_latent, "r1", spec, store, pure=False).result()
    store.release()

    be = load_backend("tiny-i2v")

    def image_latent(image):
        return be.encode_conditioning(spec.prompt, spec.negative_prompt, spec.guidance, image, spec.canvas_size,
                                      spec.frames, seed=spec.seed).image_latent.cpu()

    assert torch.equal(store.load_stage("sketch"), sketch_latent(be, spec, original)[0].cpu())
    assert torch.equal(on_worker, image_latent(original))


def test_an_in_process_resume_needs_no_original_image(image_path, tmp_path):
    import supergen
    from supergen.executor import render

    path, spec, store = _i2v_store(image_path, tmp_path)
    first = render(spec, sink=store)
    store.release()
    path.unlink()
    again = RenderStore.create(str(tmp_path / "s"), spec)  # the same spec: the store is reused as it is
    assert torch.equal(render(again.spec(), sink=again).video, first.video)
    again.release()
    with pytest.raises(SpecError, match="`image`.*no such file"):
        supergen.render(spec)  # without the store, the path is read, and refused before any model loads
