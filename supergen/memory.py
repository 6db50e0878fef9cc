"""Peak memory of a render per stage, estimated from the resolved spec and the model's configs (no weights
loaded); a pre-flight check against the device's free memory; and the translation of an out-of-memory
failure inside a stage into a clear `InsufficientMemory` error.

A canvas can pass every size check and still not fit: a 16384x16384 clip decodes to hundreds of GiB of
float32 pixels. `supergen.executor.prepare` calls `check` right after resolving the spec, before any
weights load and before a caller creates a render store, so such a render is refused in well under a
second with the stage, both numbers and what to lower. `SUPERGEN_MEMORY_CHECK=off` skips the check.
`guard` / `guarded` wrap the stages: an allocator failure that still happens becomes `InsufficientMemory`
naming the stage, the estimate and the memory left; stages saved before it stay in the store for a resume.

API: `estimate(spec, info=None, configs=None, device=None, attention=None) -> dict` (shape in its
docstring), `available(device) -> int`, `check(spec, info=None, configs=None, stages=STAGES, weights=True)`,
`guard(stage, spec)` (context manager), `guarded(stage)` (decorator), `is_oom(error) -> bool`.

The formula (bytes; B = 4 for float32, b = bytes of `spec.dtype`)
--------------------------------------------------------------------
Symbols: F frames; H x W the canvas the render runs on (`spec.canvas_size`; width x height when whole
cells); h x w the sketch; s, t the VAE's spatial and time factors; F' = (F - 1) // t + 1 latent frames
(CogVideoX 1.5: padded to its time patch); C latent channels.

  V   = 3 F H W B              the clip decoded at full size, float32: the term that grows with the canvas
  v   = 3 F h w B              the decoded sketch
  U   = 3 F H W                the uint8 export (plus its cropped copy when the canvas exceeds the output)
  Lat = C F' (H/s) (W/s) B     one latent canvas; lat the same at the sketch size
  P   = sum over components of parameters x bytes: transformer(s), text and image encoders at b, the VAE at
        bv, the bytes of `spec.vae_dtype` (4 where unset). Parameters come from the safetensors headers where
        the files are on disk (8 bytes and a JSON header per file; no tensor is read), else from closed forms
        over the configs (`_params_from_config`); a component with neither counts 0 (inputs["params_source"]).

VAE, per tile. `vae_tile` (neighbours overlap by `loading.vae_overlap` of it, as `loading.vae_tiling` sets;
one tile when the frame fits)
gives tiles of A = min(tile, H) x min(tile, W) pixels that together cover r = (sum of tile areas) / (H W)
>= 1 frames' worth. Tiles run one after another; inside a tile the VAE takes T_c frames at a time (Wan:
4 = one latent frame; CogVideoX: 8 + F mod 8 to encode, 2 or 3 latent frames = 8 or 12 to decode).
Assumption: a tile's activations peak on the widest full-resolution feature map, the decoder's first
upsampled one, of c_vae channels (Wan: base_dim x dim_mult[1]; CogVideoX: block_out_channels[1]):

  act_vae = K x c_vae x T_c x A x bv      K = 8 on the CPU (measured: its 3-D convolutions unfold their
                                          input), 9 on CUDA (fitted to docs/benchmarks.md: CogVideoX 1.5's
                                          1024-px decode of a 4K clip ran out of an H200's memory at
                                          113 GiB; its 512-px preset runs)

Transformer, per forward over n tokens (ceil(F'/p_t) x tile_h/p_h x tile_w/p_w, plus CogVideoX's text
tokens, which join its attention), hidden D = heads x head_dim, feed-forward width f:

  act_tr = n (10 D b + 4 D B + 2 f b)     the residual, norm, q, k, v, rotated q and k, attention output
                                          and projection at b; the float32 modulation/norm copies; the
                                          feed-forward's two intermediates
         + 2 heads n^2 b                  only with attention "math"

  Attention is assumed memory-efficient, linear in n, by default: PyTorch's scaled_dot_product_attention
  uses flash / memory-efficient kernels on CUDA and, since 2.2, a flash kernel on the CPU (measured here
  on 2.13: +10 MiB for 8192 tokens x 4 heads in float32, where the math kernel's scores would be 1 GiB).
  SUPERGEN_MEMORY_ATTENTION=math counts the quadratic scores (old PyTorch, backends that pass a mask).

Per stage: P + O (O = 256 MiB: allocator caches, oneDNN/cuDNN workspaces) + the largest of its phases:

  sketch   generate      act_tr(n_sketch) g + 8 lat                    g = 2 where the pipeline batches CFG
  upscale  decode sketch as a decode below, of v                       (CogVideoX), else 1
           bicubic       2 v + 2 V                                     input and its copy, interpolate, clamp
           encode        v + V + act_vae(A, T_enc) + (2 r + 6) Lat     tiles' mean and logvar, z, noise
           (+ the image condition Lat x (in_channels - C) / C + 3 H W B on I2V models)
  refine   tiles         Lat (4 + r_w + 6 [cache on] + 2 [multistep]) + act_tr(n_tile) + v
                         r_w = the refinement windows' area / the canvas area (+ the I2V condition)
  export   decode tiles  act_vae(A, T_dec) + r V + 2 Lat                a tile decoding beside those done
           decode blend  (r + 3) V + 2 Lat                              every tile, the blended rows, their
                                                                        concatenation, its clamp
                                                                        (untiled: 1 V and 2 V)
           uint8         3 V + U + 2 Lat                                clamp / shift / scale chain

On CUDA these are device bytes; the host also needs, per stage: sketch P (weights load on the host
first), refine (1 + 6 [cache on]) Lat (checkpoint copies), export 1.1 U + u (the uint8 clips, mp4 bytes).

Calibration (peak RSS of the stage minus RSS before it, one process per stage, on this CPU; working set =
the estimate less P and O):

  model  canvas x frames       stage    phase          estimated  measured  ratio
  world  512 x 512 x 17        upscale  encode          1086 MiB   965 MiB   1.13
  world  512 x 512 x 17        export   decode tiles    1078 MiB  1066 MiB   1.01
  world  512 x 512 x 17, 64x64 tile  refine  tiles       337 MiB   324 MiB   1.04
  world  1024 x 1024 x 17      upscale  encode          1274 MiB  1200 MiB   1.06
  world  1024 x 1024 x 17      export   decode tiles    1353 MiB  1392 MiB   0.97
  world  768 x 512 x 33        upscale  encode          1203 MiB  1034 MiB   1.16
  world  768 x 512 x 33        export   decode tiles    1247 MiB  1346 MiB   0.93
  tiny   1024 x 1024 x 9       upscale  bicubic          217 MiB   301 MiB   0.72
  tiny   1024 x 1024 x 9       export   decode blend     516 MiB   591 MiB   0.87
  tiny   2048 x 2048 x 9       upscale  bicubic          865 MiB   915 MiB   0.94
  tiny   2048 x 2048 x 9       export   decode blend    2082 MiB  2309 MiB   0.90

Terms below O (the sketch and the default refinement of these small models, the tiny model's VAE at
256-512 px) are lost in the process's fixed costs; with P and O the totals stay within 0.65-1.5x.
"""

