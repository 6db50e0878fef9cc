"""The sketch written out as per-branch calls (`supergen.sketch`) is the stock pipeline's sketch, so its
branches can run on two workers without changing the video."""

import pytest
import torch

from supergen import RenderSpec, noise, sketch
from supergen.backends import load_backend
from supergen.executor import prepare


def _spec(model, **kw):
    return prepare(RenderSpec(**{"prompt": "a red circle moving left on a blue background", "model": model,
                                 "width": 128, "height": 128, "frames": 5, "steps": 4, "guidance": 4.5,
                                 "seed": 7, **kw}))


# CogVideoX's pipeline batches its two branches into one call, which the separate calls equal to rounding;
# cogvideox-t2v's DPM solver draws noise every step, from the generator of the initial latent, as there.
# HunyuanVideo's pipelines pad the prompt and mask the padding, where supergen drops it (1.0) or attends among
# the valid tokens alone (1.5): equal to rounding.
EXACT = {"wan-t2v": True, "wan22-t2v": True, "wan-i2v": True, "wan22-5b-t2v": True, "wan22-5b-i2v": True,
         "cogvideox-t2v": False, "cogvideox15-t2v": False, "cogvideox15-i2v": False, "hunyuan-t2v": False,
         "hunyuan15-t2v": False, "hunyuan-i2v": False, "hunyuan15-i2v": True}


@pytest.mark.parametrize("kind", list(EXACT))
def test_the_written_out_sketch_is_the_stock_pipelines(kind, tiny_dir, tmp_path):
    from PIL import Image

    from supergen.executor import load_image

    image = None
    if kind.endswith("i2v"):
        path = tmp_path / "in.png"
        Image.new("RGB", (96, 64), (200, 30, 40)).save(path)
        image = str(path)
    spec = _spec(tiny_dir(kind), image=image, frames=5 if kind.startswith("wan") else 9)
    be = load_backend(spec.model)
    img = load_image(spec)
    if kind.startswith("cogvideox") and image is not None:
        # CogVideoX's I2V pipeline samples the image's latent from its generator before the noise, where
        # supergen draws it from its own; given both, the stock pipeline makes the same draws
        stock = be.pipe(prompt=spec.prompt, negative_prompt=spec.negative_prompt, image=img, height=spec.sketch_height,
                        width=spec.sketch_width, num_frames=spec.frames, num_inference_steps=spec.steps,
                        guidance_scale=spec.guidance, output_type="latent", max_sequence_length=be.max_sequence_length,
                        generator=noise.generator(spec.seed, "image-latent"),
                        latents=sketch.first(be, spec, sketch.conditioning(be, spec, img))[0].permute(0, 2, 1, 3, 4)).frames.permute(0, 2, 1, 3, 4)
    else:
        stock = be.sketch(spec.prompt, spec.negative_prompt, img, spec.sketch_width, spec.sketch_height,
                          spec.frames, spec.steps, spec.guidance, noise.generator(spec.seed, "sketch"))
    calls = be.forwards
    ours, models = sketch.sketch(be, spec, img)
    assert models is None  # one model
    if EXACT[kind]:
        assert torch.equal(ours, stock)
    else:
        assert ours.shape == stock.shape and stock.abs().max() > 0.5
        torch.testing.assert_close(ours, stock, rtol=0, atol=1e-4)
    assert be.forwards - calls == be.info.branches(spec.guidance) * spec.steps


def test_compile_compiles_the_transformer_lazily_with_a_shared_cache(tiny_dir, monkeypatch, tmp_path):
    """--compile reaches the backend: the transformer's forward is compiled (at its first call: the
    compiled numbers and the cache's warm start are measured in bench/compile_cpu.py, a compile costs
    a minute on two cores), and SUPERGEN_COMPILE_CACHE places the cache the workers share."""
    from supergen import compiled
    from supergen.options import add_render_options, spec_from_args

    monkeypatch.setenv(compiled.CACHE_ENV, "/tmp/elsewhere")
    monkeypatch.setenv(compiled.SUPERGEN_ENV, str(tmp_path / "cache"))
    import argparse

    p = argparse.ArgumentParser()
    add_render_options(p)
    spec = spec_from_args(p.parse_args(["--prompt", "x", "--model", tiny_dir("wan-t2v"), "--compile"]))
    assert spec.compile is True and RenderSpec.from_dict(spec.to_dict()).compile is True
    be = load_backend(spec.model, compile=spec.compile)
    assert be.pipe.transformer._compiled_call_impl is not None
    assert load_backend(spec.model).pipe.transformer._compiled_call_impl is None
    assert __import__("os").environ[compiled.CACHE_ENV] == str(tmp_path / "cache")
    with pytest.raises(Exception, match="compile"):
        RenderSpec(prompt="x", compile="yes")
