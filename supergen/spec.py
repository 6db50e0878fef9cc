"""`RenderSpec`: one validated render request.

A spec is validated twice, both times before any weights are loaded:

1. at construction, every field on its own (types, ranges, names, files that must exist);
2. by `resolve(spec, info)`, against the model's `ModelInfo` (read from its config files only):
   frames must be a whole number of VAE time blocks, the tile a size the model can take. The render runs
   on a canvas of whole VAE x patch cells: `canvas_width` x `canvas_height`, each side the requested one
   rounded up to the model's size multiple (1920x1080 -> 1920x1088 for Wan's 16 px), and the exported
   pixels are the centre `width` x `height` of it (`crop_to_request`). `resolve` fills every `None` with
   the model's preset and returns a new spec in which no field is `None` except `image`; that resolved
   spec is what render.json records.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from .errors import SpecError
from .lora import parse_all

if TYPE_CHECKING:  # pragma: no cover
    from .backends.base import ModelInfo

DTYPES = ("float32", "bfloat16", "float16")
BOUNDARIES = ("wrap", "clamp")
ROPE_MODES = ("local", "canvas", "canvas-ntk", "canvas-interp")  # supergen/rope.py MODES
CACHE_POLICIES = ("none", "region", "uniform")
EMBEDDED_MODELS = ("world", "tiny", "tiny-i2v")  # world: trained, the default; tiny*: random weights, for tests
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+)$")


@dataclass(frozen=True)
class RenderSpec:
    """One render: what to generate, at what size, with which model and refinement settings.

    Sizes are output pixels; `tile` is in latent cells (pixels / the VAE's spatial factor). A field left
    `None` takes the model's preset when the spec is resolved.
    """

    prompt: str
    negative_prompt: str = ""
    image: str | None = None  # conditioning image path (I2V models only)
    width: int | None = None  # output pixels; preset: the model's native width x its default scale
    height: int | None = None
    # the canvas the render runs on: width/height rounded up to whole VAE x patch cells, filled by `resolve`
    # (set by hand, it must be exactly that); outputs are its centre width x height (`crop_to_request`)
    canvas_width: int | None = None
    canvas_height: int | None = None
    frames: int | None = None  # output frames; must be 1 + a multiple of the VAE's time factor
    steps: int | None = None  # N: the full schedule (the sketch runs all N)
    refine_steps: int | None = None  # k: the last k of the N steps run tiled at full size (paper: 45/50)
    guidance: float | None = None  # CFG scale; 1 disables CFG
    seed: int = 0
    model: str = "world"  # "world" (embedded, trained), "tiny" (random), a hub id, or a local diffusers folder
    dtype: str = "float32"  # transformer/text-encoder dtype; the latent canvas stays float32
    vae_dtype: str | None = None  # the VAE's dtype; preset: as the model's publisher runs it (CogVideoX: dtype)
    device: str = "cpu"
    sketch_width: int | None = None  # preset: the target's aspect ratio at (at most) the native area
    sketch_height: int | None = None
    tile: tuple[int, int] | None = None  # (h, w) latent cells; preset: the native latent size
    shift_every: int = 1  # shift the tile grid before every s-th refinement step; 0: never shift
    shift_loop: int = 16  # shift quantum = tile // shift_loop per axis (the paper's loop_step)
    boundary: str | None = None  # "wrap": windows wrap around the canvas (paper's torus); "clamp": stay
    # inside; preset: the model's measured rule (`boundary_preset`), else wrap
    rope: str | None = None  # the tiles' rotary positions (supergen/rope.py); preset: local, the paper's
    # VAE tiling tile size in pixels (neighbours overlap by a quarter of it, CogVideoX's by a sixth);
    # preset: the model's, else 2x native
    vae_tile: int | None = None
    fps: int | None = None
    cache: str = "none"  # tile cache policy: none | region | uniform
    cache_threshold: float | None = None  # tau; preset per model family
    cache_alpha: float | None = None  # region-aware loosening of the most active tiles; preset per family
    cache_warmup: int = 5  # refinement steps that always compute
    max_consecutive_skips: int = 3
    checkpoint_every: int = 5  # checkpoint the refinement every c steps into the render store; 0: never
    compile: bool = False  # torch.compile the transformer(s) (supergen/compiled.py)
    lora: tuple[str, ...] = ()  # LoRA adapters, "PATH[:SCALE]" each (supergen/lora.py), fused into the transformer
    # SRDiffusion (supergen/pair.py): a smaller model of the same family, sharing the VAE and text encoder,
    # predicts the steps from the switch on, in the sketch and the refinement alike
    render_model: str | None = None
    switch_step: int | None = None  # fixed switch: the first step the render model predicts; None: adaptive
    switch_threshold: float = 0.01  # adaptive: the self-diff below which the render model takes over
    switch_min: int | None = None  # adaptive: the earliest deciding step; preset: a tenth of the steps (5 of 50)
    switch_max: int | None = None  # adaptive: the latest switch step; preset: three fifths of the steps (30 of 50)

    def __post_init__(self):
        _check_fields(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["tile"] is not None:
            d["tile"] = list(d["tile"])
        d["lora"] = list(d["lora"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RenderSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpecError(unknown[0], f"unknown field; known fields are {sorted(known)}")
        d = dict(d)
        if d.get("tile") is not None:
            d["tile"] = tuple(d["tile"])
        if isinstance(d.get("lora"), list):
            d["lora"] = tuple(d["lora"])
        return cls(**d)

    def replace(self, **changes) -> RenderSpec:
        return dataclasses.replace(self, **changes)

    @property
    def canvas_size(self) -> tuple[int, int]:
        """(width, height) pixels the render runs on (latents, tiles, upscale, conditioning): the canvas
        fields of a resolved spec; width/height for a spec resolved before they existed (always whole
        cells then)."""
        return (self.canvas_width if self.canvas_width is not None else self.width,
                self.canvas_height if self.canvas_height is not None else self.height)


def device_problem(device: str) -> str | None:
    """Why this machine cannot run on `device` (None: it can). Not a spec check: a spec is a value that
    may be built on a laptop and run on a GPU worker; whoever runs it asks this first."""
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return f"{device!r} was asked for but this machine has no CUDA device"
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        return f"{device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)"
    return None


def parse_tile(text: str) -> tuple[int, int]:
    """'60x104' -> (60, 104): latent height x width."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m:
        raise SpecError("tile", f"expected HxW in latent cells such as 60x104, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _int(spec, name, lo=None, hi=None, optional=True):
    v = getattr(spec, name)
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(name, f"must be an integer, got {v!r}")
    if lo is not None and v < lo:
        raise SpecError(name, f"must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise SpecError(name, f"must be <= {hi}, got {v}")


def _float(spec, name, lo=None, optional=True):
    v = getattr(spec, name)
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpecError(name, f"must be a finite number, got {v!r}")
    if lo is not None and v < lo:
        raise SpecError(name, f"must be >= {lo}, got {v}")


def _choice(spec, name, allowed):
    v = getattr(spec, name)
    if v not in allowed:
        raise SpecError(name, f"must be one of {list(allowed)}, got {v!r}")


def _check_fields(s: RenderSpec) -> None:
    if not isinstance(s.prompt, str) or not s.prompt.strip():
        raise SpecError("prompt", "must be a non-empty string")
    if not isinstance(s.negative_prompt, str):
        raise SpecError("negative_prompt", f"must be a string, got {type(s.negative_prompt).__name__}")
    for name in ("width", "height", "sketch_width", "sketch_height"):
        _int(s, name, lo=8, hi=16384)
    for name in ("width", "height"):
        v = getattr(s, name)
        if v is not None and v % 2:
            raise SpecError(name, f"must be even (video.mp4 is H.264 4:2:0, which takes only even sides), got {v}; "
                                  f"try {v - 1} or {v + 1}")
    if (s.sketch_width is None) != (s.sketch_height is None):
        raise SpecError("sketch_width", "give both sketch_width and sketch_height, or neither")
    for name, side in (("canvas_width", "width"), ("canvas_height", "height")):
        _int(s, name, lo=8)
        v, out = getattr(s, name), getattr(s, side)
        if v is not None and out is not None and v < out:
            raise SpecError(name, f"must cover the output: >= {side} ({out}), got {v}")
    if (s.canvas_width is None) != (s.canvas_height is None):
        raise SpecError("canvas_width", "give both canvas_width and canvas_height, or neither (resolve fills them)")
    _int(s, "frames", lo=1, hi=1025)
    _int(s, "steps", lo=1, hi=1000)
    _int(s, "refine_steps", lo=1, hi=1000)
    if s.steps is not None and s.refine_steps is not None and s.refine_steps > s.steps:
        raise SpecError("refine_steps", f"must be <= steps ({s.steps}), got {s.refine_steps}")
    _float(s, "guidance", lo=1.0)
    _int(s, "seed", lo=0, hi=2**63 - 1, optional=False)
    _choice(s, "dtype", DTYPES)
    if s.vae_dtype is not None:
        _choice(s, "vae_dtype", DTYPES)
    parse_all(s.lora)  # the entries' syntax; whether they fit the model is `supergen.lora.check`'s
    if not isinstance(s.compile, bool):
        raise SpecError("compile", f"must be true or false, got {s.compile!r}")
    if not isinstance(s.device, str) or not _DEVICE.match(s.device):
        raise SpecError("device", f"must be 'cpu', 'cuda' or 'cuda:N', got {s.device!r}")
    if s.tile is not None:
        if (
            not isinstance(s.tile, tuple)
            or len(s.tile) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in s.tile)
        ):
            raise SpecError("tile", f"must be a pair of positive integers (h, w) in latent cells, got {s.tile!r}")
    _int(s, "shift_every", lo=0, hi=1000, optional=False)
    _int(s, "shift_loop", lo=1, hi=1024, optional=False)
    if s.boundary is not None:
        _choice(s, "boundary", BOUNDARIES)
    if s.rope is not None:
        _choice(s, "rope", ROPE_MODES)
    _int(s, "vae_tile", lo=16, hi=16384)
    _int(s, "fps", lo=1, hi=240)
    _choice(s, "cache", CACHE_POLICIES)
    _float(s, "cache_threshold", lo=0.0)
    _float(s, "cache_alpha", lo=0.0)
    _int(s, "cache_warmup", lo=0, optional=False)
    _int(s, "max_consecutive_skips", lo=0, optional=False)
    _int(s, "checkpoint_every", lo=0, optional=False)
    _check_model(s.model)
    if s.render_model is not None:
        _check_model(s.render_model, "render_model")
    _int(s, "switch_step", lo=1)
    _float(s, "switch_threshold", lo=0.0, optional=False)
    _int(s, "switch_min", lo=0)
    _int(s, "switch_max", lo=1)
    if s.render_model is None:
        for name in ("switch_step", "switch_min", "switch_max"):
            if getattr(s, name) is not None:
                raise SpecError(name, "sets where SRDiffusion's render model takes over: give a render_model too")
    if s.image is not None and (not isinstance(s.image, str) or not s.image):
        raise SpecError("image", f"must be a path, not {s.image!r}")  # whether it opens: `inputs.read_image`


def _check_model(model: str, field: str = "model") -> None:
    if not isinstance(model, str) or not model:
        raise SpecError(field, "must be an embedded model ('world', 'tiny', 'tiny-i2v'), a hub id like "
                               "'Wan-AI/Wan2.1-T2V-1.3B-Diffusers', or a folder")
    if model in EMBEDDED_MODELS:
        return
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "model_index.json")):
            raise SpecError(field, f"folder {model!r} has no model_index.json: not a diffusers pipeline folder")
        return
    if model.startswith((".", "/", "~")) or model.count("/") != 1 or not _HUB_ID.match(model):
        raise SpecError(
            field,
            f"{model!r} is neither an embedded model {list(EMBEDDED_MODELS)}, an existing folder, "
            "nor a hub id of the form 'org/name'",
        )


