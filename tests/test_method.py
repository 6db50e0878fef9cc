"""Tests that prove the method, beyond "it runs"."""

import copy

import pytest
import torch

import supergen
from supergen import RenderSpec
from supergen.backends import load_backend
from supergen.backends.base import FlowMatch
from supergen.refine import RefinePlan, refine_step


def _truncated(scheduler, start):
    """The same scheduler, but its `set_timesteps` keeps only indices >= start: the stock pipeline then
    'continues' the schedule from index `start` (what SuperGen's stage 2 does on a single tile)."""
    base = type(scheduler)

    class Continue(base):
        def set_timesteps(self, *a, sigmas=None, **kw):  # `sigmas` named: HunyuanVideo's pipeline passes its own
            super().set_timesteps(*a, **kw, **({} if sigmas is None else {"sigmas": sigmas}))
            self.timesteps = self.timesteps[start:]
            if hasattr(self, "sigmas") and self.sigmas is not None and base.__name__.startswith("FlowMatch"):
                self.sigmas = self.sigmas[start:]

    return Continue.from_config(scheduler.config)


def _ours(be, x0, steps, k, prompt, neg, g, frames, seed=0, rope="local"):
    plan = RefinePlan(steps, k, tuple(x0.shape[-2:]), tuple(x0.shape[-2:]), "wrap", 1, 16, rope)
    cond = be.encode_conditioning(prompt, neg, g, None, (x0.shape[-1] * 8, x0.shape[-2] * 8), frames)
    x, state = x0.clone(), {}
    for i in range(k):
        grid = plan.grid(i)
        assert len(grid) == 1 and grid.offset == (0, 0)  # one native tile: shifting is a no-op
        x, state, _ = refine_step(be, cond, plan, i, x, state, seed=seed)
    return x


@pytest.mark.parametrize("kind,frames,k,rope", [
    ("wan-t2v", 5, 3, "local"), ("wan22-t2v", 5, 4, "local"), ("cogvideox15-t2v", 9, 3, "local"),
    ("cogvideox-t2v", 9, 1, "local"), ("wan-t2v", 5, 2, "canvas"), ("wan-t2v", 5, 2, "canvas-ntk"),
    ("wan22-t2v", 5, 4, "canvas-interp"), ("cogvideox15-t2v", 9, 2, "canvas"),
    ("cogvideox15-t2v", 9, 2, "canvas-ntk"), ("cogvideox15-t2v", 9, 2, "canvas-interp")])
def test_native_single_tile_equals_the_stock_pipeline(kind, frames, k, rope, tiny_dir):
    """Output size == native: our refinement == the diffusers pipeline continuing from the same latent and
    timestep index (same scheduler, same CFG). Pins scheduler use, CFG and the expert switch (Wan 2.2); at
    native size every `--rope` mode is the stock positions."""
    from supergen import noise

    be = load_backend(tiny_dir(kind))
    steps, prompt, neg, g = 8, "a red circle moving", "blurry", 4.5
    start = steps - k
    lat_f = be._latent_frames(frames)[0] + be._latent_frames(frames)[1] if hasattr(be, "_latent_frames") \
        else (frames - 1) // 4 + 1
    x0 = torch.randn(1, be.info.latent_channels, lat_f, 8, 8, generator=torch.Generator().manual_seed(3))
    ours = _ours(be, x0, steps, k, prompt, neg, g, frames, seed=11, rope=rope)

    pipe = copy.copy(be.pipe)
    pipe.scheduler = _truncated(be.pipe.scheduler, start)
    cog = kind.startswith("cogvideox")
    # The DPM solver draws noise each step; with k=1 it draws once, from the generator our step uses.
    gen = noise.generator(11, f"scheduler-step-{start}") if cog else None
    ref = pipe(prompt=prompt, negative_prompt=neg, height=64, width=64, num_frames=frames,
               num_inference_steps=steps, guidance_scale=g, output_type="latent", generator=gen,
               latents=x0.permute(0, 2, 1, 3, 4) if cog else x0.clone(),
               max_sequence_length=be.max_sequence_length).frames
    if cog:
        ref = ref.permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(ours, ref.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["wan22-5b-t2v", "wan22-5b-i2v"])
