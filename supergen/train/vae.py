"""Training the world model's VAE (`AutoencoderKLWan`), then freezing its encoder.

The Wan VAE runs frames through a causal loop (the first frame alone, then blocks of four) whose caches
carry state from block to block. Trained on 9-frame clips it reconstructed those 9 frames at 23.6 dB and
drifted after them (13 dB by frame 17, measured): it must train at the clip length it serves, 17 frames,
though each step then costs about twice as much. The decoder reads the posterior mean plus a little noise: sampling
the posterior at initialisation drives reconstructions to the mean colour, and the noise makes the decoder
forgiving of the imperfect latents a diffusion model produces. Every fourth batch is 128x128 with a
quarter of the clips, so the mid-block attention also sees larger frames than the native 64x64.

Once a latent space is chosen (`freeze`), only the decoder keeps training: the transformer learns in that
fixed space while the decoder improves, on another GPU, at the same time.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from . import checkpoint, components, data
from .widen import widen_decoder
from .session import Session, autocast

DECODER = ("decoder.", "post_quant_conv.")


def load(folder: str, device="cpu", init: str | None = None):
    """The VAE `folder` holds; where it holds none yet, the weights of `init` (a warm start), else fresh.
    Weights of a narrower decoder are widened to `components.VAE_CONFIG`'s, decoding exactly as before."""
    model = components.vae()
    saved = checkpoint.load_tensors(folder, "model")
    if saved is None and init is not None:
        saved = checkpoint.load_tensors(init, "model")
    if saved is not None:
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        if any(saved[k].shape != shapes[k] for k in saved if k in shapes):
            saved = widen_decoder(saved, model)
        model.load_state_dict(saved)
    return model.to(device)


def train(folder: str, minutes: float, device: str = "cuda", lr: float = 1e-3, batch: int = 64, frames: int = 17,
          noise: float = 0.05, kl: float = 1e-4, decoder_only: bool = False, seed: int = 0,
          eval_clips: int = 32, max_steps: int | None = None, init: str | None = None, eval_frames: int = 17) -> dict:
    s = Session(folder, minutes, device, dict(lr=lr, batch=batch, frames=frames, noise=noise, kl=kl,
                                              decoder_only=decoder_only, vae=components.VAE_CONFIG), seed, max_steps)
    model = load(folder, s.device, init).train()
    torch.backends.cudnn.benchmark = True  # two input shapes, many small 3-D convolutions
    params = [p for n, p in model.named_parameters() if not decoder_only or n.startswith(DECODER)]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    first = s.step
    while s.running():
        big = s.step % 4 == 3
        x, _ = data.clips(s.rng, batch // 4 if big else batch, 128 if big else 64, frames, s.device, max_offset=8)
        for g in opt.param_groups:
            g["lr"] = s.lr(lr, warmup=100 if first else 300)
        with autocast(s.device):
            with torch.set_grad_enabled(not decoder_only):
                post = model.encode(x).latent_dist
            z = post.mean + noise * torch.randn_like(post.mean)
            y = model.decode(z).sample
        y = y.float()
        loss = F.mse_loss(y, x) + 0.5 * F.l1_loss(y, x)
        if not decoder_only:
            loss = loss + kl * 0.5 * (post.mean.float() ** 2 + post.var.float() - 1 - post.logvar.float()).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        s.record(loss.item())
        if s.due():
            s.save({"model": model.state_dict()})
    model.eval()
    result = evaluate(model, s.device, eval_clips, eval_frames)
    s.run["evals"].append({"step": s.step, **result})
    print("eval", result, flush=True)
    s.save({"model": model.state_dict()})
    return result


@torch.no_grad()
def reconstruct(model, video: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """Encode to the posterior mode and decode, in float32 as inference runs it."""
    out = []
    for i in range(0, video.shape[0], batch):
        z = model.encode(video[i:i + batch]).latent_dist.mode()
        out.append(model.decode(z).sample.float().clamp(-1, 1))
    return torch.cat(out)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of videos in [-1, 1] (peak-to-peak 2), over everything."""
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


@torch.no_grad()
def evaluate(model, device, n: int = 32, frames: int = 17) -> dict:
    """Reconstruction PSNR on held-out whole-frame scenes at native size and at the 4x canvas."""
    native, _ = data.held_out(n, 64, frames, device)
    canvas, _ = data.held_out(max(1, n // 8), 256, frames, device)
    return {"psnr_native_db": round(psnr(reconstruct(model, native), native), 3),
            "psnr_4x_db": round(psnr(reconstruct(model, canvas, batch=1), canvas), 3)}


@torch.no_grad()
def freeze(candidates: list[str], out: str, device: str = "cuda", clips: int = 2048, seed: int = 1) -> dict:
    """Pick the candidate with the best native PSNR, and measure its latent statistics (per channel mean
    and std over training-like clips), which normalise the latents from here on. Writes `out`."""
    import random
    import shutil

    scores = {c: _last_eval(c) for c in candidates}
    scores = {c: v for c, v in scores.items() if v is not None}
    if not scores:
        raise RuntimeError(f"no VAE candidate finished its run with an evaluation: {candidates}")
    best = max(scores, key=scores.get)
    if os.path.abspath(best) != os.path.abspath(out):
        shutil.copytree(best, out, dirs_exist_ok=True)
    model = load(out, device).eval()
    rng, zs, chunk = random.Random(seed), [], min(256, clips)
    for _ in range(clips // chunk):
        x, _ = data.clips(rng, chunk, 64, components.FRAMES, device)
        with autocast(torch.device(device)):
            zs.append(model.encode(x).latent_dist.mode().float())
    z = torch.cat(zs)
    stats = {"latents_mean": z.mean(dim=(0, 2, 3, 4)).tolist(), "latents_std": z.std(dim=(0, 2, 3, 4)).tolist()}
    state = checkpoint.read_state(out)
    state.update(latent_stats=stats, chosen_from=[os.path.basename(c) for c in candidates],
                 chosen=os.path.basename(best))
    checkpoint.write_state(out, state)
    return stats


def _last_eval(folder: str) -> float | None:
    """The native PSNR its latest run ended with; None for a run that died before evaluating (its saved
    weights may be mid-step)."""
    state = checkpoint.read_state(folder)
    evals = state["runs"][-1]["evals"] if state and state["runs"] else []
    return evals[-1]["psnr_native_db"] if evals else None
