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
from ..errors import BackendError, SpecError
from .base import Conditioning, FlowMatch, GuidedPredict, ModelInfo, PlacedRope, with_first_frame
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


class ValidTokensAttention:
    """HunyuanVideo 1.5's joint attention over its valid tokens alone, while `on` is set (the backend's own
    calls; the stock pipeline's keep the stock processor, `inner`).

    Its pipeline pads the prompt (Qwen2.5-VL to 1000 tokens, ByT5 to 256) and, for text-to-video, appends 729
    zero image tokens, and masks all of them as queries and as keys. With a mask, SDPA runs its
    memory-efficient kernel (about 135 TFLOP/s on an H200, against cuDNN's 578 unmasked on the same shape:
    the 1.5 tile forward measured 21% MFU). A masked token gives nothing to a valid one and takes nothing
    from it, so the valid tokens' attention among themselves is the same arithmetic, run unmasked; the masked
    positions, whose outputs only ever reach other masked positions, get zeros."""

    def __init__(self, inner):
        self.inner, self.on = inner, False
        self.valid: int | None = None  # valid text (and image) tokens, set per call: no mask read per layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if not self.on:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        from diffusers.models.embeddings import apply_rotary_emb

        def heads(x):
            return x.unflatten(2, (attn.heads, -1))

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        q, k = attn.norm_q(q), attn.norm_k(k)
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        text = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        if text:
            eq, ek = heads(attn.add_q_proj(encoder_hidden_states)), heads(attn.add_k_proj(encoder_hidden_states))
            ev = heads(attn.add_v_proj(encoder_hidden_states))
            eq = eq if attn.norm_added_q is None else attn.norm_added_q(eq)
            ek = ek if attn.norm_added_k is None else attn.norm_added_k(ek)
            q, k, v = torch.cat([q, eq], 1), torch.cat([k, ek], 1), torch.cat([v, ev], 1)
        b, n = q.shape[:2]
        out = torch.zeros_like(q)
        if self.valid is not None:  # the backend's count: the transformer puts the valid text tokens first
            m = n - text + self.valid
            q_, k_, v_ = (x[:, :m].transpose(1, 2) for x in (q, k, v))  # (batch, heads, tokens, dim)
            out[:, :m] = torch.nn.functional.scaled_dot_product_attention(q_, k_, v_).transpose(1, 2)
        else:  # from the mask: each sample's own valid tokens
            valid = torch.ones(b, n, dtype=torch.bool, device=q.device)
            if attention_mask is not None:  # the mask covers the text (and image) tokens at the end
                valid[:, n - attention_mask.shape[1]:] = attention_mask.bool()
            for i in range(b):
                idx = valid[i].nonzero().squeeze(1)
                q_, k_, v_ = (x[i, idx].transpose(0, 1).unsqueeze(0) for x in (q, k, v))
                out[i, idx] = torch.nn.functional.scaled_dot_product_attention(q_, k_, v_)[0].transpose(0, 1)
        out = out.flatten(2, 3).to(q.dtype)
        video, words = out[:, : n - text], out[:, n - text:]
        if getattr(attn, "to_out", None) is not None:
            video = attn.to_out[1](attn.to_out[0](video))
        if text and getattr(attn, "to_add_out", None) is not None:
            words = attn.to_add_out(words)
        return video, (words if text else None)


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
            is_i2v=index["_class_name"].endswith("ImageToVideoPipeline"),
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
        return self._unpadded(embeds, pooled, mask, guidance)

    def _unpadded(self, embeds, pooled, mask, guidance) -> Conditioning:
        """The text states of the prompt's own tokens (its mask then all true) and the guidance input."""
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
        image = {} if image is None else {"image": image}
        out = self.pipe(prompt=prompt, height=height, width=width, num_frames=frames, num_inference_steps=steps,
                        guidance_scale=guidance, generator=generator, output_type="latent",
                        prompt_template=self.template, max_sequence_length=self.max_sequence_length, **image).frames
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


