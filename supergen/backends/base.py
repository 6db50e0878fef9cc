"""What every model backend provides. The sampler (tiling, shifting, merging, caching, placement) only
talks to this small surface; everything model-specific (latent layout and normalisation, CFG batching,
positional embeddings, conditioning channels, the scheduler) lives in one file per family."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a model, read from its config files without loading weights."""

    family: str  # "wan2.1-t2v", "wan2.1-i2v", "wan2.2-t2v", "cogvideox1.5-i2v", ...
    pipeline_class: str
    latent_channels: int
    vae_spatial: int
    vae_temporal: int
    patch: tuple[int, int, int]  # (t, h, w) transformer patch
    native_size: tuple[int, int]  # (width, height) pixels the model was trained at
    is_i2v: bool
    exact_tile: bool = False  # learned positional embeddings: the tile must be the native size
    max_tile: tuple[int, int] | None = None  # (h, w) latent limit of the positional embedding
    canvas_rope: bool = False  # the transformer takes rotary positions a tile can be given (`supergen.rope`)
    frame_step: int = 0  # frames must be 1 + a multiple of this (0: the VAE's time factor)
    sketch_multiple: int = 1  # pixels the stock pipeline demands of the sketch size (Wan's checks 16)
    scheduler: str = ""  # scheduler class name
    guidance_embedded: bool = False  # guidance-distilled (HunyuanVideo): the scale is an input, no CFG branches
    expert_boundary: float | None = None  # two experts (Wan 2.2 A14B): below this timestep `transformer_2` runs
    presets: dict[str, Any] = field(default_factory=dict)  # scale, frames, steps, guidance, fps, cache_*

    @property
    def stochastic_step(self) -> bool:
        """The scheduler step draws noise for the whole canvas (CogVideoX DPM): it cannot be split by region."""
        return self.scheduler == "CogVideoXDPMScheduler"

    def branches(self, guidance: float) -> int:
        """Transformer calls per step at this guidance scale: `Conditioning.branches`, from the configs."""
        return 2 if guidance > 1.0 and not self.guidance_embedded else 1

    @property
    def frames_multiple(self) -> int:
        return self.frame_step or self.vae_temporal

    @property
    def native_latent(self) -> tuple[int, int]:
        w, h = self.native_size
        return h // self.vae_spatial, w // self.vae_spatial