from __future__ import annotations

import functools
import gc
import json
import math
import os
import re
import struct
import sys
from contextlib import contextmanager
from typing import Any

from .errors import SupergenError

STAGES = ("sketch", "upscale", "refine", "export")
ENV = "SUPERGEN_MEMORY_CHECK"  # "off" (or 0 / false / no) skips the pre-flight check
ENV_ATTENTION = "SUPERGEN_MEMORY_ATTENTION"  # "efficient" (default) or "math"
VERSION = 1
GiB = 2**30
B32 = 4
OVERHEAD = 256 * 2**20
K_VAE = {"cpu": 8.0, "cuda": 9.0}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_OFF = ("off", "0", "false", "no", "disable", "disabled")


class InsufficientMemory(SupergenError, MemoryError):
    """A stage needs (or needed) more memory than the device has. `stage`, `needed` and `available` (bytes;
    `needed` may be None when no estimate could be made), `device`, and `oom`: True when the allocator
    actually failed inside the stage, False when the pre-flight check refused the render."""

    def __init__(self, message: str, stage: str = "", needed: int | None = None, available: int | None = None,
                 device: str = "cpu", oom: bool = False):
        self.stage, self.needed, self.available, self.device, self.oom = stage, needed, available, device, oom
        super().__init__(message)

    def __reduce__(self):  # survive pickling across Dask workers
        return (type(self), (str(self), self.stage, self.needed, self.available, self.device, self.oom))


def gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / GiB:.2f} GiB"


def check_enabled() -> bool:
    return os.environ.get(ENV, "on").strip().lower() not in _OFF


# ---------------------------------------------------------------------------------------------------
# Available memory


def available(device: str = "cpu") -> int:
    """Bytes a new allocation can still get: on CUDA the driver's free memory plus what PyTorch's caching
    allocator holds unused; on the CPU the system's available memory (psutil, else /proc/meminfo), capped
    by the process's cgroup limit where one is set."""
    if str(device).startswith("cuda"):
        import torch

        dev = torch.device(device)
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))
    return _host_available()


def _host_available() -> int:
    avail = None
    try:
        import psutil

        avail = int(psutil.virtual_memory().available)
    except Exception:  # psutil missing: the kernel's own estimate
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        avail = int(line.split()[1]) * 1024
        except OSError:
            pass
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for room in (_cgroup_room(), _address_space_room()):
        if room is not None:
            avail = min(avail, room)
    return avail


def _address_space_room() -> int | None:
    """What an address-space limit (`ulimit -v`, RLIMIT_AS) leaves this process; None when unlimited."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return max(0, soft - int(line.split()[1]) * 1024)
    except (ImportError, OSError, ValueError):
        pass
    return None


def _cgroup_room() -> int | None:
    """limit - usage (less reclaimable file cache) of this process's memory cgroup, v2 or v1; None when
    unlimited or unreadable. Inside a container the cgroup file system is rooted at the container's own
    group, so its root is tried after the path /proc/self/cgroup names."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrl, path = parts
        if ctrl == "":  # v2
            root, names = "/sys/fs/cgroup", ("memory.max", "memory.current", "inactive_file")
        elif "memory" in ctrl.split(","):  # v1
            root, names = "/sys/fs/cgroup/memory", ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                    "total_inactive_file")
        else:
            continue
        for base in (os.path.join(root, path.lstrip("/")), root):
            room = _cgroup_file_room(base, *names)
            if room is not None:
                return room
    return None


def _cgroup_file_room(base: str, limit_file: str, usage_file: str, cache_key: str) -> int | None:
    try:
        with open(os.path.join(base, limit_file)) as f:
            limit = f.read().strip()
        if limit == "max" or int(limit) >= 2**60:
            return None
        with open(os.path.join(base, usage_file)) as f:
            usage = int(f.read().strip())
        cache = 0
        try:
            with open(os.path.join(base, "memory.stat")) as f:
                for line in f:
                    key, _, val = line.partition(" ")
                    if key == cache_key:
                        cache = int(val)
        except OSError:
            pass
        return max(0, int(limit) - (usage - cache))
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------------
# Model facts from configs and weight-file headers


def _configs(model: str) -> dict:
    from .backends import _configs as read

    return read(model)


