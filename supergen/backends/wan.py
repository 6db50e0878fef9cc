"""Wan 2.1 / 2.2 (T2V, I2V, the A14B two-expert models, TI2V-5B text- and image-to-video) through diffusers.

Conventions hidden here: latents are BCFHW, normalised per channel with the VAE's `latents_mean/std`;
the scheduler is flow matching (the model predicts velocity = noise - x0); CFG is two calls ("cond",
"uncond"); Wan 2.2 A14B switches to `transformer_2` below `boundary_ratio * 1000`; Wan 2.1 I2V adds
CLIP image embeddings (global) and 4 mask + z image-condition channels (cropped per tile); TI2V-5B puts
the image's latent in the first latent frame at timestep 0 (each tile its crop; `finish` writes it into the
loop's result, as the stock pipeline does); a tile's
rotary positions (`supergen.rope`) reach the transformer through its `rope` module, wrapped to hand back
the ones given for the call.
"""

from __future__ import annotations

import torch

from .. import rope as rope_positions
from ..errors import BackendError
from .base import (Conditioning, FlowMatch, GuidedPredict, ModelInfo, PlacedRope, preprocess_image,
                   stock_latents, text_conditioning, with_first_frame)
from ..vaetiles import Axis, Tiling
from .loading import DTYPES, cast_module, check_latent_shape, sample_tiling

PRESETS = dict(scale=2, frames=81, steps=50, guidance=5.0, fps=16, cache_threshold=0.20, cache_alpha=0.5)


