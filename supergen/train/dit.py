"""Training the world model's `WanTransformer3DModel` with the flow-matching objective.

The data are latents of world clips under the frozen encoder, normalised by the statistics `vae.freeze`
measured, and the captions' tokens as the pipeline's `encode_prompt` makes them; the text encoder trains
with the transformer (`components.text_encoder` says why), its embeddings zero past the real tokens as
inference feeds them. A tenth of the captions are dropped to the empty prompt, the default negative
prompt, which is what classifier-free guidance contrasts with.
Noise levels follow the inference schedule's shift: sigma = 3u / (1 + 2u), u logit-normal. An exponential
moving average of the weights (the text encoder's too) is what ships.

Zoomed crops (what a tile of a larger canvas sees) are trained at low noise only, sigma <= CROP_SIGMA:
a tile is refined from a re-noised sketch, never from pure noise, while a crop at high noise, captioned
with its whole scene, taught the sketch stage that "a cyan diamond on a yellow background" may fill the
frame with cyan (a quarter of sketches drew the object's colour as the background, measured).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from . import checkpoint, components, data, transfer, vae as vae_training
from .session import Session, autocast

TEXT_KEEP = 32  # prompt positions kept per clip; the rest of the 512 are zeros
CROP_SIGMA = 0.6  # the preset refines from sigma 0.52 (6 of 20 steps on the shift-3 schedule)
CROP_SHARE = 0.4


@torch.no_grad()
def dataset(encoder, stats: dict, tok, n: int, s: Session, chunk: int = 256, i2v: bool = False):
    """n clips as (normalised latents fp16, caption token ids, their masks, whether each is a zoomed crop,
    and with `i2v` the image condition of each clip's first frame, fp16; else None)."""
    mean = torch.tensor(stats["latents_mean"], device=s.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(stats["latents_std"], device=s.device).view(1, -1, 1, 1, 1)
    lat, ids, masks, crops, conds, chunk = [], [], [], [], [], min(chunk, n)
    for _ in range(0, n, chunk):
        crop = s.rng.random() < CROP_SHARE
        x, captions = data.clips(s.rng, chunk, components.NATIVE[0], components.FRAMES, s.device,
                                 crop_share=float(crop))
        crops.append(torch.full((chunk,), crop, device=s.device))
        with autocast(s.device):
            z = encoder.encode(x).latent_dist.mode().float()
            if i2v:
                conds.append(components.image_condition(encoder, x[:, :, 0], stats).half())
        lat.append(((z - mean) / std).half())
        i, m = components.caption_tokens(tok, captions, TEXT_KEEP)
        ids.append(i.to(s.device))
        masks.append(m.to(s.device))
    return torch.cat(lat), torch.cat(ids), torch.cat(masks), torch.cat(crops), torch.cat(conds) if i2v else None


def guided_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, guidance: float) -> torch.Tensor:
    """Distillation of (captioned, empty-prompt) prediction pairs stacked on the batch: each branch's
    error, plus the guided prediction's, u + g (c - u), which the sampler steps by. Branch errors alike pass
    through guidance unchanged; errors apart come out (2g - 1) times larger, and the plain loss scores both
    the same (the guided term is weighted 1/g: its error carries up to g times the branches')."""
    sc, su = student.chunk(2)
    tc, tu = teacher.chunk(2)
    branches = F.mse_loss(student, teacher)
    guided = F.mse_loss(su + guidance * (sc - su), tu + guidance * (tc - tu))
    return branches + guided / guidance


def _weights(folder: str, prefix: str, module: torch.nn.Module, init: str | None = None) -> None:
    """`module` from `folder`'s tensors; where it holds none, from `init`'s (another shape's: `transfer`)."""
    saved = checkpoint.load_tensors(folder, prefix)
    if saved is None and init is not None:
        saved = transfer.adapt(checkpoint.load_tensors(init, "ema"), module)
    if saved is not None:
        module.load_state_dict({k: v.float() for k, v in saved.items()})


def train(folder: str, vae_folder: str, minutes: float, device: str = "cuda", lr: float = 5e-4, batch: int = 256,
          clips: int = 100_000, drop: float = 0.1, ema_decay: float = 0.999, seed: int = 0,
          max_steps: int | None = None, layers: int | None = None, text_from: str | None = None,
          i2v: bool = False, init: str | None = None, teacher: str | None = None,
          teacher_guidance: float | None = None) -> None:
    """Train the world transformer (and its text encoder) in `folder`, resuming what it holds.

    `layers`: a transformer of that depth instead of the shipped one's (fixed at the folder's first run).
    `text_from`: another transformer's checkpoint folder whose text encoder this one uses as it is, frozen:
    SRDiffusion's render model must learn on the large model's encoder, which conditions both (the pair
    shares one conditioning; `supergen.pair`), and the image-to-video variant keeps the text-to-video one's.
    `i2v`: the image-to-video variant, conditioned on each clip's first frame (`components.image_condition`).
    `init`: a trained transformer's checkpoint folder to start from (`transfer`) where `folder` holds none.
    `teacher`: a trained transformer's checkpoint folder whose predictions (its moving average's, on the same
    inputs) this run learns instead of the flow target (output distillation): a render model that follows
    the large model's trajectory, not just the data, for this run (a resumed run may learn either way).
    `teacher_guidance`: distil each clip with its caption and with the empty prompt, and learn the guided
    prediction at this scale too (`guided_distillation_loss`): what the sampler uses."""
    base = components.I2V_TRANSFORMER_CONFIG if i2v else components.TRANSFORMER_CONFIG
    config = {**base, **({"num_layers": layers} if layers else {})}
    s = Session(folder, minutes, device, dict(lr=lr, batch=batch, clips=clips, drop=drop, ema_decay=ema_decay,
                                              transformer=config, text_from=text_from, init=init), seed, max_steps)
    config, text_from = s.state["config"]["transformer"], s.state["config"].get("text_from")  # as first run
    init = s.state["config"].get("init")
    i2v = config["in_channels"] == components.I2V_TRANSFORMER_CONFIG["in_channels"]
    if text_from and checkpoint.load_tensors(text_from, "text_ema") is None:
        raise ValueError(f"{text_from} holds no trained text encoder (text_ema) to share")
    stats = checkpoint.read_state(vae_folder)["latent_stats"]
    encoder = vae_training.load(vae_folder, s.device).eval()
    tok = components.tokenizer()
    model, text = components.transformer(config=config), components.text_encoder(len(tok))
    _weights(folder, "model", model, init)
    _weights(text_from or folder, "text_ema" if text_from else "text", text)
    ema, text_ema = copy.deepcopy(model), copy.deepcopy(text)
    _weights(folder, "ema", ema, init)
    _weights(text_from or folder, "text_ema", text_ema)
    text.requires_grad_(not text_from)
    model.to(s.device).train()
    text.to(s.device).eval()  # trained, but without UMT5's dropout: inference never drops
    pairs = [(m, e.to(s.device).eval().requires_grad_(False))
             for m, e in ((model, ema), (text, text_ema))[:1 if text_from else 2]]
    latents, ids, masks, cropped, conds = dataset(encoder, stats, tok, clips, s, i2v=i2v)
    null_ids, null_mask = (t.to(s.device) for t in components.caption_tokens(tok, [""], TEXT_KEEP))
    s.run["dataset_seconds"] = round(s.elapsed, 1)
    guide = None
    if teacher:
        guide = components.transformer(config=(checkpoint.read_state(teacher).get("config") or {}).get("transformer"))
        _weights(teacher, "ema", guide)
        guide.to(s.device).eval().requires_grad_(False)
        s.run["teacher"] = teacher
        if teacher_guidance:
            s.run["teacher_guidance"] = teacher_guidance
    print(f"dataset {tuple(latents.shape)} in {s.elapsed:.0f}s", flush=True)
    del encoder

    def save():
        s.save({"model": model.state_dict(), "ema": {k: v.half() for k, v in ema.state_dict().items()},
                "text": text.state_dict(), "text_ema": text_ema.state_dict()})

    params = list(model.parameters()) + ([] if text_from else list(text.parameters()))
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    first = s.step
    paired = guide is not None and bool(teacher_guidance)  # each clip twice: captioned, then empty
    reps = 2 if paired else 1
    pad = torch.zeros(reps * batch, 512 - TEXT_KEEP, components.TEXT_DIM, device=s.device)
    while s.running():
        idx = torch.randint(0, latents.shape[0], (batch,), device=s.device)
        x0 = latents[idx].float()
        if paired:
            i = torch.cat([ids[idx], null_ids.expand(batch, -1)])
            m = torch.cat([masks[idx], null_mask.expand(batch, -1)])
        else:
            drop_row = torch.rand(batch, 1, device=s.device) < drop
            i = torch.where(drop_row, null_ids.expand(batch, -1), ids[idx])
            m = torch.where(drop_row, null_mask.expand(batch, -1), masks[idx])
        u = torch.sigmoid(torch.randn(batch, device=s.device))
        sigma = 3 * u / (1 + 2 * u)
        sigma = torch.where(cropped[idx], sigma * CROP_SIGMA, sigma)
        noise = torch.randn_like(x0)
        sv = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - sv) * x0 + sv * noise
        for g in opt.param_groups:
            g["lr"] = s.lr(lr, warmup=100 if first else 500)
        with autocast(s.device):
            e = torch.cat([components.embed_tokens(text, i, m).float(), pad], dim=1)
            inp = (xt if conds is None else torch.cat([xt, conds[idx].float()], dim=1)).repeat(reps, 1, 1, 1, 1)
            t = (sigma * 1000).repeat(reps)
            pred = model(hidden_states=inp, timestep=t, encoder_hidden_states=e, return_dict=False)[0]
            if guide is not None:
                with torch.no_grad():
                    target = guide(hidden_states=inp, timestep=t, encoder_hidden_states=e, return_dict=False)[0]
        if guide is None:
            loss = F.mse_loss(pred.float(), noise - x0)
        elif paired:
            loss = guided_distillation_loss(pred.float(), target.float(), teacher_guidance)
        else:
            loss = F.mse_loss(pred.float(), target.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(ema_decay, (1 + s.step) / (10 + s.step))
            for live, average in pairs:
                for pa, pl in zip(average.parameters(), live.parameters()):
                    pa.lerp_(pl, 1 - decay)
        s.record(loss.item())
        if s.due():
            save()
    save()
