"""HunyuanVideo 1.0 text-to-video through diffusers (`HunyuanVideoPipeline`).

Conventions hidden here: latents are BCFHW scaled by the VAE's `scaling_factor`; the scheduler is flow
matching over the pipeline's own sigmas (`linspace(1, 0, N + 1)[:-1]`, shifted by the scheduler), not
`set_timesteps(N)`; the model is guidance-distilled: the guidance scale enters as an embedding (x 1000) and a
step is one transformer call (no CFG branches). The text is a LLaMA-style encoder's hidden states under a
prompt template (its first `crop_start` tokens dropped) plus CLIP's pooled embedding.

The prompt is not padded: the pipeline pads it to 256 tokens and masks the padding in every attention,
which sends attention to a masked kernel (measured on an H200: cuDNN at 381 TFLOP/s masked against ~570
unmasked). Without the padding the mask is all true; the transformer's attention then runs unmasked
(`UnmaskedAttention`), the same numbers to rounding, since masked keys contribute nothing.
"""

from __future__ import annotations

import copy

import torch

from .. import rope as rope_positions
from ..errors import BackendError
from .base import Conditioning, FlowMatch, GuidedPredict, ModelInfo, PlacedRope
from .loading import DTYPES, cast_module, sample_tiling, vae_tiling

PRESETS = dict(scale=2, frames=129, steps=50, guidance=6.0, fps=24, cache_threshold=0.20, cache_alpha=0.5,
               vae_tile=512, vae_dtype="dtype")


class UnmaskedAttention:
    """HunyuanVideo's attention processor, which drops the mask while `drop` is set: the backend's own
    calls feed unpadded prompts, whose masks are all true, and SDPA's unmasked kernels are the fast ones.
    The stock pipeline's calls (padded prompts) keep their masks."""

    def __init__(self, inner):
        self.inner, self.drop = inner, False

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        return self.inner(attn, hidden_states, encoder_hidden_states, None if self.drop else attention_mask,
                          image_rotary_emb)


