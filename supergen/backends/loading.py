"""Finding a model's configs and weights: embedded, local folder or hub id; shared scheduler helpers."""

from __future__ import annotations

import contextlib

import json
import os
from typing import Any

import torch

from ..errors import BackendError, SpecError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Pipeline class -> "module:Backend class". Imported lazily so an unused family costs nothing.
REGISTRY = {
    "WanPipeline": "supergen.backends.wan:WanBackend",
    "WanImageToVideoPipeline": "supergen.backends.wan:WanBackend",
    "CogVideoXPipeline": "supergen.backends.cogvideox:CogVideoXBackend",
    "CogVideoXImageToVideoPipeline": "supergen.backends.cogvideox:CogVideoXBackend",
    "HunyuanVideoPipeline": "supergen.backends.hunyuan:HunyuanVideoBackend",
    "HunyuanVideoImageToVideoPipeline": "supergen.backends.hunyuan:HunyuanVideoI2VBackend",
    "HunyuanVideo15Pipeline": "supergen.backends.hunyuan:HunyuanVideo15Backend",
    "HunyuanVideo15ImageToVideoPipeline": "supergen.backends.hunyuan:HunyuanVideo15I2VBackend",
}
ENCODERS = ("text_encoder", "text_encoder_2", "image_encoder")  # configs read beside the diffusers ones
SIDECAR = "supergen.json"  # optional per-folder facts the configs lack (native size, presets)


def backend_class(pipeline_class: str):
    try:
        target = REGISTRY[pipeline_class]
    except KeyError:
        raise SpecError("model", f"pipeline class {pipeline_class!r} is not supported; supported: "
                                 f"{sorted(REGISTRY)}") from None
    module, name = target.split(":")
    import importlib

    return getattr(importlib.import_module(module), name)


def read_configs(model: str) -> dict[str, Any]:
    """model_index.json plus the transformer, VAE and scheduler configs (and the optional sidecar).

    Reads small JSON files only: a local folder directly, a hub id through the hub cache.
    """
    def load(rel: str, required: bool = True):
        if os.path.isdir(model):
            path = os.path.join(model, rel)
            if not os.path.isfile(path):
                if required:
                    raise SpecError("model", f"{model!r} lacks {rel}")
                return None
        else:
            try:
                from huggingface_hub import hf_hub_download

                path = hf_hub_download(model, rel)
            except Exception as e:  # offline, missing repo, missing file
                if not required:
                    return None
                raise SpecError("model", f"could not read {rel} of {model!r} from the hub ({type(e).__name__}: "
                                         f"{e}); pass a local folder instead") from e
        with open(path) as f:
            return json.load(f)

    index = load("model_index.json")
    out = {"index": index, "sidecar": load(SIDECAR, required=False) or {}}
    for comp in ("transformer", "vae", "scheduler", "transformer_2"):
        if index.get(comp) and index[comp][0] is not None:
            name = "scheduler_config.json" if comp == "scheduler" else "config.json"
            out[comp] = load(f"{comp}/{name}")
    for comp in ENCODERS:  # what SRDiffusion's pair must share (supergen/pair.py)
        if index.get(comp) and index[comp][0] is not None:
            out[comp] = load(f"{comp}/config.json", required=False)
    return out


def load_pipeline(model: str, pipeline_class: str, **components):
    """The pipeline `model` holds, loaded without diffusers' and transformers' own progress bars: the
    executor's progress reports loading as its "load" stage, and a quiet render prints nothing.
    `components`: parts given loaded, which its folder's copies do not replace."""
    import diffusers

    cls = getattr(diffusers, pipeline_class)
    try:
        with _no_library_progress_bars():
            return cls.from_pretrained(model, **components)
    except Exception as e:
        raise BackendError(f"loading {model!r} as {pipeline_class} failed: {e}") from e


@contextlib.contextmanager
def _no_library_progress_bars():
    import diffusers.utils.logging as dl
    import transformers.utils.logging as tl

    was = dl.is_progress_bar_enabled(), tl.is_progress_bar_enabled()
    dl.disable_progress_bar()
    tl.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            dl.enable_progress_bar()
        if was[1]:
            tl.enable_progress_bar()


def fresh_scheduler(template, steps: int, sigmas=None):
    """A new scheduler with `steps` timesteps (or the pipeline's own `sigmas`, HunyuanVideo's): steps are
    stateless calls this way (diffusers' schedulers keep a step index), so any worker can step any region
    at any index."""
    s = type(template).from_config(template.config)
    if sigmas is None:
        s.set_timesteps(steps)
    else:
        s.set_timesteps(sigmas=sigmas)
    return s


def sample_tiling(vae, vae_tile: int | None, spatial: int, size: tuple[int, int]) -> None:
    """Set a VAE that tiles in sample space by tile and stride (Wan's, HunyuanVideo's) for a frame of
    (height, width) `size`: `vae_tiling`'s tiles, or off where the frame fits one."""
    t = vae_tiling(vae_tile, spatial, size)
    if t is None:
        vae.disable_tiling()
    else:
        vae.enable_tiling(tile_sample_min_height=t[0], tile_sample_min_width=t[0],
                          tile_sample_stride_height=t[1], tile_sample_stride_width=t[1])


def vae_tiling(vae_tile: int | None, spatial: int, size: tuple[int, int],
               overlap: float = 0.25) -> tuple[int, int] | None:
    """(tile, stride) pixels for VAE tiling, or None when the frame fits in one tile.

    Neighbouring tiles share `overlap` of a tile (stride = the rest; both snap to whole latent cells): a
    quarter, Wan's and HunyuanVideo's VAE defaults, unless the family's publisher blends less
    (`vae_overlap`: CogVideoX's sixth: at 2K its tiles cover 15% less area). Passing both explicitly
    matters: given only a tile size, diffusers keeps the VAE's default stride, and tiles smaller than that
    stride leave the pixels between them out of the output without a warning.
    """
    if vae_tile is None or max(size) <= vae_tile:
        return None
    tile = max(4 * spatial, vae_tile // spatial * spatial)
    stride = max(spatial, int(tile * (1 - overlap)) // spatial * spatial)
    return tile, stride


def vae_overlap(family: str) -> float:
    """The share of a VAE tile its neighbour overlaps, as the family's publisher tiles: CogVideoX's
    `tile_overlap_factor` is 1/6, the others' strides are 3/4 of a tile."""
    return 1 / 6 if family.startswith("cogvideox") else 0.25


def check_latent_shape(z: torch.Tensor, expected: tuple[int, ...], what: str) -> None:
    if tuple(z.shape) != tuple(expected):
        raise BackendError(f"{what}: VAE returned a latent of shape {tuple(z.shape)}, expected {tuple(expected)} "
                           "(check the VAE tiling tile/stride)")


def cast_module(module, dtype: torch.dtype) -> None:
    """Cast to `dtype`, keeping the modules the model marks `_keep_in_fp32_modules` in float32 (norms,
    time embeddings), as `from_pretrained(torch_dtype=...)` does."""
    if module is None or next(module.parameters()).dtype == dtype:
        return
    torch.nn.Module.to(module, dtype)  # diffusers' own `to` warns about the float32 modules kept just below
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    if dtype != torch.float32:
        for name, sub in module.named_modules():
            if any(k in name.split(".") for k in keep):
                sub.to(torch.float32)