def _safetensors_params(folder: str, component: str) -> int | None:
    """Parameter count of a component from its safetensors headers (the first 8 bytes give the JSON header's
    length; no tensor data is read). None when there are no readable safetensors files."""
    d = os.path.join(folder, component)
    if not os.path.isdir(d):
        return None
    files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    if not files:
        return None
    total = 0
    for name in files:
        path = os.path.join(d, name)
        try:
            with open(path, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                if n > 100 * 2**20 or n > os.path.getsize(path):
                    return None
                header = json.loads(f.read(n))
            for k, v in header.items():
                if k != "__metadata__":
                    total += math.prod(v["shape"])
        except Exception:  # truncated or not a safetensors file: fall back to the configs
            return None
    return total


def _component_config(model: str, folder: str | None, component: str) -> dict | None:
    if folder is None:
        return None
    path = os.path.join(folder, component, "config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _params_from_config(component: str, cfg: dict | None, family: str) -> int | None:
    """Closed-form parameter counts (within a few percent of the real models: Wan 2.1 1.3B -> 1.4e9, UMT5-XXL
    encoder -> 5.7e9, Wan VAE -> 1.2e8). None when the config is missing or of an unknown kind."""
    if not cfg:
        return None
    if component.startswith("transformer"):
        D = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        L = cfg["num_layers"]
        if family.startswith("wan"):
            p = math.prod(cfg["patch_size"])
            f = cfg["ffn_dim"]
            extra = L * 2 * D * D if cfg.get("added_kv_proj_dim") else 0
            img = cfg.get("image_dim") or 0
            return (L * (8 * D * D + 2 * D * f + 12 * D) + (cfg["in_channels"] + cfg["out_channels"]) * D * p
                    + cfg["freq_dim"] * D + 8 * D * D + cfg["text_dim"] * D + img * (img + D) + extra)
        if family.startswith("hunyuan"):  # double-stream blocks (two of everything) and single-stream ones
            m = cfg.get("mlp_ratio", 4.0)
            return int(L * 2 * (10 + 2 * m) * D * D + cfg.get("num_single_layers", 0) * (7 + 2 * m) * D * D
                       + (cfg.get("text_embed_dim", 4096) + cfg.get("pooled_projection_dim", 768)) * D)
        te = cfg.get("time_embed_dim", 512)
        p = cfg["patch_size"] ** 2 * (cfg.get("patch_size_t") or 1)
        return (L * (12 * D * D + 12 * D * te) + cfg["in_channels"] * p * D + cfg.get("text_embed_dim", 4096) * D
                + 2 * D * te + 2 * D * te + D * p * cfg.get("out_channels", 16))
    if component == "vae":
        if "base_dim" in cfg:  # Wan
            ch = [cfg["base_dim"] * m for m in cfg["dim_mult"]]
            blocks = 2 * cfg["num_res_blocks"] + 1
        elif "block_out_channels" in cfg:  # CogVideoX
            ch = list(cfg["block_out_channels"])
            blocks = 2 * cfg.get("layers_per_block", 3) + 1
        else:
            return None
        return 54 * blocks * sum(c * c for c in ch) + 4 * 54 * ch[-1] ** 2
    if component.startswith("text_encoder") and "d_model" in cfg:  # T5 / UMT5 / ByT5 encoders
        d, ff = cfg["d_model"], cfg["d_ff"]
        gated = 3 if cfg.get("is_gated_act") or "gated" in str(cfg.get("feed_forward_proj", "")) else 2
        return cfg["vocab_size"] * d + cfg["num_layers"] * (4 * d * cfg["num_heads"] * cfg["d_kv"] + gated * d * ff)
    if component.startswith("text_encoder") and "intermediate_size" in cfg:  # LLaMA-style or CLIP text
        h, L, ff = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
        gated = 3 if "rms_norm_eps" in cfg else 2  # LLaMA's gated MLP
        return cfg["vocab_size"] * h + L * (4 * h * h + gated * h * ff)
    if component == "image_encoder":  # CLIP vision
        c = cfg.get("vision_config", cfg)
        if "hidden_size" in c:
            h = c["hidden_size"]
            layers = c["num_hidden_layers"] * (4 * h * h + 2 * h * c["intermediate_size"])
            return layers + 3 * c.get("patch_size", 14) ** 2 * h
    return None


def _weights(model: str, family: str, c: dict) -> dict[str, tuple[int, str]]:
    """{component: (parameters, source)} with source "safetensors", "config" or "unknown"."""
    from .backends import model_folder

    index = c.get("index", {})
    folder = model_folder(model)
    out = {}
    for comp in ("transformer", "transformer_2", "text_encoder", "text_encoder_2", "image_encoder", "vae"):
        entry = index.get(comp)
        if not entry or entry[0] is None:
            continue
        n = _safetensors_params(folder, comp) if folder else None
        if n is not None:
            out[comp] = (n, "safetensors")
            continue
        cfg = c.get(comp) or _component_config(model, folder, comp)
        n = _params_from_config(comp, cfg, family)
        out[comp] = (n or 0, "config" if n is not None else "unknown")
    return out


# ---------------------------------------------------------------------------------------------------
# The estimate


def _axis_extent(size: int, tile: int, stride: int) -> int:
    """Sum of the tile extents diffusers' tiled VAE covers along one axis."""
    return sum(min(tile, size - i) for i in range(0, size, stride))


def _vae(vae: dict, family: str, size: tuple[int, int], vae_tile: int, spatial: int) -> dict:
    """VAE tile geometry and width for a frame of `size` = (H, W) pixels."""
    from .backends.loading import vae_overlap, vae_tiling

    H, W = size
    t = vae_tiling(vae_tile, spatial, (H, W), vae_overlap(family))
    if t is None:
        area, overlap, tile = H * W, 1.0, None
    else:
        tile, stride = t
        area = min(tile, H) * min(tile, W)
        overlap = _axis_extent(H, tile, stride) * _axis_extent(W, tile, stride) / (H * W)
    if "base_dim" in vae:
        mult = vae.get("dim_mult") or [1]
        channels = vae["base_dim"] * mult[min(1, len(mult) - 1)]
    else:
        boc = vae.get("block_out_channels") or [128]
        channels = boc[min(1, len(boc) - 1)]
    return {"tile": tile, "area": area, "overlap": overlap, "channels": channels}


def _chunks(family: str, temporal: int, frames: int) -> tuple[int, int]:
    """(encode, decode) pixel frames the VAE holds at once: CogVideoX's VAE takes 8 frames (the first batch
    also the remainder) to encode and 2 latent frames (the first batch also an odd one) to decode; Wan's
    takes 4 frames, one latent frame, at a time."""
    if family.startswith("cogvideox"):
        latent = (frames - 1) // temporal + 1
        return 8 + frames % 8, (2 + latent % 2) * temporal
    if family.startswith("hunyuan"):  # 16-frame windows and one frame of overlap, encoding and decoding
        return 17, 17
    return temporal, temporal


def _transformer(c: dict, family: str) -> dict:
    tr = c.get("transformer") or c.get("transformer_2") or {}
    heads, hd = tr.get("num_attention_heads", 1), tr.get("attention_head_dim", 64)
    D = heads * hd
    ffn = tr.get("ffn_dim") or 4 * D
    text = (tr.get("max_text_seq_length", 226) if family.startswith("cogvideox")  # text tokens in the attention
            else 1000 + 256 if family.startswith("hunyuanvideo1.5") else 256 if family.startswith("hunyuan") else 0)
    return {"hidden": D, "heads": heads, "ffn": ffn, "text_tokens": text}


def _act_tr(tokens: int, tr: dict, b: int, attention: str) -> int:
    D, f = tr["hidden"], tr["ffn"]
    n = tokens + tr["text_tokens"]
    act = n * (10 * D * b + 4 * D * B32 + 2 * f * b)
    if attention == "math":
        act += 2 * tr["heads"] * n * n * b
    return int(act)


def estimate(spec, info=None, configs: dict | None = None, device: str | None = None,
             attention: str | None = None) -> dict[str, Any]:
    """Peak memory per stage of the resolved `spec` (see the module docstring for the formula).

    `info` defaults to `model_info(spec.model)` and `configs` to the model's configs (read, never weights);
    `device` to `spec.device`. Returns a JSON-able dict:

        {"version": 1, "device": "cpu", "attention": "efficient",
         "stages": {"sketch": bytes, "upscale": bytes, "refine": bytes, "export": bytes},   # on `device`
         "host": {stage: bytes},        # host RAM on top, when `device` is CUDA (all 0 on the CPU)
         "peak_stage": "upscale", "peak_bytes": bytes,
         "terms": {stage: {"phase": str, "bytes": {term: bytes}}},   # what each stage's peak is made of
         "inputs": {...}}               # the formula's inputs: sizes, tiles, channels, tokens, parameters
    """
    if info is None:
        from .backends import model_info

        info = model_info(spec.model)
    c = configs if configs is not None else _configs(spec.model)
    device = str(device or spec.device)
    kind = "cuda" if device.startswith("cuda") else "cpu"
    attention = (attention or os.environ.get(ENV_ATTENTION, "efficient")).strip().lower()
    if attention not in ("efficient", "math"):
        attention = "efficient"
    b = DTYPE_BYTES.get(spec.dtype, 4)
    bv = DTYPE_BYTES.get(getattr(spec, "vae_dtype", None) or "float32", 4)  # the VAE's weights and activations
    fam = info.family
    s, t = info.vae_spatial, info.vae_temporal
    pt, ph, pw = info.patch
    W, H = getattr(spec, "canvas_size", (spec.width, spec.height))  # the canvas the render runs on
    F, h, w = spec.frames, spec.sketch_height, spec.sketch_width
    Fl = (F - 1) // t + 1
    if fam.startswith("cogvideox") and pt > 1:
        Fl += (-Fl) % pt
    C = info.latent_channels
    V, v, U, u = 3 * F * H * W * B32, 3 * F * h * w * B32, 3 * F * H * W, 3 * F * h * w
    U_out = 3 * F * spec.width * spec.height if (W, H) != (spec.width, spec.height) else 0  # the cropped copy
    Lat, lat = C * Fl * (H // s) * (W // s) * B32, C * Fl * (h // s) * (w // s) * B32

    weights = _weights(spec.model, fam, c)
    if getattr(spec, "render_model", None):  # SRDiffusion: the render model's transformer too (it shares the rest)
        weights["render_transformer"] = _weights(spec.render_model, fam, _configs(spec.render_model))["transformer"]
    params = {k: n for k, (n, _) in weights.items()}
    P = sum(n * (bv if k == "vae" else b) for k, n in params.items())

    vae_cfg = c.get("vae", {})
    big = _vae(vae_cfg, fam, (H, W), spec.vae_tile, s)
    small = _vae(vae_cfg, fam, (h, w), spec.vae_tile, s)
    t_enc, t_dec = _chunks(fam, t, F)
    k_vae = K_VAE[kind]

    def act_vae(g, frames):
        return int(k_vae * g["channels"] * min(frames, F) * g["area"] * bv)

    def decode(g, video: int, extra: dict[str, int]) -> dict[str, dict[str, int]]:
        """A decode's two peaks: while a tile decodes (its activations beside the tiles decoded so far, all
        r of them by the last), and once all are decoded (diffusers keeps every tile, the blended rows,
        their concatenation and its clamp: r + 3 clips; untiled, the growing concatenation: 2)."""
        held, after = (g["overlap"], g["overlap"] + 3) if g["tile"] is not None else (1, 2)
        return {"tiles": {"VAE activations": act_vae(g, t_dec), "decoded video": int(held * video), **extra},
                "blend": {"decoded video copies": int(after * video), **extra}}

    tr = _transformer(c, fam)
    th, tw = spec.tile
    tf = -(-Fl // pt)
    n_tile = tf * (th // ph) * (tw // pw)
    n_sketch = tf * (h // s // ph) * (w // s // pw)
    cfg_batch = 2 if fam.startswith("cogvideox") and spec.guidance > 1 else 1
    canvas = (H // s, W // s)
    r_win = math.prod(-(-n // k) * k / n for n, k in zip(canvas, spec.tile))
    if spec.boundary == "clamp":
        r_win = math.prod((-(-n // k) + (1 if k < n else 0)) * k / n for n, k in zip(canvas, spec.tile))
    cache_on = spec.cache != "none"
    multistep = info.scheduler == "CogVideoXDPMScheduler"
    image_lat = 0
    if info.is_i2v:
        in_ch = (c.get("transformer") or {}).get("in_channels", 2 * C)
        image_lat = (in_ch - C) * Fl * canvas[0] * canvas[1] * B32 + 3 * H * W * B32

    base = {"weights": P, "overhead": OVERHEAD}
    phases: dict[str, dict[str, dict[str, int]]] = {
        "sketch": {"generate": {"transformer activations": _act_tr(n_sketch, tr, b, attention) * cfg_batch,
                                "latents": 8 * lat}},
        "upscale": {
            **{f"decode sketch {k}": x for k, x in decode(small, v, {"latents": lat}).items()},
            "bicubic": {"decoded sketch": 2 * v, "upscaled video copies": 2 * V},
            "encode": {"decoded sketch": v, "upscaled video": V, "VAE activations": act_vae(big, t_enc),
                       "latents": int((2 * big["overlap"] + 6) * Lat)},
        },
        "refine": {"tiles": {"latents": int(Lat * (4 + r_win + (6 if cache_on else 0) + (2 if multistep else 0))),
                             "transformer activations": _act_tr(n_tile, tr, b, attention), "decoded sketch": v}},
        "export": {
            **{f"decode {k}": x for k, x in decode(big, V, {"latents": 2 * Lat}).items()},
            "uint8": {"decoded video copies": 3 * V, "uint8 video": U + U_out, "latents": 2 * Lat},
        },
    }
    if image_lat:
        for st in ("upscale", "refine"):
            for terms in phases[st].values():
                terms["image condition"] = image_lat

    stages, terms = {}, {}
    for st, options in phases.items():
        phase, parts = max(options.items(), key=lambda kv: sum(kv[1].values()))
        parts = {**base, **parts}
        stages[st] = int(sum(parts.values()))
        terms[st] = {"phase": phase, "bytes": {k: int(x) for k, x in parts.items()}}
    host = dict.fromkeys(STAGES, 0)
    if kind == "cuda":
        host.update(sketch=P, refine=int((1 + (6 if cache_on else 0)) * Lat), export=int(1.1 * U + U_out + u))
    peak_stage = max(STAGES, key=lambda k: stages[k])
    return {
        "version": VERSION, "device": device, "attention": attention,
        "stages": stages, "host": host, "peak_stage": peak_stage, "peak_bytes": stages[peak_stage],
        "terms": terms,
        "inputs": {
            "model": spec.model, "family": fam, "dtype": spec.dtype, "dtype_bytes": b,
            "frames": F, "latent_frames": Fl, "size": [spec.width, spec.height], "canvas": [W, H],
            "sketch_size": [w, h], "latent_channels": C,
            "vae_spatial": s, "vae_temporal": t, "vae_tile": spec.vae_tile,
            "vae_tile_px": big["tile"], "vae_tile_area": big["area"], "vae_overlap": round(big["overlap"], 4),
            "vae_channels": big["channels"], "vae_chunk_frames": [t_enc, t_dec], "k_vae": k_vae,
            "tile": list(spec.tile), "tile_tokens": n_tile, "sketch_tokens": n_sketch,
            "window_overlap": round(r_win, 4),
            "hidden": tr["hidden"], "heads": tr["heads"], "ffn": tr["ffn"], "text_tokens": tr["text_tokens"],
            "cfg_batch": cfg_batch, "cache": spec.cache, "multistep": multistep,
            "params": params, "params_source": {k: src for k, (_, src) in weights.items()},
            "video_bytes": V, "latent_bytes": Lat, "overhead": OVERHEAD,
        },
    }


# ---------------------------------------------------------------------------------------------------
# The pre-flight check


def _advice(spec, terms: dict[str, int]) -> str:
    """What to lower, from the stage's largest term."""
    top = max((k for k in terms if k != "overhead"), key=lambda k: terms[k])
    size = f"the output size ({spec.width}x{spec.height})"
    frames = f"the frames ({spec.frames})"
    if top == "VAE activations":
        return (f"lower vae_tile ({spec.vae_tile} px; the VAE's memory grows with its square), then {size} "
                f"or {frames}")
    if top == "weights":
        return ("use a smaller dtype (--dtype bfloat16) or a smaller model" if spec.dtype == "float32"
                else "use a smaller model or a device with more memory")
    if top == "transformer activations":
        return f"lower the tile ({spec.tile[0]}x{spec.tile[1]} latent cells) or {frames}"
    return f"lower {size} or {frames}, or vae_tile ({spec.vae_tile} px)"


def _describe(spec, est: dict, stage: str) -> str:
    t = est["terms"][stage]
    top = sorted(((k, x) for k, x in t["bytes"].items() if x), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{k} {gib(x)}" for k, x in top)


def check(spec, info=None, configs: dict | None = None, stages=STAGES, weights: bool = True) -> dict | None:
    """Refuse `spec` with `InsufficientMemory` when a stage's estimated peak exceeds the device's available
    memory (and, on CUDA, the host's). `weights=False` leaves the weights out (a worker that holds them
    already). Returns the estimate, or None when SUPERGEN_MEMORY_CHECK=off."""
    if not check_enabled():
        return None
    est = estimate(spec, info, configs)
    device = est["device"]
    pools = [("stages", device, available(device))]
    if device.startswith("cuda"):
        pools.append(("host", "cpu (host)", available("cpu")))
    for key, where, free in pools:
        for stage in stages:
            need = est[key][stage]
            if key == "stages" and not weights:
                need -= est["terms"][stage]["bytes"]["weights"]
            if need > free:
                raise InsufficientMemory(
                    f"the {stage} stage needs an estimated {gib(need)} on {where} but only {gib(free)} is "
                    f"available ({_describe(spec, est, stage)}; {spec.width}x{spec.height}, {spec.frames} frames, "
                    f"vae_tile {spec.vae_tile}). To fit: {_advice(spec, est['terms'][stage]['bytes'])}. "
                    f"The estimate is within about 2x; if you know the render fits, set {ENV}=off to skip this check.",
                    stage, need, free, where, oom=False)
    return est


# ---------------------------------------------------------------------------------------------------
# Out-of-memory failures inside a stage

_OOM_TEXT = re.compile(r"can't allocate memory|not enough memory|out of memory|cannot allocate memory|"
                       r"std::bad_alloc|ALLOC_FAILED|failed to allocate", re.IGNORECASE)


def is_oom(e: BaseException) -> bool:
    """True for an allocator failure: torch.OutOfMemoryError (CUDA), Python's MemoryError, an OSError ENOMEM,
    or a RuntimeError whose message says the allocator failed ("DefaultCPUAllocator: can't allocate memory",
    "not enough memory", "CUDA out of memory", cuDNN/cuBLAS ALLOC_FAILED)."""
    if isinstance(e, InsufficientMemory):
        return False
    torch = sys.modules.get("torch")
    oom_cls = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom_cls is not None and isinstance(e, oom_cls):
        return True
    if isinstance(e, MemoryError):
        return True
    if isinstance(e, OSError) and e.errno == 12:
        return True
    return isinstance(e, RuntimeError) and bool(_OOM_TEXT.search(str(e)))


def _drop(e: BaseException) -> str:
    """The failure's text, after cutting its traceback (and its context's) loose: the frames of the failed
    stage hold its tensors, which must not outlive the error."""
    text = f"{type(e).__name__}: {e}"
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = None
        e = e.__context__
    return text


def _release(device: str) -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and str(device).startswith("cuda"):
        try:
            torch.cuda.empty_cache()
        except Exception:
            pass


def out_of_memory(stage: str, spec, error: BaseException | str) -> InsufficientMemory:
    """The clear error for an allocator failure in `stage` of `spec`."""
    device = str(getattr(spec, "device", "cpu"))
    needed = None
    try:
        needed = estimate(spec)["stages"][stage]
    except Exception:  # an unresolved spec or unreadable configs: report without the estimate
        pass
    try:
        free = available(device)
    except Exception:
        free = None
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    where = "" if spec is None else (f" of the {spec.width}x{spec.height}, {spec.frames}-frame render")
    return InsufficientMemory(
        f"ran out of memory in the {stage} stage{where} on {device} (estimated peak {gib(needed)}, "
        f"{gib(free)} available now; the allocator said: {first[:200]}). Stages finished before it are kept in "
        f"the render store: lower the output size, the frames or vae_tile, or free memory, then resume.",
        stage, needed, free, device, oom=True)


@contextmanager
def guard(stage: str, spec):
    """Turn an allocator failure inside the block into `InsufficientMemory` naming `stage`, the estimate and
    the available memory. The original traceback (and the frames holding the failed stage's tensors) is
    dropped, so the memory is free again when the error reaches the caller. Other errors pass unchanged."""
    try:
        yield
        return
    except BaseException as e:
        if not is_oom(e):
            raise
        failure = _drop(e)
    _release(getattr(spec, "device", "cpu"))
    raise out_of_memory(stage, spec, failure) from None


def guarded(stage: str):
    """Decorator form of `guard` for stage functions whose first argument is a render store (`.spec()`) or
    a spec; the spec is read only when a failure has to be reported."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except BaseException as e:
                if not is_oom(e):
                    raise
                failure = _drop(e)
            first = args[0] if args else None
            try:
                spec = first.spec() if callable(getattr(first, "spec", None)) else first
            except Exception:
                spec = None
            _release(getattr(spec, "device", "cpu"))
            raise out_of_memory(stage, spec, failure)

        return run

    return wrap
