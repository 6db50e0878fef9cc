"""The embedded world model's components: real diffusers/transformers classes at toy size.

Wan 2.1's architecture throughout (UMT5 text encoder, `AutoencoderKLWan` with 8x spatial and 4x temporal
compression, `WanTransformer3DModel`, flow-matching Euler), so the trained model runs through exactly the
code path a user's Wan checkpoint does. The transformer patch is 1x1x1 (Wan's is 1x2x2): at 64x64 pixels
the latent is only 8x8 cells, and one token per cell is what lets so small a model draw clean edges.
"""

from __future__ import annotations

import torch

from .. import world
from ..backends import tiny

NATIVE = (64, 64)  # (width, height) pixels
FRAMES = 17
FPS = 8
TEXT_DIM = 64
# vae_tile 512: the 4x and 8x canvases decode whole (a tiled decode would blend seams of its own into the
# very output whose seams the quality suite measures)
# steps 20: at 10 the sketch drew the captioned objects' colours in 55% of samples, at 20 in 65%
# (bench/results/world_adherence_*.json). cache 0.4/0.5: the paper's 0.2 skips nothing on this model; 0.4
# skips 3-4% of tile-steps at >= 34 dB vs no cache, 0.6 skips 30% but drops to 26.7 dB on one caption, below
# the 30 dB floor (cache_grid_world_cpu.json): the region preset stays at the last threshold above the floor
# refine_fraction 0.3 (6 of 20): re-noised to sigma 0.52, the tiles sharpen the sketch and keep its layout
# (sketch fidelity 29.8 dB, no duplicated objects); at the paper's 0.9 (sigma 0.96 on this shift-3 schedule)
# every tile repaints the prompt's object: duplicated in 4 of 4 prompts (quality_depth_cpu.json)
# clamp_to_depth 0.5: windows clamped inside the canvas up to half the schedule refined, wrapped deeper
# (`spec.boundary_preset`; quality_boundary_*_cpu.json: clamp flickers less with as much fidelity there)
PRESETS = dict(scale=4, frames=FRAMES, steps=20, guidance=5.0, fps=FPS, cache_threshold=0.4, cache_alpha=0.5,
               vae_tile=512, refine_fraction=0.3, clamp_to_depth=0.5)

# decoder_base_dim 24: the decoder at base 16 blurred edges (27 dB) and was widened in place, keeping the
# encoder's latent space (`widen.py`); 24 keeps the shipped folder under 20 MB
VAE_CONFIG = dict(base_dim=16, decoder_base_dim=24, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                  temperal_downsample=[False, True, True])
TRANSFORMER_CONFIG = dict(patch_size=(1, 1, 1), num_attention_heads=4, attention_head_dim=48, in_channels=16,
                          out_channels=16, text_dim=TEXT_DIM, freq_dim=64, ffn_dim=768, num_layers=6,
                          cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=256)
# the image-to-video variant, in Wan 2.1 I2V's layout without its CLIP encoder (as Wan 2.2 A14B I2V): the
# noisy latent, then a 4-channel first-frame mask and the latent of (image, black frames) concatenated
MASK_CHANNELS = 4
I2V_TRANSFORMER_CONFIG = {**TRANSFORMER_CONFIG, "in_channels": 2 * TRANSFORMER_CONFIG["in_channels"] + MASK_CHANNELS}


def tokenizer():
    """Word-level over the world's caption grammar (any other text still encodes, by characters)."""
    return tiny.t5_tokenizer(words=tuple(dict.fromkeys(world.vocabulary() + list(tiny.WORDS))))


def text_encoder(vocab_size: int, seed: int = 0):
    """A UMT5 encoder from a seeded random initialisation, trained jointly with the transformer.

    Why trained: the transformer's cross-attention has no positions of its own, so which colour word is
    the object's and which the background's must be in the embeddings. The frozen random encoder of the
    first models hardly mixed neighbours: "cyan" embedded 99.97% alike (cosine) as the object's colour and
    as the background's, and about a fifth of sketches painted the background in the object's colour,
    whatever the training time. Its relative-position biases learn the binding quickly.
    """
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=16, d_ff=128,
                                           num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                                           relative_attention_max_distance=32, pad_token_id=0, eos_token_id=1,
                                           decoder_start_token_id=0)).eval()


def vae(seed: int = 0):
    from diffusers import AutoencoderKLWan

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKLWan(**VAE_CONFIG)


def transformer(seed: int = 0, config: dict | None = None):
    """The world transformer (of `config`, a size other than the shipped one's: SRDiffusion's render model)."""
    from diffusers import WanTransformer3DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanTransformer3DModel(**(config or TRANSFORMER_CONFIG))


def scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def pipeline(vae_module=None, transformer_module=None):
    """A WanPipeline of the world model's components (fresh ones where none are given); a
    WanImageToVideoPipeline where the transformer takes the image condition's channels."""
    from diffusers import WanPipeline

    tok = tokenizer()
    tr = transformer_module or transformer()
    parts = dict(tokenizer=tok, text_encoder=text_encoder(len(tok)), vae=vae_module or vae(), transformer=tr,
                 scheduler=scheduler())
    if tr.config.in_channels == I2V_TRANSFORMER_CONFIG["in_channels"]:
        from diffusers import WanImageToVideoPipeline

        return WanImageToVideoPipeline(**parts)
    return WanPipeline(**parts)


def image_condition(encoder, image: torch.Tensor, stats: dict, frames: int = FRAMES) -> torch.Tensor:
    """(B, 4 + z, F', h, w): what `WanImageToVideoPipeline.prepare_latents` conditions a clip of `frames` on,
    for B first frames `image` (B, 3, H, W) in [-1, 1]: a mask marking the first latent frame, and the
    normalised latent (the posterior mode) of the image followed by black frames."""
    b, _, h, w = image.shape
    video = torch.cat([image[:, :, None], image.new_zeros(b, 3, frames - 1, h, w)], dim=2)
    z = encoder.encode(video.to(next(encoder.parameters()).dtype)).latent_dist.mode().float()
    mean = torch.tensor(stats["latents_mean"], device=z.device).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(stats["latents_std"], device=z.device).view(1, -1, 1, 1, 1)
    mask = torch.zeros(b, MASK_CHANNELS, *z.shape[2:], device=z.device)
    mask[:, :, 0] = 1
    return torch.cat([mask, (z - mean) * inv_std], dim=1)


def sidecar() -> dict:
    """supergen.json of the world model: facts its configs cannot state."""
    return {"native_size": list(NATIVE), "presets": PRESETS, "trained_on": "supergen.world"}


def caption_tokens(tok, captions: list[str], keep: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, keep) token ids and attention mask as `encode_prompt` tokenizes, cut to `keep` positions
    (a caption too long for them is refused): what `embed_tokens` turns into embeddings in training."""
    t = tok(captions, padding="max_length", max_length=512, truncation=True, add_special_tokens=True,
            return_attention_mask=True, return_tensors="pt")
    if t.attention_mask[:, keep:].any():
        raise ValueError(f"a caption is longer than {keep} tokens")
    return t.input_ids[:, :keep], t.attention_mask[:, :keep]


def embed_tokens(encoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Prompt embeddings as `encode_prompt` computes them (the encoder's states at real tokens, zeros at
    padding), cut to the tokens' positions, with gradients."""
    h = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    return h * mask[..., None].to(h.dtype)