class WanBackend(FlowMatch, GuidedPredict):
    @staticmethod
    def info_from_configs(c: dict) -> ModelInfo:
        index, tr, vae = c["index"], c.get("transformer") or c.get("transformer_2"), c["vae"]
        i2v = index["_class_name"] == "WanImageToVideoPipeline"
        expand = bool(index.get("expand_timesteps"))
        two_experts = c.get("transformer_2") is not None and c.get("transformer") is not None
        version = "2.2" if (expand or two_experts or index.get("boundary_ratio")) else "2.1"
        family = f"wan{version}-{'ti2v' if expand else ('i2v' if i2v else 't2v')}"
        dim = tr["num_attention_heads"] * tr["attention_head_dim"]
        native = (1280, 704) if expand else ((1280, 720) if dim >= 5120 else (832, 480))
        side = c.get("sidecar", {})
        presets = {**PRESETS, **side.get("presets", {})}
        return ModelInfo(
            family=family,
            pipeline_class=index["_class_name"],
            latent_channels=vae["z_dim"],
            vae_spatial=vae.get("scale_factor_spatial", 8),
            vae_temporal=vae.get("scale_factor_temporal", 4),
            patch=tuple(tr["patch_size"]),
            native_size=tuple(side.get("native_size", native)),
            is_i2v=i2v,
            scheduler=c["scheduler"].get("_class_name", ""),
            presets=presets,
            sketch_multiple=16,  # WanPipeline.check_inputs, whatever the patch (the world model's is 1x1)
            canvas_rope=True,
            expert_boundary=(index["boundary_ratio"] * c["scheduler"].get("num_train_timesteps", 1000)
                             if two_experts and index.get("boundary_ratio") is not None else None),
        )

    def __init__(self, pipe, info: ModelInfo, device: str = "cpu", dtype: str = "float32",
                 vae_dtype: str = "float32"):
        self.pipe, self.info = pipe, info
        self.device, self.dtype, self.vae_dtype = torch.device(device), DTYPES[dtype], DTYPES[vae_dtype]
        pipe.to(self.device)
        for name in ("transformer", "transformer_2", "text_encoder", "image_encoder"):
            cast_module(getattr(pipe, name, None), self.dtype)
        for name in ("transformer", "transformer_2"):
            model = getattr(pipe, name, None)
            if model is not None and not isinstance(model.rope, PlacedRope):
                model.rope = PlacedRope(model.rope)
        cast_module(pipe.vae, self.vae_dtype)  # Wan's VAE is published in float32 (the preset)
        self.scheduler = pipe.scheduler
        if getattr(self.scheduler.config, "stochastic_sampling", False):
            raise BackendError("stochastic flow-matching sampling is not supported: its per-step noise would "
                               "depend on the tile layout")
        z = pipe.vae.config.z_dim
        self.mean = torch.tensor(pipe.vae.config.latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1)
        self.std = torch.tensor(pipe.vae.config.latents_std, dtype=torch.float32).view(1, z, 1, 1, 1)
        ratio = pipe.config.get("boundary_ratio")
        self.boundary = None if ratio is None else ratio * self.scheduler.config.num_train_timesteps
        self.max_sequence_length = 512
        self.forwards = 0  # transformer calls, for reporting and for tests that count them

    # -- conditioning ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_conditioning(self, prompt, negative_prompt, guidance, image, size, frames, seed=0) -> Conditioning:
        cond = text_conditioning(self.pipe, prompt, negative_prompt, guidance, self.max_sequence_length,
                                 self.device, self.dtype)
        if image is not None:
            width, height = size
            if self.pipe.image_encoder is not None:
                cond.extra["encoder_hidden_states_image"] = self.pipe.encode_image(image, self.device).to(self.dtype)
            pixels = preprocess_image(self.pipe, image, width, height, self.device)
            shape = self.latent_shape(frames, height, width)
            # Wan 2.1/2.2 A14B: the image latent and its mask, channels the transformer concatenates; TI2V-5B
            # (`expand_timesteps`): the image's one latent frame, which replaces the clip's first
            condition = self.pipe.prepare_latents(pixels, 1, shape[1], height, width, frames, torch.float32,
                                                  self.device, None, torch.zeros(shape))[1]
            cond.image_latent = condition.float()
        return cond

    def latent_shape(self, frames, height, width):
        """(1, C, F', h, w) of a clip of `frames` at (height, width) pixels."""
        s, t = self.info.vae_spatial, self.info.vae_temporal
        return (1, self.info.latent_channels, (frames - 1) // t + 1, height // s, width // s)

    # -- stage 1 ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sketch(self, prompt, negative_prompt, image, width, height, frames, steps, guidance, generator):
        out = stock_latents(self.pipe, prompt, negative_prompt, image, width, height, frames, steps, guidance,
                            generator, self.max_sequence_length)
        n_calls = steps * (2 if guidance > 1.0 else 1)
        self.forwards += n_calls
        return out.float()

    # -- VAE -------------------------------------------------------------------------------------
    def _tiling(self, vae_tile, height, width):
        sample_tiling(self.pipe.vae, vae_tile, self.info.vae_spatial, (height, width))

    def vae_tiling(self, size, vae_tile, encode=False):
        """The tiled VAE's tiles (`vaetiles.Tiling`) for a latent (decode) or video (encode) of (h, w)
        `size`, as `vae.tiled_decode`/`tiled_encode` walk them; None where the VAE runs untiled (or packs
        pixels into patches, Wan 2.2's, which the tiles do not model)."""
        s, vae = self.info.vae_spatial, self.pipe.vae
        px = tuple(size) if encode else (size[0] * s, size[1] * s)
        self._tiling(vae_tile, *px)
        if not vae.use_tiling or vae.config.patch_size is not None:
            return None
        tile, stride = vae.tile_sample_min_height, vae.tile_sample_stride_height
        if encode:
            return Tiling(*(Axis(n, tile, stride, 1 / s, tile // s - stride // s, stride // s) for n in size))
        return Tiling(*(Axis(n, tile // s, stride // s, s, tile - stride, stride) for n in size))

    @torch.no_grad()
    def vae_tile(self, window, encode=False, frames=None):
        """One tile as `tiled_decode` (normalised latent -> pixels) or `tiled_encode` (pixels -> moments)
        computes it, before any blending."""
        vae, dev = self.pipe.vae, self.device
        vae.clear_cache()
        parts = []
        if encode:
            x = window.to(dev, self.vae_dtype)
            for k in range(1 + (x.shape[2] - 1) // 4):
                vae._enc_conv_idx = [0]
                chunk = x[:, :, :1] if k == 0 else x[:, :, 1 + 4 * (k - 1) : 1 + 4 * k]
                parts.append(vae.quant_conv(vae.encoder(chunk, feat_cache=vae._enc_feat_map,
                                                        feat_idx=vae._enc_conv_idx)))
        else:
            z = (window.to(dev, torch.float32) * self.std.to(dev) + self.mean.to(dev)).to(self.vae_dtype)
            for k in range(z.shape[2]):
                vae._conv_idx = [0]
                parts.append(vae.decoder(vae.post_quant_conv(z[:, :, k : k + 1]), feat_cache=vae._feat_map,
                                         feat_idx=vae._conv_idx, first_chunk=(k == 0)))
        vae.clear_cache()
        return torch.cat(parts, dim=2)

    def vae_finish(self, out, encode=False, frames=None):
        """What `decode`/`encode` make of the tiled VAE's blended output: the clamped video, or the
        normalised posterior mode."""
        if not encode:
            return out.float().clamp(-1, 1)
        z = out[:, : self.info.latent_channels].float()
        return (z - self.mean.to(z.device)) / self.std.to(z.device)

    @torch.no_grad()
    def decode(self, z, frames=None, vae_tile=None):
        s = self.info.vae_spatial
        self._tiling(vae_tile, z.shape[-2] * s, z.shape[-1] * s)
        z = z.to(self.device, torch.float32) * self.std.to(self.device) + self.mean.to(self.device)
        return self.pipe.vae.decode(z.to(self.vae_dtype), return_dict=False)[0].float().clamp(-1, 1)

    @torch.no_grad()
    def encode(self, video, vae_tile=None):
        b, _, f, h, w = video.shape
        self._tiling(vae_tile, h, w)
        z = self.pipe.vae.encode(video.to(self.device, self.vae_dtype)).latent_dist.mode()
        check_latent_shape(z, self.latent_shape(f, h, w), "encode")
        return (z.float() - self.mean.to(self.device)) / self.std.to(self.device)

    # -- schedule: `FlowMatch` --------------------------------------------------------------------
    def finish(self, x, image_latent=None):
        """TI2V-5B image-to-video: the image's latent frame in place of the first (what the stock pipeline
        feeds the transformer each step and returns at the end); any other model: `x`."""
        if image_latent is None or not self.pipe.config.get("expand_timesteps"):
            return x
        return with_first_frame(x, image_latent)

    # -- the per-tile call -----------------------------------------------------------------------
    @torch.no_grad()
    def predict_branch(self, x, steps, index, cond: Conditioning, branch, image_latent=None, place=None):
        t = self.timesteps(steps)[index].to(self.device)
        # Wan 2.1, or 2.2's high-noise expert above the boundary; 2.2's low-noise expert below it
        model = self.pipe.transformer if self.boundary is None or t >= self.boundary else self.pipe.transformer_2
        expand = self.pipe.config.get("expand_timesteps")
        if image_latent is None:
            inp = x
        elif expand:  # TI2V-5B: the first latent frame is the image's, its tokens at timestep 0
            inp = self.finish(x, image_latent)
        else:
            inp = torch.cat([x, image_latent], dim=1)
        inp = inp.to(self.device, self.dtype)
        b, _, f, h, w = inp.shape
        if expand:  # one timestep per token, as WanPipeline / WanImageToVideoPipeline build it
            ph, pw = self.info.patch[1:]
            mask = torch.ones(f, h // ph, w // pw, device=self.device)
            if image_latent is not None:
                mask[0] = 0
            timestep = (mask * t).flatten().expand(b, -1)
        else:
            timestep = t.expand(b)
        text = cond.text if branch == 0 else cond.negative_text
        self.forwards += 1
        if place is not None:
            model.rope.given = rope_positions.wan_rotary(model.rope.stock, inp.shape, place)
        try:
            with model.cache_context("cond" if branch == 0 else "uncond"):
                return model(hidden_states=inp, timestep=timestep, return_dict=False, **text,
                             **cond.extra)[0].float()
        finally:
            model.rope.given = None