class HunyuanVideoI2VBackend(HunyuanVideoBackend):
    """HunyuanVideo-I2V (`HunyuanVideoImageToVideoPipeline`, `image_condition_type` "token_replace", the
    model the SuperGen paper refines): 1.0's guidance-distilled call, plus the image three ways. LLaVA reads
    it with the prompt (its tokens lead the text states, global to every tile); its latent replaces the
    first latent frame of every call's input (each tile its window's crop) and of the result, the model
    told that frame is clean; and the sketch starts from noise holding 0.1% of it (`i2v_stability`).

    The "33ch" variant (`latent_concat`) returns four frames fewer than it is asked for, which a spec's
    `frames` cannot express: refused from its configs."""

    FAMILY = "hunyuanvideo1.0-i2v"

    @classmethod
    def info_from_configs(cls, c: dict) -> ModelInfo:
        kind = c["transformer"].get("image_condition_type")
        if kind != "token_replace":
            raise SpecError("model", f"HunyuanVideo-I2V with image_condition_type {kind!r} is not supported: only "
                                     "'token_replace' (HunyuanVideo-I2V); 'latent_concat' (the 33-channel variant) "
                                     "drops its first four frames, which a render's `frames` cannot express")
        return super().info_from_configs(c)

    def _wrap(self, model) -> None:
        super()._wrap(model)
        self.template = dict(self.info.presets.get("prompt_template") or _default_template(i2v=True))

    @torch.no_grad()
    def encode_conditioning(self, prompt, negative_prompt, guidance, image, size, frames, seed=0) -> Conditioning:
        if image is None:
            raise BackendError(f"{self.info.family} is an image-to-video model: it needs an image")
        pipe, (width, height) = self.pipe, size
        embeds, pooled, mask = pipe.encode_prompt(image=image, prompt=prompt, prompt_template=self.template,
                                                  device=self.device, max_sequence_length=self.max_sequence_length,
                                                  image_embed_interleave=4)  # the pipeline's for token_replace
        cond = self._unpadded(embeds, pooled, mask, guidance)
        pixels = pipe.video_processor.preprocess(image, height, width).unsqueeze(2)
        # (1, C, 1, h, w): the first frame's latent, untiled (not whatever tiling the last decode left set)
        cond.image_latent = self.encode(pixels, vae_tile=None)
        return cond

    def initial_latent(self, width, height, frames, generator, image_latent=None):
        """The pipeline's start: the noise with 0.1% of the image's latent in every frame."""
        x = super().initial_latent(width, height, frames, generator)
        if image_latent is None:
            return x
        t = torch.tensor([0.999], device=x.device)
        return x * t + image_latent.to(x.device) * (1 - t)

    def finish(self, x, image_latent=None):
        """The image's latent as the first frame, as the pipeline's input and result carry it."""
        return x if image_latent is None else with_first_frame(x, image_latent)

    @torch.no_grad()
    def predict_branch(self, x, steps, index, cond: Conditioning, branch, image_latent=None, place=None):
        return super().predict_branch(self.finish(x, image_latent), steps, index, cond, branch, place=place)


def _valid_tokens(text: dict, image_embeds: torch.Tensor) -> int:
    """How many of HunyuanVideo 1.5's joint text tokens count (batch 1): the prompt's, the glyphs' and, for
    image-to-video, the image's (text-to-video passes zeros, which its transformer masks out)."""
    n = int(text["encoder_attention_mask"].sum()) + int(text["encoder_attention_mask_2"].sum())
    return n + (0 if bool((image_embeds == 0).all()) else image_embeds.shape[1])


