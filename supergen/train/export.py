"""Assemble trained checkpoints into the diffusers folder that ships as the embedded default."""

from __future__ import annotations

import json
import os

import torch

from . import checkpoint, components, vae as vae_training


def export(vae_folder: str, dit_folder: str, out: str) -> str:
    """save_pretrained a WanPipeline of the trained VAE (its latent statistics in its config, as Wan's
    own VAE states them) and the moving averages of the transformer and the text encoder, the VAE and the
    transformer in float16 (the backend casts to the render's dtype; the VAE runs in float32), with
    supergen.json."""
    stats = checkpoint.read_state(vae_folder)["latent_stats"]
    vae = vae_training.load(vae_folder)
    vae.register_to_config(latents_mean=stats["latents_mean"], latents_std=stats["latents_std"])
    tr = components.transformer(config=(checkpoint.read_state(dit_folder).get("config") or {}).get("transformer"))
    tr.load_state_dict({k: v.float() for k, v in checkpoint.load_tensors(dit_folder, "ema").items()})
    pipe = components.pipeline(vae.to(torch.float16), tr.to(torch.float16))
    text = checkpoint.load_tensors(dit_folder, "text_ema")
    if text is not None:  # models trained before the text encoder was: its seeded initialisation
        pipe.text_encoder.load_state_dict(text)
    pipe.save_pretrained(out, safe_serialization=True)
    with open(os.path.join(out, "supergen.json"), "w") as f:
        json.dump(components.sidecar(), f, indent=1)
    return out


def resume_from(folder: str, ckpt: str) -> str:
    """The inverse of `export`: training checkpoints (CKPT/vae, CKPT/dit) rebuilt from a shipped folder,
    so training can go on in a later session without its checkpoints. The transformer restarts from the
    shipped moving average (as both its weights and its average); the latent statistics come from the
    VAE's config, so the latent space stays the one the transformer learned."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    vae = AutoencoderKLWan.from_pretrained(os.path.join(folder, "vae")).float()
    tr = WanTransformer3DModel.from_pretrained(os.path.join(folder, "transformer")).float()
    vae_dir, dit_dir = os.path.join(ckpt, "vae"), os.path.join(ckpt, "dit")
    checkpoint.save_tensors(vae_dir, "model", vae.state_dict())
    stats = {"latents_mean": list(vae.config.latents_mean), "latents_std": list(vae.config.latents_std)}
    checkpoint.write_state(vae_dir, {"step": 0, "seconds": 0.0, "runs": [], "config": {}, "latent_stats": stats,
                                     "chosen": f"resumed from {folder}"})
    checkpoint.save_tensors(dit_dir, "model", tr.state_dict())
    checkpoint.save_tensors(dit_dir, "ema", {k: v.half() for k, v in tr.state_dict().items()})
    text = UMT5EncoderModel.from_pretrained(os.path.join(folder, "text_encoder")).float().state_dict()
    checkpoint.save_tensors(dit_dir, "text", text)
    checkpoint.save_tensors(dit_dir, "text_ema", text)
    return ckpt
