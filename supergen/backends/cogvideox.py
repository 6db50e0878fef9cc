"""CogVideoX 1.0 / 1.5 (T2V and I2V) through diffusers.

Conventions hidden here: the transformer takes BFCHW (the sampler sees BCFHW); latents are scaled by the
VAE's `scaling_factor`; the scheduler is DDIM or DPM (v-prediction, zero terminal SNR); CFG is two calls,
not the pipeline's one batched call, so a branch can run on another GPU and give the same numbers (the
sketch too: `supergen.sketch`); RoPE is built for the tile's own shape (the paper's origin-anchored RoPE),
or, for 1.5, from the tile's canvas positions (`supergen.rope`); CogVideoX 1.5 pads the latent clip at the
front to a multiple of `patch_size_t` (the pad frame lives on the canvas and is dropped at decode); the 1.0
I2V model has learned positional embeddings, so only its native tile works.
"""

from __future__ import annotations

import torch

from .. import noise, rope as rope_positions
from ..errors import BackendError
from .base import Conditioning, GuidedPredict, ModelInfo, preprocess_image, stock_latents, text_conditioning
from ..vaetiles import Axis, Tiling
from .loading import DTYPES, cast_module, check_latent_shape, fresh_scheduler, vae_overlap, vae_tiling

# vae_tile: CogVideoX's VAE decodes a 1024-px tile of a 4K clip in over 110 GiB (measured on an H200, see
# docs/benchmarks.md); 512-px tiles cover the same area with the same work in a fraction of the memory
PRESETS = dict(scale=2, frames=41, steps=50, guidance=6.0, fps=8, cache_threshold=0.20, cache_alpha=0.5,
               vae_tile=512, vae_dtype="dtype")


