"""Command-line options for RenderSpec: every field is an option of the same name. The `supergen`
command itself (render, resume, inspect, compare, quality, serve) is `flows.cli`, the outermost layer."""

from __future__ import annotations

import argparse
import dataclasses

from .spec import BOUNDARIES, CACHE_POLICIES, DTYPES, ROPE_MODES, RenderSpec, parse_tile

HELP = {
    "prompt": "text prompt (required)",
    "negative_prompt": "negative prompt for CFG",
    "image": "conditioning image for image-to-video models",
    "width": "output width in pixels (default: the model's native width x its scale preset; world: 256)",
    "height": "output height in pixels (default: native height x scale preset; world: 256)",
    "frames": "frames (default per model: Wan 81, CogVideoX 41, world 17); 1 + a multiple of the VAE time factor",
    "steps": "N, total denoising steps; the sketch runs all N (default: Wan/CogVideoX 50, world 10)",
    "refine_steps": "k, the last k steps run tiled at full size (default: round(0.9 N), the paper's 45/50; "
                    "world: 6 of 20)",
    "guidance": "CFG scale, 1 disables CFG (default: Wan 5.0, CogVideoX 6.0, world 5.0)",
    "seed": "seed of every random draw; same spec + seed = same video",
    "model": "'world' (embedded and trained, no download), 'tiny'/'tiny-i2v' (random weights, for tests), "
             "a hub id, or a local diffusers folder",
    "dtype": "transformer/text-encoder dtype; the latent canvas stays float32",
    "vae_dtype": "the VAE's dtype (default: as the model's publisher runs it: CogVideoX --dtype, Wan float32); "
                 "bfloat16 halves the VAE stages' time and memory on GPUs",
    "device": "cpu, cuda or cuda:N",
    "canvas_width": "pixels the render runs on (default: --width rounded up to whole model cells; the "
                    "outputs are center-cropped back to --width x --height)",
    "canvas_height": "pixels the render runs on (default: --height rounded up; give with --canvas-width)",
    "sketch_width": "sketch width in pixels (default: the target's aspect ratio at the native area)",
    "sketch_height": "sketch height in pixels (give with --sketch-width)",
    "tile": "tile HxW in latent cells (default: the model's native latent size, e.g. 60x104 for Wan 480p)",
    "shift_every": "shift the tile grid before every s-th refinement step; 0 disables shifting",
    "shift_loop": "shift quantum = tile // loop per axis; offsets cycle every `loop` shifts (paper: 16)",
    "boundary": "wrap: windows wrap around the canvas (the paper's torus); clamp: windows stay inside "
                "[default: the model's measured preset (world: clamp up to half the schedule refined), else wrap]",
    "rope": "the tiles' rotary positions: local (every tile at the origin, the paper's), canvas (each tile's "
            "cells' canvas positions), canvas-ntk (those, NTK-scaled bases), canvas-interp (those, scaled into "
            "the native extent) [default: local]",
    "vae_tile": "VAE tiling tile in pixels, overlap 1/4 of it (CogVideoX: 1/6) (default: 2x the native size)",
    "fps": "frames per second of the written videos (default per model)",
    "cache": "tile cache policy",
    "cache_threshold": "cache threshold tau (default per model family)",
    "cache_alpha": "region-aware loosening alpha of the most active tiles (default per family)",
    "cache_warmup": "refinement steps that always compute",
    "max_consecutive_skips": "a tile computes after this many skips in a row",
    "checkpoint_every": "checkpoint the refinement into the render store every c steps (0: only stages)",
    "compile": "torch.compile the transformer: one compile per worker and shape, cached on disk for every "
               "process of the host (Inductor's /tmp/torchinductor_<user>, or SUPERGEN_COMPILE_CACHE)",
    "lora": "a LoRA adapter for the transformer, PATH[:SCALE] (a .safetensors file or a folder with "
            "pytorch_lora_weights.safetensors; scale 1 by default), fused into the weights; repeat for several",
    "render_model": "SRDiffusion: a smaller model of the same family, sharing the VAE and text encoder, that "
                    "predicts the steps from the switch on, in the sketch and the refinement alike",
    "switch_step": "SRDiffusion's switch at a fixed step: the first step the render model predicts (default: "
                   "adaptive, from the model's outputs in the sketch)",
    "switch_threshold": "SRDiffusion's adaptive switch: the render model takes over once the self-diff of the "
                        "model's outputs falls in (0, threshold)",
    "switch_min": "SRDiffusion's adaptive switch: the earliest step whose self-diff may trigger it (the render "
                  "model then starts at the next; default: steps / 10)",
    "switch_max": "SRDiffusion's adaptive switch: the render model's latest first step (default: 3/5 of the steps)",
}
CHOICES = {"dtype": DTYPES, "vae_dtype": DTYPES, "boundary": BOUNDARIES, "cache": CACHE_POLICIES, "rope": ROPE_MODES}


def _add_spec_options(p: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(RenderSpec):
        flag = "--" + f.name.replace("_", "-")
        kind = parse_tile if f.name == "tile" else {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        default = None if f.default is dataclasses.MISSING else f.default
        if f.name == "lora":
            p.add_argument(flag, action="append", default=[], metavar="PATH[:SCALE]", help=HELP[f.name])
            continue
        if str(f.type) == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=HELP[f.name])
            continue
        extra = {"choices": CHOICES[f.name]} if f.name in CHOICES else {}
        p.add_argument(flag, type=kind, default=default, required=f.name == "prompt",
                       help=HELP[f.name] + ("" if default is None else " [default: %(default)s]"), **extra)


def add_render_options(p: argparse.ArgumentParser) -> None:
    """One option per RenderSpec field, named after it."""
    _add_spec_options(p)


def spec_from_args(args: argparse.Namespace) -> RenderSpec:
    names = {f.name for f in dataclasses.fields(RenderSpec)}
    values = {n: getattr(args, n) for n in names}
    values["lora"] = tuple(values["lora"] or ())
    return RenderSpec(**values)