class HunyuanVideoBackend(FlowMatch, GuidedPredict):
    FAMILY, PRESETS, NATIVE = "hunyuanvideo1.0-t2v", PRESETS, (1280, 720)
    DISTILLED = True  # guidance an input, one call a step; also: unpadded prompts

    @classmethod
    def info_from_configs(cls, c: dict) -> ModelInfo:
        index, tr, vae = c["index"], c["transformer"], c["vae"]
        side = c.get("sidecar", {})
        return ModelInfo(
            family=cls.FAMILY,
            pipeline_class=index["_class_name"],
            latent_channels=vae["latent_channels"],
            vae_spatial=vae.get("spatial_compression_ratio", 8),
            vae_temporal=vae.get("temporal_compression_ratio", 4),
            patch=(tr.get("patch_size_t", 1), tr["patch_size"], tr["patch_size"]),
            native_size=tuple(side.get("native_size", cls.NATIVE)),
            is_i2v=False,
            scheduler=c["scheduler"].get("_class_name", ""),
            presets={**cls.PRESETS, **side.get("presets", {})},
            sketch_multiple=16,  # the pipelines' check_inputs
            guidance_embedded=cls.DISTILLED,
            canvas_rope=True,
        )

    def __init__(self, pipe, info: ModelInfo, device: str = "cpu", dtype: str = "float32",
                 vae_dtype: str = "float32"):
        self.pipe, self.info = pipe, info
        self.device, self.dtype, self.vae_dtype = torch.device(device), DTYPES[dtype], DTYPES[vae_dtype]
        pipe.to(self.device)
        for name in ("transformer", "text_encoder", "text_encoder_2"):
            cast_module(getattr(pipe, name), self.dtype)
        cast_module(pipe.vae, self.vae_dtype)
        self.scheduler = pipe.scheduler
        self.sf = pipe.vae.config.scaling_factor
        self.forwards = 0
        if not isinstance(pipe.transformer.rope, PlacedRope):  # a `rope` that takes a tile's canvas positions
            pipe.transformer.rope = PlacedRope(pipe.transformer.rope)
        self._wrap(pipe.transformer)

    def _placed(self, model, shape, place) -> None:
        """The call's rotary positions: the window's canvas positions, or (None) the stock ones."""
        given = None if place is None else rope_positions.hunyuan_rotary(model.rope.stock, shape, place)
        model.rope.given = None if given is None else tuple(v.to(self.device) for v in given)

    def _wrap(self, model) -> None:
        """1.0's transformer: attention that drops the all-true masks of unpadded prompts."""
        blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
        for block in blocks:
            if not isinstance(block.attn.processor, UnmaskedAttention):
                block.attn.set_processor(UnmaskedAttention(block.attn.processor))
        self.processors = [b.attn.processor for b in blocks]
        self.max_sequence_length = 256
        self.template = dict(self.info.presets.get("prompt_template") or _default_template())

    # -- conditioning ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_conditioning(self, prompt, negative_prompt, guidance, image, size, frames, seed=0) -> Conditioning:
        if image is not None:
            raise BackendError("HunyuanVideo 1.0 text-to-video takes no image")
        embeds, pooled, mask = self.pipe.encode_prompt(prompt=prompt, prompt_template=self.template,
                                                       device=self.device,
                                                       max_sequence_length=self.max_sequence_length)
        keep = mask[0].bool()  # the prompt's own tokens, wherever the tokenizer put its padding
        n = int(keep.sum())
        text = {"encoder_hidden_states": embeds[:, keep].to(self.dtype),
                "encoder_attention_mask": torch.ones(1, n, device=self.device, dtype=self.dtype),
                "pooled_projections": pooled.to(self.dtype)}
        # guidance-distilled: the scale is an input, one call a step (no negative branch)
        extra = {"guidance": torch.tensor([guidance], device=self.device, dtype=self.dtype) * 1000.0}
        return Conditioning(guidance, text, None, extra)

    # -- stage 1 ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sketch(self, prompt, negative_prompt, image, width, height, frames, steps, guidance, generator):
        out = self.pipe(prompt=prompt, height=height, width=width, num_frames=frames, num_inference_steps=steps,
                        guidance_scale=guidance, generator=generator, output_type="latent",
                        prompt_template=self.template, max_sequence_length=self.max_sequence_length).frames
        self.forwards += steps
        return out.float()

    def latent_shape(self, frames, height, width):
        s, t = self.info.vae_spatial, self.info.vae_temporal
        return (1, self.info.latent_channels, (frames - 1) // t + 1, height // s, width // s)

    # -- VAE -------------------------------------------------------------------------------------
    def _tiling(self, vae_tile, height, width):
        sample_tiling(self.pipe.vae, vae_tile, self.info.vae_spatial, (height, width))

    def vae_tiling(self, size, vae_tile, encode=False):
        """None: HunyuanVideo's VAE also tiles in time (16-frame windows, blended), which `supergen.vaetiles`
        does not model yet, so its VAE stages run on one worker (the diffusers tiled VAE)."""
        return None

    @torch.no_grad()
    def decode(self, z, frames=None, vae_tile=None):
        s = self.info.vae_spatial
        self._tiling(vae_tile, z.shape[-2] * s, z.shape[-1] * s)
        z = (z.to(self.device, torch.float32) / self.sf).to(self.vae_dtype)
        return self.pipe.vae.decode(z, return_dict=False)[0].float().clamp(-1, 1)

    @torch.no_grad()
    def encode(self, video, vae_tile=None):
        _, _, f, h, w = video.shape
        self._tiling(vae_tile, h, w)
        z = self.pipe.vae.encode(video.to(self.device, self.vae_dtype)).latent_dist.mode()
        return z.float() * self.sf

    # -- schedule: `FlowMatch` over the pipeline's own sigmas --------------------------------------
    @staticmethod
    def pipeline_sigmas(steps: int):
        import numpy as np

        return np.linspace(1.0, 0.0, steps + 1)[:-1]

    # -- the per-tile call -----------------------------------------------------------------------
    @torch.no_grad()
    def predict_branch(self, x, steps, index, cond: Conditioning, branch, image_latent=None, place=None):
        t = self.timesteps(steps)[index].to(self.device)
        inp = x.to(self.device, self.dtype)
        self.forwards += 1
        model = self.pipe.transformer
        self._placed(model, inp.shape, place)
        for p in self.processors:  # `encode_conditioning`'s prompts are unpadded: all-true masks
            p.drop = True
        try:
            with self.pipe.transformer.cache_context("cond"):
                return self.pipe.transformer(hidden_states=inp, timestep=t.expand(inp.shape[0]).to(torch.float32),
                                             return_dict=False, **cond.text, **cond.extra)[0].float()
        finally:
            model.rope.given = None
            for p in self.processors:
                p.drop = False


def _default_template() -> dict:
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    return DEFAULT_PROMPT_TEMPLATE


PRESETS_15 = dict(scale=2, frames=121, steps=50, guidance=6.0, fps=24, cache_threshold=0.20, cache_alpha=0.5,
                  vae_tile=512, vae_dtype="dtype")


class HunyuanVideo15Backend(HunyuanVideoBackend):
    """HunyuanVideo 1.5 text-to-video (`HunyuanVideo15Pipeline`): true CFG (two branches, as its guider
    combines them), the Qwen2.5-VL text states plus ByT5's glyph states, each with its mask as the pipeline
    pads them; the transformer takes zero image-condition channels and image embeddings for text-to-video.
    The schedule is 1.0's (the pipeline's own sigmas)."""

    FAMILY, PRESETS, NATIVE = "hunyuanvideo1.5-t2v", PRESETS_15, (848, 480)
    DISTILLED = False

    def _wrap(self, model) -> None:
        """Nothing: the stock transformer, its prompts padded and masked as its pipeline makes them."""

    @torch.no_grad()
    def encode_conditioning(self, prompt, negative_prompt, guidance, image, size, frames, seed=0) -> Conditioning:
        if image is not None:
            raise BackendError("HunyuanVideo 1.5 image-to-video is not supported yet")

        def text(p):
            e, m, e2, m2 = self.pipe.encode_prompt(prompt=p, device=self.device, dtype=self.dtype)
            return {"encoder_hidden_states": e, "encoder_attention_mask": m, "encoder_hidden_states_2": e2,
                    "encoder_attention_mask_2": m2}

        cfg = self.pipe.transformer.config
        images = torch.zeros(1, self.pipe.vision_num_semantic_tokens, cfg.image_embed_dim, device=self.device,
                             dtype=self.dtype)
        return Conditioning(guidance, text(prompt), text(negative_prompt) if guidance > 1.0 else None,
                            {"image_embeds": images})

    @torch.no_grad()
    def sketch(self, prompt, negative_prompt, image, width, height, frames, steps, guidance, generator):
        from diffusers.guiders import ClassifierFreeGuidance

        pipe = copy.copy(self.pipe)  # its guider carries the scale
        pipe.guider = ClassifierFreeGuidance(guidance_scale=guidance, enabled=guidance > 1.0)
        out = pipe(prompt=prompt, negative_prompt=negative_prompt, height=height, width=width, num_frames=frames,
                   num_inference_steps=steps, generator=generator, output_type="latent").frames
        self.forwards += steps * (2 if guidance > 1.0 else 1)
        return out.float()

    def _tiling(self, vae_tile, height, width):
        vae, t = self.pipe.vae, vae_tiling(vae_tile, self.info.vae_spatial, (height, width))
        if t is None:
            vae.disable_tiling()
        else:
            s = self.info.vae_spatial
            vae.enable_tiling(tile_sample_min_height=t[0], tile_sample_min_width=t[0], tile_latent_min_height=t[0] // s,
                              tile_latent_min_width=t[0] // s, tile_overlap_factor=1 - t[1] / t[0])

    @torch.no_grad()
    def predict_branch(self, x, steps, index, cond: Conditioning, branch, image_latent=None, place=None):
        t = self.timesteps(steps)[index].to(self.device)
        b, c, f, h, w = x.shape
        zeros = torch.zeros(b, c + 1, f, h, w, device=self.device)  # no image condition: its latents and mask
        inp = torch.cat([x.to(self.device), zeros], dim=1).to(self.dtype)
        text = cond.text if branch == 0 else cond.negative_text
        self.forwards += 1
        model = self.pipe.transformer
        self._placed(model, inp.shape, place)
        try:
            with model.cache_context("pred_cond" if branch == 0 else "pred_uncond"):
                return model(hidden_states=inp, timestep=t.expand(b).to(inp.dtype), return_dict=False, **text,
                             **cond.extra)[0].float()
        finally:
            model.rope.given = None
