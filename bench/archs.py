"""The transformer architectures the GPU benchmarks time, at their published sizes with random weights
(a forward's cost does not depend on the weights), and the inputs of one native tile.

Each entry holds the diffusers class, its published config, the native tile in pixels and frames, and the
text length its pipeline feeds it. `scale="tiny"` shrinks depth and width so the same code path runs on a
CPU in seconds (how the scripts are checked before a GPU is spent on them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

T5_DIM = 4096


@dataclass(frozen=True)
class Arch:
    name: str
    cls: str  # diffusers class
    config: dict
    native: tuple[int, int, int]  # (width, height, frames) of the native tile in pixels
    text_tokens: int
    vae: tuple[int, int] = (8, 4)  # (spatial, temporal) compression
    branches: int = 2  # model calls per tile-step with CFG
    tiny: dict = field(default_factory=dict)  # config overrides for CPU checks
    note: str = ""


WAN_COMMON = dict(patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16, text_dim=T5_DIM,
                  freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                  rope_max_seq_len=1024)
WAN_TINY = dict(num_attention_heads=2, attention_head_dim=16, ffn_dim=64, num_layers=1, text_dim=32)

ARCHS = {
    a.name: a for a in [
        Arch("wan2.1-t2v-1.3b", "WanTransformer3DModel",
             {**WAN_COMMON, "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30},
             (832, 480, 81), 512, tiny=WAN_TINY),
        Arch("wan2.1-t2v-14b", "WanTransformer3DModel",
             {**WAN_COMMON, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40},
             (1280, 720, 81), 512, tiny=WAN_TINY),
        Arch("cogvideox1.5-t2v-5b", "CogVideoXTransformer3DModel",
             dict(num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
                  text_embed_dim=T5_DIM, num_layers=42, sample_width=300, sample_height=300, sample_frames=81,
                  patch_size=2, patch_size_t=2, patch_bias=False, max_text_seq_length=224,
                  use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False),
             (1360, 768, 41), 224,
             tiny=dict(num_attention_heads=2, attention_head_dim=16, time_embed_dim=16, text_embed_dim=32,
                       num_layers=1, max_text_seq_length=8)),
        Arch("hunyuanvideo-t2v-13b", "HunyuanVideoTransformer3DModel",
             dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
                  num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
                  qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=T5_DIM, pooled_projection_dim=768,
                  rope_theta=256.0, rope_axes_dim=(16, 56, 56)),
             (1280, 720, 129), 256,
             tiny=dict(num_attention_heads=2, attention_head_dim=16, num_layers=1, num_single_layers=1,
                       num_refiner_layers=1, text_embed_dim=32, pooled_projection_dim=8, rope_axes_dim=(4, 6, 6)),
             note="HunyuanVideo is guidance-distilled: its own pipeline makes one call per step; two here, as "
                  "for true CFG"),
        Arch("hunyuanvideo1.5-t2v-8b", "HunyuanVideo15Transformer3DModel",  # the class's defaults: the release
             dict(in_channels=65, out_channels=32, num_attention_heads=16, attention_head_dim=128, num_layers=54,
                  num_refiner_layers=2, mlp_ratio=4.0, patch_size=1, patch_size_t=1, qk_norm="rms_norm",
                  text_embed_dim=3584, text_embed_2_dim=1472, image_embed_dim=1152, rope_theta=256.0,
                  rope_axes_dim=(16, 56, 56), target_size=640, task_type="t2v"),
             (848, 480, 121), 1000, vae=(16, 4),
             tiny=dict(in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
                       num_refiner_layers=1, text_embed_dim=32, text_embed_2_dim=16, image_embed_dim=8,
                       rope_axes_dim=(4, 6, 6)),
             note="HunyuanVideo 1.5's pipeline pads the Qwen2.5-VL prompt to 1000 tokens and ByT5's to 256, masked"),
    ]
}


def build(arch: Arch, device, scale: str = "full") -> torch.nn.Module:
    """The transformer with random bf16 weights, created directly on `device`, cast as supergen's backends
    cast a loaded model (the modules the model keeps in float32 stay float32)."""
    import diffusers

    cfg = {**arch.config, **(arch.tiny if scale == "tiny" else {})}
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = getattr(diffusers, arch.cls)(**cfg)
    finally:
        torch.set_default_dtype(old)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []  # as supergen.backends.loading.cast_module
    for name, sub in model.named_modules():
        if any(k in name.split(".") for k in keep):
            sub.to(torch.float32)
    return model.eval()


def tile_inputs(arch: Arch, model, device, size: tuple[int, int, int] | None = None, scale: str = "full") -> dict:
    """Forward kwargs for one CFG branch of one tile of `size` = (width, height, frames) pixels (default:
    the native tile); random latents and text states of the pipeline's shapes."""
    w, h, f = size or arch.native
    if scale == "tiny":
        w, h, f = 64, 32, 5
    s, t = arch.vae
    lf = (f - 1) // t + 1
    cfg = model.config
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device, torch.bfloat16)

    text_dim = cfg.get("text_dim") or cfg.get("text_embed_dim")
    tokens = arch.text_tokens if scale == "full" else 8
    if arch.cls == "WanTransformer3DModel":
        return dict(hidden_states=rnd(1, 16, lf, h // s, w // s), timestep=torch.tensor([500.0], device=device),
                    encoder_hidden_states=rnd(1, tokens, text_dim), return_dict=False)
    if arch.cls == "CogVideoXTransformer3DModel":
        from diffusers.models.embeddings import get_3d_rotary_pos_embed

        p, pt = cfg.patch_size, cfg.patch_size_t
        lf += (-lf) % pt  # 1.5's pad frame
        gh, gw = h // s // p, w // s // p
        base = (cfg.sample_height // p, cfg.sample_width // p)
        rope = get_3d_rotary_pos_embed(embed_dim=cfg.attention_head_dim, crops_coords=None, grid_size=(gh, gw),
                                       temporal_size=lf // pt, grid_type="slice",
                                       max_size=(max(base[0], gh), max(base[1], gw)), device=device)
        return dict(hidden_states=rnd(1, lf, 16, h // s, w // s), encoder_hidden_states=rnd(1, tokens, text_dim),
                    timestep=torch.tensor([500], device=device), image_rotary_emb=rope, return_dict=False)
    if arch.cls == "HunyuanVideoTransformer3DModel":
        return dict(hidden_states=rnd(1, 16, lf, h // s, w // s), timestep=torch.tensor([500], device=device),
                    encoder_hidden_states=rnd(1, tokens, text_dim),
                    encoder_attention_mask=torch.ones(1, tokens, device=device, dtype=torch.bool),
                    pooled_projections=rnd(1, cfg.pooled_projection_dim),
                    guidance=torch.tensor([6000.0], device=device), return_dict=False)
    if arch.cls == "HunyuanVideo15Transformer3DModel":  # the pipeline's timestep is in the latents' dtype
        glyph = 256 if scale == "full" else 8
        ones = dict(device=device, dtype=torch.bfloat16)
        return dict(hidden_states=rnd(1, cfg.in_channels, lf, h // s, w // s),
                    timestep=torch.tensor([500.0], **ones), encoder_hidden_states=rnd(1, tokens, text_dim),
                    encoder_attention_mask=torch.ones(1, tokens, **ones),
                    encoder_hidden_states_2=rnd(1, glyph, cfg.text_embed_2_dim),
                    encoder_attention_mask_2=torch.ones(1, glyph, **ones),
                    image_embeds=torch.zeros(1, 729 if scale == "full" else 4, cfg.image_embed_dim, **ones),
                    return_dict=False)
    raise ValueError(arch.cls)


def image_tokens(arch: Arch, size: tuple[int, int, int] | None = None) -> int:
    w, h, f = size or arch.native
    s, t = arch.vae
    lf = (f - 1) // t + 1
    patch = arch.config.get("patch_size", 2)  # Wan's is (t, h, w)
    pt, ph = (2, 2) if arch.cls == "CogVideoXTransformer3DModel" else (1, patch[-1] if isinstance(patch, (list, tuple))
                                                                        else patch)
    lf += (-lf) % pt
    return (lf // pt) * (h // s // ph) * (w // s // ph)