def test_ti2v_native_single_tile_equals_the_stock_pipeline(kind, tiny_dir):
    """Wan 2.2 TI2V-5B (16x VAE, per-token timesteps), text- and image-to-video: at native size our
    refinement, then `finish` (the image's latent frame first), is the stock pipeline continuing from the
    same latent, bit for bit."""
    from PIL import Image

    be = load_backend(tiny_dir(kind))
    (w, h), (lh, lw) = be.info.native_size, be.info.native_latent
    steps, k, frames, prompt, neg, g = 8, 3, 5, "a red circle moving", "blurry", 4.5
    image = Image.new("RGB", (w, h), (200, 30, 40)) if be.info.is_i2v else None
    plan = RefinePlan(steps, k, (lh, lw), (lh, lw), "wrap", 1, 16)
    cond = be.encode_conditioning(prompt, neg, g, image, (w, h), frames)
    x0 = torch.randn(1, be.info.latent_channels, 2, lh, lw, generator=torch.Generator().manual_seed(3))
    x, state = x0.clone(), {}
    for i in range(k):
        x, state, _ = refine_step(be, cond, plan, i, x, state)
    ours = be.finish(x, cond.image_latent)

    pipe = copy.copy(be.pipe)
    pipe.scheduler = _truncated(be.pipe.scheduler, steps - k)
    ref = pipe(prompt=prompt, negative_prompt=neg, height=h, width=w, num_frames=frames, num_inference_steps=steps,
               guidance_scale=g, output_type="latent", latents=x0.clone(), max_sequence_length=be.max_sequence_length,
               **({"image": image} if image is not None else {})).frames
    assert torch.equal(ours, ref.float())
    if image is not None:  # the first frame is the image's, and it is not what the loop alone leaves there
        assert torch.equal(ours[:, :, :1], cond.image_latent) and not torch.equal(x[:, :, :1], ours[:, :, :1])


@pytest.mark.parametrize("kind,rope", [("hunyuan-t2v", "local"), ("hunyuan-t2v", "canvas-ntk"),
                                       ("hunyuan-i2v", "local")])
def test_hunyuanvideo_native_single_tile_equals_the_stock_pipeline(kind, rope, tiny_dir):
    """HunyuanVideo 1.0 (guidance-distilled: the scale an input, one call a step; the pipeline's own sigmas;
    for HunyuanVideo-I2V the image read by LLaVA with the prompt, its latent as the first frame, 0.1% of it in
    the start): at native size our refinement is the stock pipeline continuing from the same latent, to
    rounding (the stock pads the prompt and masks the padding; supergen drops it)."""
    from PIL import Image

    be = load_backend(tiny_dir(kind))
    steps, k, frames, prompt, g = 8, 3, 5, "a red circle moving", 4.5
    x0 = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    image = Image.radial_gradient("L").convert("RGB").resize((64, 64)) if be.info.is_i2v else None
    cond = be.encode_conditioning(prompt, "", g, image, (64, 64), frames)
    plan = RefinePlan(steps, k, (8, 8), (8, 8), "wrap", 1, 16, rope)
    x, state = x0.clone(), {}
    if image is not None:  # the stock pipeline mixes the image into the latent it is given
        t = torch.tensor([0.999])
        x = x0 * t + cond.image_latent * (1 - t)
    for i in range(k):
        x, state, _ = refine_step(be, cond, plan, i, x, state)
    ours = be.finish(x, cond.image_latent)
    assert be.forwards == k  # one call per tile-step
    pipe = copy.copy(be.pipe)
    pipe.scheduler = _truncated(be.pipe.scheduler, steps - k)
    ref = pipe(prompt=prompt, height=64, width=64, num_frames=frames, num_inference_steps=steps, guidance_scale=g,
               output_type="latent", latents=x0.clone(), prompt_template=be.template,
               max_sequence_length=be.max_sequence_length, **({"image": image} if image is not None else {})).frames
    assert (ref - x0).abs().max() > 0.1
    torch.testing.assert_close(ours, ref.float(), rtol=1e-5, atol=1e-5)
    if image is not None:  # the image reaches the text states and the first frame
        assert torch.equal(ours[:, :, :1], cond.image_latent)
        other = be.encode_conditioning(prompt, "", g, Image.new("RGB", (64, 64), (0, 90, 200)), (64, 64), frames)
        assert (other.text["encoder_hidden_states"] - cond.text["encoder_hidden_states"]).abs().max() > 1e-3


@pytest.mark.parametrize("kind,rope", [("hunyuan15-t2v", "local"), ("hunyuan15-t2v", "canvas-ntk"),
                                       ("hunyuan15-i2v", "local")])