# ---------------------------------------------------------------------------------------------------
# Resolution against a model


ASPECT_TOLERANCE = 0.02  # the default sketch's aspect ratio stays within 2% of the canvas's whenever it can
MIN_SKETCH_AREA = 0.25  # ... at no less than this fraction of the largest area it may have (half each side)


def stretch(w: int, h: int, target_w: int, target_h: int) -> float:
    """How much resizing a w x h picture to target_w x target_h distorts it: 0 for the same aspect ratio,
    0.02 when one ratio is 2% larger than the other."""
    r = (w * target_h) / (h * target_w)
    return max(r, 1 / r) - 1


def default_sketch_size(width: int, height: int, native: tuple[int, int], multiple: int) -> tuple[int, int]:
    """The default sketch (w, h) for a `width` x `height` canvas: sides multiples of `multiple`, no larger
    than the canvas, area at most the native area and at least `MIN_SKETCH_AREA` of the largest it may have
    (min(native area, canvas area)).

    Among those, the largest whose aspect ratio is within `ASPECT_TOLERANCE` (2%) of the canvas's, so the
    bicubic upscale never stretches more than that; when no size on the model's grid gets within 2% (small
    models with coarse grids, extreme aspect ratios), the closest in aspect ratio, which `size_warnings`
    reports. Sizes under the minimum area are taken only when nothing else fits. For the paper's sizes
    (2560x1440 or 3840x2160 from a 1280x720 model) this is exactly the native size.
    """
    aspect = width / height
    cap = native[0] * native[1]
    floor_area = MIN_SKETCH_AREA * min(cap, width * height)
    best = None
    for sh in range(multiple, height + 1, multiple):
        top = min(width, cap // sh) // multiple * multiple  # the widest that fits (canvas and native area)
        if top < multiple:
            break  # taller sketches fit even less
        exact = sh * aspect
        # every width within the tolerance, the nearest multiples on either side of the exact width, and
        # the ends of what fits (the closest of the too-narrow or too-wide ones when the exact width cannot be)
        within = range(max(multiple, math.floor(exact / (1 + ASPECT_TOLERANCE) / multiple) * multiple),
                       min(top, math.ceil(exact * (1 + ASPECT_TOLERANCE) / multiple) * multiple) + 1, multiple)
        ends = {math.floor(exact / multiple) * multiple, math.ceil(exact / multiple) * multiple, top,
                math.ceil(floor_area / sh / multiple) * multiple}
        for sw in sorted(set(within) | {w for w in ends if multiple <= w <= top}):
            area, err = sw * sh, stretch(sw, sh, width, height)
            if area < floor_area:
                key = (2, err, -area)
            elif err <= ASPECT_TOLERANCE:
                key = (0, -area, err)
            else:
                key = (1, err, -area)
            if best is None or (key, (sw, sh)) < best:
                best = (key, (sw, sh))
    return best[1] if best else (multiple, multiple)


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def _nearest_multiples(v: int, m: int) -> str:
    lo = max(m, v // m * m)
    return f"{lo} or {lo + m}" if lo != v else str(v)


def resolve(spec: RenderSpec, info: ModelInfo) -> RenderSpec:
    """Fill presets from `info` and check every size against the model. Raises `SpecError`.

    A width or height that is not a whole number of the model's VAE x patch cells is kept as the output
    size; the render runs on the covering canvas (`canvas_width` x `canvas_height`) and is cropped back.
    Frames are never rounded: a count the VAE cannot take is an error."""
    p = info.presets
    scale = p["scale"]
    nat_w, nat_h = info.native_size
    width = spec.width if spec.width is not None else nat_w * scale
    height = spec.height if spec.height is not None else nat_h * scale
    m_h, m_w = info.vae_spatial * info.patch[1], info.vae_spatial * info.patch[2]
    # the canvas: whole VAE x patch cells covering the request; the outputs are its centre width x height
    cw, ch = _round_up(width, m_w), _round_up(height, m_h)
    for name, given, v, side, m in (("canvas_width", spec.canvas_width, cw, width, m_w),
                                    ("canvas_height", spec.canvas_height, ch, height, m_h)):
        if given is not None and given != v:
            raise SpecError(name, f"must be {v} for a {side}-px output on {info.family}: the smallest multiple of "
                                  f"{m} (VAE {info.vae_spatial} x patch) that covers it; got {given} (leave it unset)")
    s_h, s_w = math.lcm(m_h, info.sketch_multiple), math.lcm(m_w, info.sketch_multiple)
    if spec.sketch_width is not None:
        sw, sh = spec.sketch_width, spec.sketch_height
        for name, v, m in (("sketch_width", sw, s_w), ("sketch_height", sh, s_h)):
            if v % m:
                raise SpecError(name, f"must be a multiple of {m}, got {v}; try {_nearest_multiples(v, m)}")
    elif info.exact_tile:
        sw, sh = info.native_size  # fixed-resolution positional embeddings: the sketch too runs native
    else:
        sw, sh = default_sketch_size(cw, ch, info.native_size, math.lcm(s_w, s_h))  # upscaled to the canvas
    if info.exact_tile and (sw, sh) != tuple(info.native_size):
        raise SpecError("sketch_width", f"{info.family} only generates at its native "
                                        f"{info.native_size[0]}x{info.native_size[1]}, got a {sw}x{sh} sketch")
    if sw > cw or sh > ch:
        what = f"the output {width}x{height}" if (cw, ch) == (width, height) else f"the canvas {cw}x{ch}"
        raise SpecError("sketch_width", f"sketch {sw}x{sh} must not exceed {what}")

    frames = spec.frames if spec.frames is not None else p["frames"]
    ft = info.frames_multiple
    if (frames - 1) % ft:
        lo = (frames - 1) // ft * ft + 1
        raise SpecError("frames", f"must be 1 + a multiple of {ft} for {info.family}, got {frames}; "
                                  f"try {lo} or {lo + ft}")
    steps = spec.steps if spec.steps is not None else p["steps"]
    k = spec.refine_steps if spec.refine_steps is not None else max(1, round(p.get("refine_fraction", 0.9) * steps))
    if k > steps:
        raise SpecError("refine_steps", f"must be <= steps ({steps}), got {k}")

    canvas = (ch // info.vae_spatial, cw // info.vae_spatial)
    if spec.tile is None:
        tile = tuple(min(n, c) for n, c in zip(info.native_latent, canvas))
    else:
        tile = spec.tile
    _check_tile(tile, canvas, info)

    boundary = spec.boundary or boundary_preset(p, k / steps)
    rope = spec.rope or p.get("rope", "local")
    if rope != "local" and not info.canvas_rope:
        raise SpecError("rope", f"{info.family}'s transformer takes no rotary positions a tile can be given "
                                f"(canvas modes: Wan, CogVideoX 1.5, HunyuanVideo); use local")

    if info.is_i2v and spec.image is None:
        raise SpecError("image", f"{info.family} is an image-to-video model: pass a conditioning image")
    if not info.is_i2v and spec.image is not None:
        raise SpecError("image", f"{info.family} is a text-to-video model and takes no image")

    switch_min, switch_max = _switch_bounds(spec, steps)
    return spec.replace(
        switch_min=switch_min, switch_max=switch_max,
        width=width, height=height, canvas_width=cw, canvas_height=ch, sketch_width=sw, sketch_height=sh,
        frames=frames, steps=steps, refine_steps=k,
        guidance=spec.guidance if spec.guidance is not None else p["guidance"],
        tile=tuple(tile), boundary=boundary, rope=rope, vae_dtype=spec.vae_dtype or vae_dtype_preset(spec.dtype, p),
        vae_tile=spec.vae_tile or p.get("vae_tile") or 2 * max(info.native_size),
        fps=spec.fps or p["fps"],
        cache_threshold=spec.cache_threshold if spec.cache_threshold is not None else p["cache_threshold"],
        cache_alpha=spec.cache_alpha if spec.cache_alpha is not None else p["cache_alpha"],
    )


def _switch_bounds(spec: RenderSpec, steps: int) -> tuple[int | None, int | None]:
    """SRDiffusion's adaptive switch window, presets scaled from the ports' 5 and 30 of 50 steps, checked
    against the schedule (and a fixed switch with it)."""
    if spec.render_model is None:
        return None, None
    lo = spec.switch_min if spec.switch_min is not None else max(1, round(steps / 10))
    hi = spec.switch_max if spec.switch_max is not None else max(lo, round(steps * 3 / 5))
    if hi > steps:
        raise SpecError("switch_max", f"must be <= steps ({steps}), got {hi}")
    if lo > hi:
        raise SpecError("switch_min", f"must be <= switch_max ({hi}), got {lo}")
    if spec.switch_step is not None and spec.switch_step > steps:
        raise SpecError("switch_step", f"must be <= steps ({steps}), got {spec.switch_step}")
    return lo, hi


def boundary_preset(presets: dict, depth: float) -> str:
    """The windows' boundary where the spec names none, for a refinement of `depth` (refined steps over all
    steps): clamped up to the model's measured `clamp_to_depth`, wrapped deeper or where it has none (the
    paper's torus). On the embedded model clamped windows flicker less and keep more of the sketch at 2x, 4x
    and 8x up to half the schedule; deeper they keep less and, at 2x, draw a seam (docs/quality.md)."""
    limit = presets.get("clamp_to_depth")
    return "clamp" if limit is not None and depth <= limit else "wrap"


def vae_dtype_preset(dtype: str, presets: dict) -> str:
    """The VAE's dtype when the spec names none: the family preset, where "dtype" means the transformer's
    (CogVideoX's published pipelines run the whole pipeline in bfloat16); float32 otherwise (Wan's VAE is
    published in float32)."""
    v = presets.get("vae_dtype", "float32")
    return dtype if v == "dtype" else v


def _check_tile(tile: tuple[int, int], canvas: tuple[int, int], info: ModelInfo, field: str = "tile") -> None:
    th, tw = tile
    ph, pw = info.patch[1:]
    if th % ph or tw % pw:
        raise SpecError(field, f"tile {th}x{tw} must be a multiple of the patch {ph}x{pw} of {info.family} "
                                "(the transformer would silently drop the remainder)")
    if th > canvas[0] or tw > canvas[1]:
        raise SpecError(field, f"tile {th}x{tw} is larger than the latent canvas {canvas[0]}x{canvas[1]}")
    if info.exact_tile and (th, tw) != tuple(info.native_latent):
        raise SpecError(field, f"{info.family} has learned positional embeddings: the tile must be exactly the "
                                f"native latent size {info.native_latent[0]}x{info.native_latent[1]}, got {th}x{tw}")
    if info.max_tile is not None and (th > info.max_tile[0] or tw > info.max_tile[1]):
        raise SpecError(field, f"tile {th}x{tw} exceeds the largest tile {info.max_tile[0]}x{info.max_tile[1]} "
                                f"that {info.family}'s positional embedding covers")


def check_render_model(spec: RenderSpec, info: ModelInfo) -> None:
    """SRDiffusion's render model predicts the resolved spec's sketch and tiles too: refuse what it cannot
    take, saying so."""
    canvas = (spec.canvas_height // info.vae_spatial, spec.canvas_width // info.vae_spatial)
    _check_tile(spec.tile, canvas, info, "render_model")
    if info.exact_tile and (spec.sketch_width, spec.sketch_height) != tuple(info.native_size):
        raise SpecError("render_model", f"the render model only generates at its native "
                                        f"{info.native_size[0]}x{info.native_size[1]}, the sketch is "
                                        f"{spec.sketch_width}x{spec.sketch_height}")


# ---------------------------------------------------------------------------------------------------
# From the canvas to the requested output


def crop_box(spec: RenderSpec) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the requested output inside the canvas of a resolved spec: centred,
    the odd pixel of an odd margin at the bottom/right; (0, 0, height, width) when they are the same."""
    cw, ch = spec.canvas_size
    if cw < spec.width or ch < spec.height:
        raise ValueError(f"canvas {cw}x{ch} does not cover the output {spec.width}x{spec.height}")
    return (ch - spec.height) // 2, (cw - spec.width) // 2, spec.height, spec.width


def crop_to_request(video, spec: RenderSpec):
    """The requested `width` x `height` centre of a decoded canvas video (frames, canvas_height,
    canvas_width, channels): every exported pixel output (frames, video.mp4, contact sheet) goes through
    here, in process and on the cluster alike. Works on torch tensors and numpy arrays; the result is
    contiguous (a copy when cropped, the input itself when not)."""
    cw, ch = spec.canvas_size
    if tuple(video.shape[1:3]) != (ch, cw):
        raise ValueError(f"expected a video of the {cw}x{ch} canvas (frames, {ch}, {cw}, channels), "
                         f"got shape {tuple(video.shape)}")
    top, left, h, w = crop_box(spec)
    if (h, w) == (ch, cw):
        return video
    out = video[:, top : top + h, left : left + w]
    if hasattr(out, "contiguous"):
        return out.contiguous()
    import numpy as np

    return np.ascontiguousarray(out)


def size_warnings(spec: RenderSpec) -> list[str]:
    """What a user should know about the sizes of a resolved spec, one sentence each (empty when
    nothing): a canvas larger than the output, an upscale that stretches the sketch by more than
    `ASPECT_TOLERANCE`. A function of the resolved spec alone, so every executor reports the same."""
    out = []
    cw, ch = spec.canvas_size
    if (cw, ch) != (spec.width, spec.height):
        top, left, _, _ = crop_box(spec)
        out.append(f"{spec.width}x{spec.height} is not a whole number of the model's VAE x patch cells: it renders "
                   f"on a {cw}x{ch} canvas and the outputs are its centre {spec.width}x{spec.height} "
                   f"(offset {left} px from the left, {top} px from the top)")
    err = stretch(spec.sketch_width, spec.sketch_height, cw, ch)
    if err > ASPECT_TOLERANCE:
        out.append(f"the {spec.sketch_width}x{spec.sketch_height} sketch's aspect ratio differs from the {cw}x{ch} "
                   f"canvas's by {100 * err:.1f}%, so the upscale stretches the picture (the default sketch is within "
                   f"{100 * ASPECT_TOLERANCE:g}% whenever the model's sketch size grid allows it)")
    return out