class CogVideoXBackend(GuidedPredict):
    @staticmethod
    def info_from_configs(c: dict) -> ModelInfo:
        index, tr, vae = c["index"], c["transformer"], c["vae"]
        i2v = index["_class_name"] == "CogVideoXImageToVideoPipeline"
        v15 = tr.get("patch_size_t") is not None
        spatial = 2 ** (len(vae["block_out_channels"]) - 1)
        side = c.get("sidecar", {})
        if v15:
            native = (1360, 768)
            max_tile = (tr["sample_height"], tr["sample_width"])  # extent of the "slice" RoPE grid
        else:
            native = (tr["sample_width"] * spatial, tr["sample_height"] * spatial)
            max_tile = None
        return ModelInfo(
            family=f"cogvideox{'1.5' if v15 else '1.0'}-{'i2v' if i2v else 't2v'}",
            pipeline_class=index["_class_name"],
            latent_channels=vae["latent_channels"],
            vae_spatial=spatial,
            vae_temporal=vae["temporal_compression_ratio"],
            patch=(tr.get("patch_size_t") or 1, tr["patch_size"], tr["patch_size"]),
            native_size=tuple(side.get("native_size", native)),
            is_i2v=i2v,
            scheduler=c["scheduler"].get("_class_name", ""),
            exact_tile=bool(tr.get("use_learned_positional_embeddings")),
            max_tile=max_tile,
            canvas_rope=v15 and bool(tr.get("use_rotary_positional_embeddings")),
            # the VAE's time upsampler keeps the first frame apart only for an odd latent count
            frame_step=2 * vae["temporal_compression_ratio"],
            presets={**PRESETS, **side.get("presets", {})},
        )

    def __init__(self, pipe, info: ModelInfo, device: str = "cpu", dtype: str = "float32",
                 vae_dtype: str = "float32"):
        self.pipe, self.info = pipe, info
        self.device, self.dtype, self.vae_dtype = torch.device(device), DTYPES[dtype], DTYPES[vae_dtype]
        pipe.to(self.device)
        cast_module(pipe.transformer, self.dtype)
        cast_module(pipe.text_encoder, self.dtype)
        cast_module(pipe.vae, self.vae_dtype)
        self.scheduler = pipe.scheduler
        self.multistep = type(self.scheduler).__name__ == "CogVideoXDPMScheduler"
        self.sf = pipe.vae.config.scaling_factor
        cfg = pipe.transformer.config
        self.p_t = cfg.patch_size_t or 1
        self.max_sequence_length = cfg.max_text_seq_length
        self.forwards = 0

    def latent_shape(self, frames, height, width):
        """(1, C, F', h, w) of a clip of `frames` at (height, width) pixels, 1.5's pad frames included."""
        n, pad = self._latent_frames(frames)
        s = self.info.vae_spatial
        return (1, self.info.latent_channels, n + pad, height // s, width // s)

    def _latent_frames(self, frames: int) -> tuple[int, int]:
        """(real latent frames, front padding frames)."""
        n = (frames - 1) // self.info.vae_temporal + 1
        return n, (-n) % self.p_t

    # -- conditioning ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_conditioning(self, prompt, negative_prompt, guidance, image, size, frames, seed=0) -> Conditioning:
        cond = text_conditioning(self.pipe, prompt, negative_prompt, guidance, self.max_sequence_length,
                                 self.device, self.dtype)
        if image is not None:
            width, height = size
            n, pad = self._latent_frames(frames)
            pixels = preprocess_image(self.pipe, image, width, height, self.device).to(self.vae_dtype)
            shape = (1, n + pad, self.info.latent_channels, height // self.info.vae_spatial,
                     width // self.info.vae_spatial)
            _, image_latents = self.pipe.prepare_latents(
                pixels, 1, self.info.latent_channels, frames + pad * self.info.vae_temporal, height, width,
                torch.float32, self.device, noise.generator(seed, "image-latent"), torch.zeros(shape))
            cond.image_latent = image_latents.permute(0, 2, 1, 3, 4).float()  # BFCHW -> BCFHW
        if self.pipe.transformer.config.ofs_embed_dim is not None:
            cond.extra["ofs"] = torch.full((1,), 2.0, device=self.device, dtype=self.dtype)
        return cond

    # -- stage 1 ---------------------------------------------------------------------------------
    def initial_latent(self, width, height, frames, generator, image_latent=None):
        """The noise `CogVideoXPipeline.prepare_latents` starts from, 1.5's pad frames included, drawn in
        its BFCHW layout (float32: the pipeline draws in the prompt's dtype, bfloat16 on GPUs)."""
        from diffusers.utils.torch_utils import randn_tensor

        _, c, f, h, w = self.latent_shape(frames, height, width)
        z = randn_tensor((1, f, c, h, w), generator=generator, device=self.device, dtype=torch.float32)
        return (z * self.scheduler.init_noise_sigma).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def sketch(self, prompt, negative_prompt, image, width, height, frames, steps, guidance, generator):
        out = stock_latents(self.pipe, prompt, negative_prompt, image, width, height, frames, steps, guidance,
                            generator, self.max_sequence_length)
        self.forwards += steps
        return out.permute(0, 2, 1, 3, 4).float()  # BFCHW -> BCFHW, keeps 1.5's pad frame

    # -- VAE -------------------------------------------------------------------------------------
    def _tiling(self, vae_tile, height, width):
        vae = self.pipe.vae
        t = vae_tiling(vae_tile, self.info.vae_spatial, (height, width), vae_overlap(self.info.family))
        if t is None:
            vae.disable_tiling()
        else:
            overlap = 1 - t[1] / t[0]
            vae.enable_tiling(tile_sample_min_height=t[0], tile_sample_min_width=t[0],
                              tile_overlap_factor_height=overlap, tile_overlap_factor_width=overlap)

    def vae_tiling(self, size, vae_tile, encode=False):
        """The tiled VAE's tiles (`vaetiles.Tiling`) for a latent (decode, without 1.5's pad frame) or video
        (encode) of (h, w) `size`, with diffusers' own arithmetic; None where the VAE runs untiled."""
        s, vae = self.info.vae_spatial, self.pipe.vae
        self._tiling(vae_tile, *(tuple(size) if encode else (size[0] * s, size[1] * s)))
        if not vae.use_tiling:
            return None
        f, tsm, tlm = vae.tile_overlap_factor_height, vae.tile_sample_min_height, vae.tile_latent_min_height
        if encode:
            blend = int(tlm * f)
            return Tiling(*(Axis(n, tsm, int(tsm * (1 - f)), 1 / s, blend, tlm - blend) for n in size))
        blend = int(tsm * f)
        return Tiling(*(Axis(n, tlm, int(tlm * (1 - f)), s, blend, tsm - blend) for n in size))

    @torch.no_grad()
    def vae_tile(self, window, encode=False, frames=None):
        """One tile as the tiled VAE computes it before blending: its frame-batched loop is the untiled
        one (`_decode`/`_encode` on a window no larger than a tile). Decoding drops 1.5's pad frames
        (`frames`: the clip's length)."""
        vae = self.pipe.vae
        if encode:
            return vae._encode(window.to(self.device, self.vae_dtype))
        if frames is not None:
            window = window[:, :, self._latent_frames(frames)[1]:]
        z = (window.to(self.device, torch.float32) / self.sf).to(self.vae_dtype)
        return vae._decode(z, return_dict=False)[0]

    def vae_finish(self, out, encode=False, frames=None):
        """What `decode`/`encode` make of the tiled VAE's blended output."""
        if not encode:
            if frames is not None and out.shape[2] != frames:
                raise BackendError(f"decode: the VAE returned {out.shape[2]} frames, expected {frames}")
            return out.float().clamp(-1, 1)
        z = out[:, : self.info.latent_channels].float() * self.sf
        pad = (-z.shape[2]) % self.p_t
        if pad:
            z = torch.cat([z[:, :, :1].expand(-1, -1, pad, -1, -1), z], dim=2)
        return z.float()

    @torch.no_grad()
    def decode(self, z, frames=None, vae_tile=None):
        if frames is not None:
            n, pad = self._latent_frames(frames)
            if z.shape[2] != n + pad:
                raise BackendError(f"decode: latent has {z.shape[2]} frames, expected {n + pad} for {frames}")
            z = z[:, :, pad:]
        s = self.info.vae_spatial
        self._tiling(vae_tile, z.shape[-2] * s, z.shape[-1] * s)
        video = self.pipe.vae.decode((z.to(self.device, torch.float32) / self.sf).to(self.vae_dtype),
                                     return_dict=False)[0]
        if frames is not None and video.shape[2] != frames:
            raise BackendError(f"decode: the VAE returned {video.shape[2]} frames, expected {frames}")
        return video.float().clamp(-1, 1)

    @torch.no_grad()
    def encode(self, video, vae_tile=None):
        b, _, f, h, w = video.shape
        self._tiling(vae_tile, h, w)
        z = self.pipe.vae.encode(video.to(self.device, self.vae_dtype)).latent_dist.mode().float() * self.sf
        n, pad = self._latent_frames(f)
        s = self.info.vae_spatial
        check_latent_shape(z, (b, self.info.latent_channels, n, h // s, w // s), "encode")
        if pad:  # CogVideoX 1.5 runs on a whole number of patch_size_t frames: repeat the first in front
            z = torch.cat([z[:, :, :1].expand(-1, -1, pad, -1, -1), z], dim=2)
        return z.float()

    # -- schedule --------------------------------------------------------------------------------
    def timesteps(self, steps: int) -> torch.Tensor:
        return fresh_scheduler(self.scheduler, steps).timesteps

    def renoise(self, z0, eps, steps, index):
        """sqrt(abar_t) * z0 + sqrt(1 - abar_t) * noise at t = timesteps[index] (DDPM forward process)."""
        s = fresh_scheduler(self.scheduler, steps)
        t = s.timesteps[index : index + 1].long()
        return s.add_noise(z0, eps.to(z0), t)

    def step(self, steps, index, prediction, x, state, seed=0, generator=None):
        s = fresh_scheduler(self.scheduler, steps)
        t = s.timesteps[index]
        mo, xx = prediction.float().permute(0, 2, 1, 3, 4), x.permute(0, 2, 1, 3, 4)  # -> BFCHW
        if self.multistep:  # DPM keeps the previous x0 estimate: canvas-aligned state
            old = state.get("old_x0")
            back = s.timesteps[index - 1] if old is not None else None
            # DPM adds noise every step: the sketch's generator goes on drawing it, as in the stock pipeline;
            # on the canvas, a generator keyed by (seed, step), as for all noise
            g = generator if generator is not None else noise.generator(seed, f"scheduler-step-{index}")
            xx, x0 = s.step(mo, None if old is None else old.permute(0, 2, 1, 3, 4), t, back, xx,
                            generator=g, return_dict=False)
            state = {**state, "old_x0": x0.permute(0, 2, 1, 3, 4).float()}
        else:
            xx = s.step(mo, t, xx, return_dict=False)[0]
        return xx.permute(0, 2, 1, 3, 4).float(), state

    # -- the per-tile call -----------------------------------------------------------------------
    @torch.no_grad()
    def predict_branch(self, x, steps, index, cond: Conditioning, branch, image_latent=None, place=None):
        t = self.timesteps(steps)[index].to(self.device)
        b, _, f, h, w = x.shape
        inp = x.permute(0, 2, 1, 3, 4)  # BCFHW -> BFCHW
        if image_latent is not None:
            inp = torch.cat([inp, image_latent.permute(0, 2, 1, 3, 4)], dim=2)
        text = (cond.text if branch == 0 else cond.negative_text)["encoder_hidden_states"]
        rope = None
        cfg = self.pipe.transformer.config
        if place is not None:  # 1.5 only (`ModelInfo.canvas_rope`): the window's canvas positions
            p = cfg.patch_size
            rope = rope_positions.cogvideox_rotary(cfg.attention_head_dim, (h // p, w // p), -(-f // self.p_t), p,
                                                   place, self.device)
        elif cfg.use_rotary_positional_embeddings:
            s = self.info.vae_spatial
            rope = self.pipe._prepare_rotary_positional_embeddings(h * s, w * s, f, self.device)
        self.forwards += 1
        with self.pipe.transformer.cache_context("cond" if branch == 0 else "uncond"):
            out = self.pipe.transformer(hidden_states=inp.to(self.device, self.dtype), encoder_hidden_states=text,
                                        timestep=t.expand(b), image_rotary_emb=rope,
                                        return_dict=False, **cond.extra)[0].float()
        return out.permute(0, 2, 1, 3, 4)  # -> BCFHW