def _default_template(i2v: bool = False) -> dict:
    if i2v:
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE
    else:
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
        """Attention over the valid tokens alone in the backend's calls (`ValidTokensAttention`): the prompts
        stay padded as the pipeline pads them, and the masks say which tokens count."""
        for block in model.transformer_blocks:
            if not isinstance(block.attn.processor, ValidTokensAttention):
                block.attn.set_processor(ValidTokensAttention(block.attn.processor))
        self.processors = [b.attn.processor for b in model.transformer_blocks]

    @torch.no_grad()
    def encode_conditioning(self, prompt, negative_prompt, guidance, image, size, frames, seed=0) -> Conditioning:
        if image is not None:
            raise BackendError(f"{self.info.family} is a text-to-video model and takes no image")
        cfg = self.pipe.transformer.config
        images = torch.zeros(1, self.pipe.vision_num_semantic_tokens, cfg.image_embed_dim, device=self.device,
                             dtype=self.dtype)
        return self._text(prompt, negative_prompt, guidance, {"image_embeds": images})

    def _text(self, prompt, negative_prompt, guidance, extra) -> Conditioning:
        def text(p):
            e, m, e2, m2 = self.pipe.encode_prompt(prompt=p, device=self.device, dtype=self.dtype)
            return {"encoder_hidden_states": e, "encoder_attention_mask": m, "encoder_hidden_states_2": e2,
                    "encoder_attention_mask_2": m2}

        return Conditioning(guidance, text(prompt), text(negative_prompt) if guidance > 1.0 else None, extra)

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
        if image_latent is None:  # text-to-video: no image condition (zero latents, zero mask)
            image_latent = torch.zeros(b, c + 1, f, h, w, device=self.device)
        inp = torch.cat([x.to(self.device), image_latent.to(self.device)], dim=1).to(self.dtype)
        text = cond.text if branch == 0 else cond.negative_text
        self.forwards += 1
        model = self.pipe.transformer
        self._placed(model, inp.shape, place)
        valid = _valid_tokens(text, cond.extra["image_embeds"])  # one host read per call, not one per layer
        for p in self.processors:
            p.on, p.valid = True, valid
        try:
            with model.cache_context("pred_cond" if branch == 0 else "pred_uncond"):
                return model(hidden_states=inp, timestep=t.expand(b).to(inp.dtype), return_dict=False, **text,
                             **cond.extra)[0].float()
        finally:
            model.rope.given = None
            for p in self.processors:
                p.on, p.valid = False, None


class HunyuanVideo15I2VBackend(HunyuanVideo15Backend):
    """HunyuanVideo 1.5 image-to-video (`HunyuanVideo15ImageToVideoPipeline`): 1.5's text and CFG, and the
    image twice: SigLIP's embedding of it (global, the same for every tile) and its latent in the condition
    channels' first frame, with a mask channel marking that frame; each tile takes its window's crop of that
    canvas, as CogVideoX's image-to-video does. The image is cropped to the size it conditions, as the
    pipeline crops it.

    The stock pipeline picks its own size, the bucket of `target_size`'s area nearest the image's aspect;
    supergen's sketch is that pipeline's loop (its conditioning, noise, steps) at the spec's sketch size,
    which equals the stock pipeline where the two sizes agree (tests/test_method.py)."""

    FAMILY = "hunyuanvideo1.5-i2v"

    @torch.no_grad()
    def encode_conditioning(self, prompt, negative_prompt, guidance, image, size, frames, seed=0) -> Conditioning:
        if image is None:
            raise BackendError(f"{self.info.family} is an image-to-video model: it needs an image")
        pipe, (width, height) = self.pipe, size
        image = pipe.video_processor.resize(image, height=height, width=width, resize_mode="crop")
        cond = self._text(prompt, negative_prompt, guidance,
                          {"image_embeds": pipe.encode_image(image, 1, self.device, self.dtype)})
        self._tiling(None, height, width)  # one frame, untiled: not whatever tiling the last decode left set
        z = pipe._get_image_latents(pipe.vae, pipe.video_processor, image, height, width, self.device).float()
        _, c, f, h, w = self.latent_shape(frames, height, width)
        latent = torch.zeros(1, c + 1, f, h, w, device=self.device)  # the image's latent frame, then its mask
        latent[:, :c, :1] = z
        latent[:, c, 0] = 1.0
        cond.image_latent = latent
        return cond

    @torch.no_grad()
    def sketch(self, prompt, negative_prompt, image, width, height, frames, steps, guidance, generator):
        cond = self.encode_conditioning(prompt, negative_prompt, guidance, image, (width, height), frames)
        x, state = self.initial_latent(width, height, frames, generator), {}
        for i in range(steps):
            x, state = self.step(steps, i, self.predict(x, steps, i, cond, cond.image_latent), x, state,
                                 generator=generator)
        return x.float()