@dataclass
class Conditioning:
    """Per-request conditioning, computed once and shared by every tile.

    `image_latent` is the full-canvas image condition (channels the transformer concatenates to the noisy
    latent); the sampler crops it to each tile's window. Everything else is global to the clip.
    """

    guidance: float
    text: dict[str, torch.Tensor]
    negative_text: dict[str, torch.Tensor] | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. CLIP image embeddings
    image_latent: torch.Tensor | None = None
    model_switch: int | None = None  # SRDiffusion: the schedule index from which the small model predicts

    @property
    def do_cfg(self) -> bool:
        return self.negative_text is not None and self.guidance > 1.0

    @property
    def branches(self) -> int:
        """Model calls per tile-step: 2 with CFG (branch 0 the prompt, branch 1 the negative prompt), else 1."""
        return 2 if self.do_cfg else 1

    def guide(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """Combine the branch outputs: uncond + g * (cond - uncond), the one place CFG arithmetic lives."""
        if len(outputs) == 1:
            return outputs[0]
        cond, uncond = outputs
        return uncond + self.guidance * (cond - uncond)


def text_conditioning(pipe, prompt: str, negative_prompt: str, guidance: float, max_sequence_length: int,
                      device, dtype) -> Conditioning:
    """Prompt embeddings through the pipeline's own `encode_prompt` (T5-family pipelines: Wan, CogVideoX);
    the negative prompt only when CFG is on."""
    do_cfg = guidance > 1.0
    pe, ne = pipe.encode_prompt(prompt, negative_prompt, do_classifier_free_guidance=do_cfg,
                                max_sequence_length=max_sequence_length, device=device)
    return Conditioning(guidance, {"encoder_hidden_states": pe.to(dtype)},
                        {"encoder_hidden_states": ne.to(dtype)} if do_cfg else None)


def stock_latents(pipe, prompt, negative_prompt, image, width, height, frames, steps, guidance, generator,
                  max_sequence_length: int) -> torch.Tensor:
    """The unmodified pipeline's full-schedule generation, stopped before the VAE (the sketch)."""
    kwargs = {} if image is None else {"image": image}
    return pipe(prompt=prompt, negative_prompt=negative_prompt, height=height, width=width, num_frames=frames,
                num_inference_steps=steps, guidance_scale=guidance, generator=generator, output_type="latent",
                max_sequence_length=max_sequence_length, **kwargs).frames


def preprocess_image(pipe, image, width: int, height: int, device) -> torch.Tensor:
    """The conditioning image resized to the canvas in pixels, (1, 3, H, W) in [-1, 1], float32."""
    return pipe.video_processor.preprocess(image, height=height, width=width).to(device, torch.float32)


class Backend(Protocol):
    info: ModelInfo
    device: torch.device
    forwards: int  # transformer calls so far (sketch and tiles); callers report differences of it

    def encode_conditioning(self, prompt: str, negative_prompt: str, guidance: float, image, size: tuple[int, int],
                            frames: int, seed: int = 0) -> Conditioning:
        """Text (and image) conditioning for a canvas of `size` = (width, height) pixels."""

    def sketch(self, prompt: str, negative_prompt: str, image, width: int, height: int, frames: int, steps: int,
               guidance: float, generator: torch.Generator) -> torch.Tensor:
        """Stage 1 with the stock pipeline: the normalized latent (B, C, F, h, w), float32."""

    def decode(self, z: torch.Tensor, frames: int | None = None, vae_tile: int | None = None) -> torch.Tensor:
        """Normalized latent (B, C, F, h, w) -> video in [-1, 1] (B, 3, frames, H, W), float32. `frames`,
        the clip's length, lets a backend whose latent carries padding frames (CogVideoX 1.5) drop them
        and check what the VAE returns; None decodes every latent frame."""

    def encode(self, video: torch.Tensor, vae_tile: int | None = None) -> torch.Tensor:
        """Video in [-1, 1] -> normalized latent (posterior mode), float32."""

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, ...]:
        """(1, C, F', h, w) of a clip of `frames` at (height, width) pixels, as `encode` returns it."""

    def vae_tiling(self, size: tuple[int, int], vae_tile: int | None, encode: bool = False):
        """The tiles (`supergen.vaetiles.Tiling`) `decode` (a latent of (h, w) `size`) or `encode` (a video
        of that size) runs with `vae_tile`, or None where it runs untiled."""

    def vae_tile(self, window: torch.Tensor, encode: bool = False, frames: int | None = None) -> torch.Tensor:
        """One tile of the tiled VAE before blending (decode: a normalised latent window)."""

    def vae_finish(self, out: torch.Tensor, encode: bool = False, frames: int | None = None) -> torch.Tensor:
        """What `decode` (or `encode`) returns for the tiled VAE's blended output (or any region of it)."""

    def timesteps(self, steps: int) -> torch.Tensor: ...

    def renoise(self, z0: torch.Tensor, eps: torch.Tensor, steps: int, index: int) -> torch.Tensor:
        """Forward process from clean `z0` to the noise level of schedule index `index`."""

    def predict(self, x: torch.Tensor, steps: int, index: int, cond: Conditioning,
                image_latent: torch.Tensor | None = None,
                given: dict[int, torch.Tensor] | None = None, place=None) -> torch.Tensor:
        """CFG-combined model output for one tile (B, C, F, h, w), float32, in the space `step` expects.
        `given`: branch outputs already computed elsewhere (`predict_branch` on another worker), used as
        they are. `place`: the tile's `supergen.rope.Place` (None: the stock positions)."""

    def predict_branch(self, x: torch.Tensor, steps: int, index: int, cond: Conditioning, branch: int,
                       image_latent: torch.Tensor | None = None, place=None) -> torch.Tensor:
        """One CFG branch's model output for one tile, float32 (see `Conditioning.branches`)."""

    def initial_latent(self, width: int, height: int, frames: int, generator: torch.Generator,
                       image_latent: torch.Tensor | None = None) -> torch.Tensor:
        """The latent the stock pipeline starts from (float32, BCFHW): noise drawn from `generator` (with, for
        HunyuanVideo-I2V, a trace of the image condition `image_latent`)."""

    def finish(self, x: torch.Tensor, image_latent: torch.Tensor | None = None) -> torch.Tensor:
        """The latent a denoising loop returns, from its last step's `x` (and the image condition of the same
        region): where the model writes the image into the clip (Wan 2.2 TI2V-5B's first frame), that;
        else `x` itself."""

    def step(self, steps: int, index: int, prediction: torch.Tensor, x: torch.Tensor,
             state: dict[str, torch.Tensor], seed: int = 0,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One scheduler step on the canvas. `state` holds canvas-aligned scheduler history (a multistep
        solver's previous x0); a stochastic solver draws its noise from `generator` (the sketch's, as the
        stock pipeline does), else from a generator keyed by (`seed`, step)."""


class PlacedRope(torch.nn.Module):
    """A transformer's `rope` module (Wan's, HunyuanVideo's), or the rotary embedding given for the current
    call (a tile's canvas positions, `supergen.rope`): those transformers build their positions inside
    `forward`, from the latent's shape alone."""

    def __init__(self, stock):
        super().__init__()
        self.stock, self.given = stock, None

    def forward(self, hidden_states):
        return self.stock(hidden_states) if self.given is None else self.given


class FlowMatch:
    """The schedule calls of a flow-matching model (Wan, HunyuanVideo), each on a fresh scheduler
    (`loading.fresh_scheduler`) set to the pipeline's N steps."""

    @staticmethod
    def pipeline_sigmas(steps: int):
        """The sigmas the pipeline passes its scheduler, before its shift; None: `set_timesteps(N)`'s own."""
        return None

    def schedule(self, steps: int):
        from .loading import fresh_scheduler

        return fresh_scheduler(self.scheduler, steps, sigmas=self.pipeline_sigmas(steps))

    def timesteps(self, steps: int) -> torch.Tensor:
        return self.schedule(steps).timesteps

    def renoise(self, z0, eps, steps, index):
        """sigma * noise + (1 - sigma) * z0 at sigma = sigmas[index] (flow matching's forward process)."""
        s = self.schedule(steps)
        s.set_begin_index(index)
        return s.scale_noise(z0, s.timesteps[index : index + 1], eps.to(z0))

    def step(self, steps, index, prediction, x, state, seed=0, generator=None):
        s = self.schedule(steps)
        s.set_begin_index(index)
        return s.step(prediction.float(), s.timesteps[index], x, return_dict=False)[0].float(), state

    def initial_latent(self, width, height, frames, generator, image_latent=None):
        """The noise the stock pipeline's `prepare_latents` starts from (float32, on the generator's device)."""
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(self.latent_shape(frames, height, width), generator=generator, device=self.device,
                            dtype=torch.float32)


def with_first_frame(x: torch.Tensor, image_latent: torch.Tensor) -> torch.Tensor:
    """`x` with its first latent frame the image's: what a model that writes the image into the clip feeds
    its transformer and returns (Wan 2.2 TI2V-5B, HunyuanVideo-I2V's token replace)."""
    x = x.clone()
    x[:, :, :1] = image_latent.to(x)
    return x


class GuidedPredict:
    """`predict` as the guided sum of per-branch calls. Every backend computes the branches as separate
    model calls, so a branch run on another worker gives exactly the numbers it would have given here:
    splitting CFG over GPUs never changes the video."""

    def finish(self, x, image_latent=None):
        return x

    def predict(self, x, steps, index, cond: Conditioning, image_latent=None, given=None, place=None):
        given = given or {}
        return cond.guide([given[b].to(x.device) if b in given else
                           self.predict_branch(x, steps, index, cond, b, image_latent, place=place)
                           for b in range(cond.branches)])