def test_hunyuanvideo15_native_single_tile_equals_the_stock_pipeline(kind, rope, tiny_dir):
    """HunyuanVideo 1.5 (true CFG through its guider, Qwen2.5-VL and ByT5 text; for text-to-video zero image
    channels, for image-to-video the image's latent frame, its mask and SigLIP's embedding): at native size
    our refinement is the stock pipeline continuing from the same latent, to rounding. (The image is square:
    the I2V pipeline takes the size of its bucket nearest the image's aspect, here the native 64 x 64.)"""
    from diffusers.guiders import ClassifierFreeGuidance
    from PIL import Image

    be = load_backend(tiny_dir(kind))
    steps, k, frames, prompt, neg, g = 6, 3, 5, "a red circle moving", "blurry", 4.5
    (w, h), (lh, lw) = be.info.native_size, be.info.native_latent
    x0 = torch.randn(1, be.info.latent_channels, 2, lh, lw, generator=torch.Generator().manual_seed(3))
    plan = RefinePlan(steps, k, (lh, lw), (lh, lw), "wrap", 1, 16, rope)
    image = Image.radial_gradient("L").convert("RGB").resize((w, h)) if be.info.is_i2v else None
    cond = be.encode_conditioning(prompt, neg, g, image, (w, h), frames)
    x, state = x0.clone(), {}
    for i in range(k):
        x, state, _ = refine_step(be, cond, plan, i, x, state)
    pipe = copy.copy(be.pipe)
    pipe.scheduler = _truncated(be.pipe.scheduler, steps - k)
    pipe.guider = ClassifierFreeGuidance(guidance_scale=g)
    size = {"image": image} if image is not None else {"height": h, "width": w}
    ref = pipe(prompt=prompt, negative_prompt=neg, num_frames=frames, num_inference_steps=steps,
               output_type="latent", latents=x0.clone(), **size).frames
    assert (ref - x0).abs().max() > 0.1
    # to rounding: supergen attends among the valid tokens alone, unmasked; the stock masks the padding
    torch.testing.assert_close(x, ref.float(), rtol=1e-5, atol=1e-5)
    if image is not None:  # the image reaches the model: another image, another video
        other = be.encode_conditioning(prompt, neg, g, Image.new("RGB", (w, h), (0, 90, 200)), (w, h), frames)
        y, state = x0.clone(), {}
        for i in range(k):
            y, state, _ = refine_step(be, other, plan, i, y, state)
        assert (y - x).abs().max() > 1e-3


class PerCellBackend(FlowMatch):
    """A backend whose prediction at a latent cell depends only on that cell (and the step): any tiling
    must then reproduce the untiled result. Steps with a real flow-matching scheduler (`FlowMatch`)."""

    def __init__(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)

    def predict(self, x, steps, index, cond, image_latent=None, place=None):
        t = float(self.timesteps(steps)[index]) / 1000
        out = torch.tanh(x * (1 + t)) - 0.3 * x * x
        if image_latent is not None:
            out = out + image_latent[:, :1]
        return out


@pytest.mark.parametrize("boundary", ["wrap", "clamp"])
@pytest.mark.parametrize("every,loop", [(0, 16), (1, 16), (1, 3), (3, 4)])
@pytest.mark.parametrize("canvas", [(16, 24), (19, 29)])
def test_per_cell_backend_tiled_equals_untiled(boundary, every, loop, canvas):
    from supergen.backends.base import Conditioning

    be = PerCellBackend()
    x0 = torch.randn(1, 4, 3, *canvas, generator=torch.Generator().manual_seed(0))
    cond = Conditioning(1.0, {}, image_latent=torch.randn(1, 2, 3, *canvas))
    steps, k = 12, 7
    tiled = RefinePlan(steps, k, canvas, (8, 8), boundary, every, loop)
    whole = RefinePlan(steps, k, canvas, canvas, boundary, every, loop)
    xt, xw, st, sw = x0, x0, {}, {}
    for i in range(k):
        xt, st, grid = refine_step(be, cond, tiled, i, xt, st)
        xw, sw, _ = refine_step(be, cond, whole, i, xw, sw)
        assert len(grid) > 1
    if canvas[0] % 8 == 0 and canvas[1] % 8 == 0 and boundary == "wrap":
        assert torch.equal(xt, xw)  # an exact partition is a mosaic: bit-identical
    else:
        torch.testing.assert_close(xt, xw, rtol=1e-6, atol=1e-6)  # blended overlaps: float rounding only


def test_same_seed_same_video_different_seed_different_video():
    spec = RenderSpec(prompt="a blue square", model="tiny", width=128, height=128, frames=5, steps=4, refine_steps=3,
                      seed=7)
    a, b = supergen.render(spec), supergen.render(spec)
    assert torch.equal(a.video, b.video) and torch.equal(a.latent, b.latent)
    c = supergen.render(spec.replace(seed=8))
    assert not torch.equal(a.video, c.video)
    assert (a.video.float() - c.video.float()).abs().mean() > 1.0


def test_refinement_changes_the_upscaled_sketch_and_shifts_tiles():
    spec = RenderSpec(prompt="a blue square", model="tiny", width=128, height=128, frames=5, steps=4, refine_steps=2)
    r = supergen.render(spec)
    assert r.tiles_per_step == [4, 4] and r.forwards == {"sketch": 8, "refine": 2 * 4 * 2}
    assert r.video.shape == (5, 128, 128, 3) and r.sketch_video.shape == (5, 64, 64, 3)
