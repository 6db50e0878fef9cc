"""Offline quality checks of a finished render, with no pretrained weights (they run anywhere, CI included).

Videos are (F, H, W, 3) uint8 tensors or arrays. The checks and what each one catches:

* `seam_score`: gradient energy on the last refinement step's tile edges over the energy elsewhere. The
  last step's seams are the only ones no later, shifted step repairs, so that is where a grid shows.
* `periodicity_score`: spectral power at the tile pitch and its harmonics over the power next to them. It
  needs no grid offset, so it catches a grid left by any step (or by a mis-recorded spec).
* `flicker`: the temporal second difference, and how far a frame leaves the range of its neighbours:
  steady motion scores low, brightness that goes up and down again scores high.
* `sketch_fidelity`, `detail_gain`: the output must still be the sketch when averaged back to its size,
  and must hold more high frequencies than the sketch's bicubic upscale (or refinement added nothing).
* `world_adherence`, `duplication`: for captions of the procedural world (`supergen.world`), whether the
  stated background, objects and motions are there, and whether refinement cloned an object (each tile
  sees the whole prompt, so a tiled refinement may paint "a red circle" into several tiles).

`assess` runs what applies to one render; `panel` draws what a person needs to see a grid.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from . import world
from .metrics import compare_videos, psnr, ssim
from .refine import RefinePlan
from .tiling import tiles_per_axis

EPS = 0.5  # uint8 levels added to both sides of energy ratios: a step under half a level cannot be seen, and
#             a flat video scores 1, not 0/0


def _video(v) -> torch.Tensor:
    """(F, H, W, 3) uint8 tensor or array, checked; stays uint8 (floats are made a few frames at a time,
    because a 4K clip in float32 is gigabytes)."""
    v = torch.as_tensor(v)
    if v.ndim != 4 or v.shape[-1] != 3:
        raise ValueError(f"expected a (frames, H, W, 3) video, got shape {tuple(v.shape)}")
    if v.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 video, got {v.dtype}")
    return v


def _frame_ids(n: int, max_frames: int) -> list[int]:
    """At most `max_frames` evenly spaced frame indices: spatial statistics converge long before a 4K
    clip's every frame is read."""
    if n <= max_frames:
        return list(range(n))
    return sorted({round(i * (n - 1) / (max_frames - 1)) for i in range(max_frames)})


def _ratio(num: float, den: float) -> float:
    return (num + EPS) / (den + EPS)


# -- tile geometry ------------------------------------------------------------------------------------

def _plan(spec: dict, vae_spatial: int) -> RefinePlan:
    """The refinement plan of a resolved spec dict. Built from the fields it needs alone, so a spec whose
    model folder or image is not on this machine can still be judged."""
    keys = ("steps", "refine_steps", "tile", "boundary", "shift_every", "shift_loop")
    return RefinePlan.from_spec(SimpleNamespace(canvas_size=_canvas(spec), **{k: spec[k] for k in keys}), vae_spatial)


def _canvas(spec: dict) -> tuple[int, int]:
    """(width, height) the render ran on: the canvas, of which the output is the centre crop."""
    return spec.get("canvas_width") or spec["width"], spec.get("canvas_height") or spec["height"]


def _crop_offset(spec: dict) -> tuple[int, int]:
    """(top, left) of the output inside the canvas (supergen.spec.crop_box, from a spec dict)."""
    cw, ch = _canvas(spec)
    return (ch - spec["height"]) // 2, (cw - spec["width"]) // 2


def _axis_edges(starts: tuple[int, ...], tile: int, size: int, vae_spatial: int) -> list[int]:
    edges = {s % size for s in starts} | {(s + tile) % size for s in starts}
    return sorted(e * vae_spatial for e in edges if e != 0)


def seam_lines(spec: dict, vae_spatial: int = 8) -> tuple[list[int], list[int]]:
    """Pixel boundaries (rows, cols) where the last refinement step's tile windows begin or end.

    A seam line is a window *edge*: where one tile's prediction starts or stops contributing to the merge.
    In an exact partition the edges are also the core boundaries (each window ends where the next begins);
    with overlapping windows both edges of every window count, because the merge ramp's outermost weight
    is 1/(overlap+1) > 0, so a small step is left at each edge. Position 0 is the canvas border, not a
    seam (a wrapped window joins opposite sides of the frame, which no finite difference can compare).
    Boundary `p` lies between pixel rows (or columns) `p - 1` and `p`.
    """
    plan = _plan(spec, vae_spatial)
    if plan.refine_steps < 1:
        return [], []
    grid = plan.grid(plan.refine_steps - 1)
    top, left = _crop_offset(spec)  # lines in the cropped output's pixels
    rows = [r - top for r in _axis_edges(grid.rows, grid.tile[0], grid.canvas[0], vae_spatial)]
    cols = [c - left for c in _axis_edges(grid.cols, grid.tile[1], grid.canvas[1], vae_spatial)]
    return [r for r in rows if 0 < r < spec["height"]], [c for c in cols if 0 < c < spec["width"]]


def tile_pitch(spec: dict, vae_spatial: int = 8) -> tuple[float | None, float | None]:
    """Pixels between neighbouring window starts (rows, cols), the same at every step whatever the shift;
    None on an axis that one tile spans."""
    plan = _plan(spec, vae_spatial)
    out = []
    for size, tile in zip(plan.canvas, plan.tile):
        n = tiles_per_axis(size, tile)
        if n < 2:
            out.append(None)
        elif plan.boundary == "wrap":
            out.append(size / n * vae_spatial)
        else:
            out.append((size - tile) / (n - 1) * vae_spatial)
    return out[0], out[1]


# -- grid visibility ----------------------------------------------------------------------------------

def _trimmed_mean(x: torch.Tensor, keep: float, dim: int) -> torch.Tensor:
    n = max(1, round(keep * x.shape[dim]))
    return x.sort(dim=dim).values.narrow(dim, 0, n).mean(dim=dim)


def line_energy(video, keep: float = 0.6, max_frames: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient energy of every pixel boundary, per frame: (frames, H-1) for rows, (frames, W-1) for
    columns; entry `p - 1` is boundary `p` (between pixels `p - 1` and `p`).

    A line's energy is the mean |finite difference| across it (channels averaged) over the lowest `keep`
    fraction of its samples. A tile seam runs the whole line, so trimming leaves it intact, while an
    object edge crossing the line, or running along it for less than 1 - `keep` of its length, is
    dropped: without the trim, the few strong edges that happen to land on the few seam lines decide the
    score (a plain mean puts clean world scenes anywhere in 0.3-1.6).
    """
    v = _video(video)
    rows, cols = [], []
    for f in _frame_ids(v.shape[0], max_frames):
        x = v[f].float()  # (H, W, 3)
        rows.append(_trimmed_mean((x[1:] - x[:-1]).abs().mean(dim=2), keep, dim=1))  # (H-1,)
        cols.append(_trimmed_mean((x[:, 1:] - x[:, :-1]).abs().mean(dim=2), keep, dim=0))  # (W-1,)
    return torch.stack(rows).double(), torch.stack(cols).double()


def _on_off(profile: torch.Tensor, lines: list[int], guard: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies on the seam lines and at interior boundaries more than `guard` px from every seam."""
    pos = torch.arange(1, len(profile) + 1)
    seams = torch.tensor([p for p in lines if 1 <= p <= len(profile)], dtype=torch.long)
    if len(seams) == 0:
        return profile[:0], profile
    dist = (pos[:, None] - seams[None, :]).abs().min(dim=1).values
    return profile[dist == 0], profile[dist > guard]


def seam_score(video, rows: list[int], cols: list[int], guard: int = 4, max_frames: int = 16) -> dict:
    """Gradient energy on the seam lines over the energy at interior lines (more than `guard` px from any
    seam, since a VAE decoder spreads a latent seam over a few pixels); see `line_energy`.

    About 1 for content that does not know where the grid is; a visible grid raises it. `score` pools both
    axes (the mean over every seam line against the mean over every interior line); `rows`/`cols` are
    per axis; None where there is no seam line (one tile spans the axis).
    """
    ey, ex = line_energy(video, max_frames=max_frames)
    out, on_all, off_all = {}, [], []
    for name, prof, lines in (("rows", ey.mean(dim=0), rows), ("cols", ex.mean(dim=0), cols)):
        on, off = _on_off(prof, lines, guard)
        out[name] = _ratio(float(on.mean()), float(off.mean())) if len(on) and len(off) else None
        on_all.append(on)
        off_all.append(off)
    on, off = torch.cat(on_all), torch.cat(off_all)
    out["score"] = _ratio(float(on.mean()), float(off.mean())) if len(on) and len(off) else None
    out["lines"] = len(on)
    return out


def _harmonic_ratios(profiles: torch.Tensor, pitch: float, lowest: float) -> torch.Tensor | None:
    """Per harmonic of the pitch (from `lowest` cycles/px up to Nyquist): the power of (N, L) profiles at
    it over the mean power at the DFT bins beside it, both summed over the N profiles.

    The neighbours are the bins 1/L, 2/L, ... either side, up to half way to the next harmonic: a grid of
    lines repeated n times over L has spectral zeros exactly there, while non-periodic content has about
    the same power there as at the harmonic. Both sides get the power of a grid of EPS-high lines, so a
    profile with nothing visible gives 1.
    """
    length = profiles.shape[1]
    reach = max(1, int(length / pitch / 2))  # neighbour bins on each side
    ks = [k for k in range(max(1, math.ceil(lowest * pitch)), int(pitch) + 1) if k / pitch + reach / length < 0.5]
    if not ks:
        return None
    centre = torch.tensor([k / pitch for k in ks], dtype=torch.float64)
    offsets = torch.tensor([j for j in range(-reach, reach + 1)], dtype=torch.float64) / length
    freqs = (centre[:, None] + offsets[None, :]).reshape(-1)  # (K * (2 reach + 1),)
    phase = 2 * math.pi * torch.arange(length, dtype=torch.float64)[:, None] * freqs[None, :]
    p = profiles - profiles.mean(dim=1, keepdim=True)
    power = ((p @ torch.cos(phase)) ** 2 + (p @ torch.sin(phase)) ** 2).sum(dim=0)  # (K * (2 reach + 1),)
    power = power.view(len(ks), 2 * reach + 1) + profiles.shape[0] * (length * EPS / pitch) ** 2
    side = torch.cat([power[:, :reach], power[:, reach + 1 :]], dim=1).mean(dim=1)
    return power[:, reach] / side


def periodicity_score(video, pitch: tuple[float | None, float | None], lowest: float = 1 / 32,
                      max_frames: int = 16) -> dict:
    """How much the line-energy profiles (`line_energy`, one per frame) repeat at the tile pitch: the mean,
    over the pitch's harmonics from `lowest` cycles/px up, of the power at the harmonic over the power
    right beside it. Phase-free: the grid's offset need not be known, so it shows a grid left by any
    refinement step (or a mis-recorded spec), not only the last.

    About 1 for clean frames (content has no preferred period), far above with a grid at the pitch.
    Harmonics below `lowest` are left out: smooth content puts most of its power there, in few bins, and
    makes the ratio erratic, while a seam is sharp enough to reach well above it. Each harmonic counts
    the same, so the score does not hinge on the few strongest bins. `pitch` is (rows, cols) in pixels,
    None to skip an axis; see `tile_pitch`.
    """
    ey, ex = line_energy(video, max_frames=max_frames)
    out, ratios = {}, []
    for name, prof, p in (("rows", ey, pitch[0]), ("cols", ex, pitch[1])):
        r = None if p is None else _harmonic_ratios(prof, p, lowest)
        out[name] = None if r is None else float(r.mean())
        if r is not None:
            ratios.append(r)
    out["score"] = float(torch.cat(ratios).mean()) if ratios else None
    out["pitch_px"] = [None if p is None else round(p, 3) for p in pitch]
    return out


# -- time ---------------------------------------------------------------------------------------------

def flicker(video) -> dict:
    """Temporal flicker in uint8 levels, over the inner frames t (None for clips under 3 frames):

    * `flicker`: mean |x_t - (x_{t-1} + x_{t+1}) / 2|, the high-pass part of the frame differences
      (VBench's temporal flickering takes the plain difference, on static scenes only). Steady smooth
      motion scores low; sharp edges moving several pixels a frame still score.
    * `excursion`: the mean distance by which x_t leaves the range its two neighbours span. A pixel that
      an edge sweeps over changes monotonically and scores 0, so steady motion of any speed scores about
      0, while brightness going up and down again (flicker, popping detail) scores fully.
    * `frame_diff`: the plain mean |x_t - x_{t-1}|, for scale.
    """
    v = _video(video)
    second, beyond = [], []
    for t in range(1, v.shape[0] - 1):
        a, x, b = v[t - 1].float(), v[t].float(), v[t + 1].float()
        second.append(float((x - (a + b) / 2).abs().mean()))
        beyond.append(float(((x - torch.maximum(a, b)).clamp_min(0) + (torch.minimum(a, b) - x).clamp_min(0)).mean()))
    first = [float((v[t].float() - v[t - 1].float()).abs().mean()) for t in range(1, v.shape[0])]
    return {"flicker": sum(second) / len(second) if second else None,
            "excursion": sum(beyond) / len(beyond) if beyond else None,
            "frame_diff": sum(first) / len(first) if first else None}


# -- against the sketch --------------------------------------------------------------------------------

def _resize(frame: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(H, W, 3) uint8 -> (h, w, 3) float in [0, 255] (not rounded)."""
    x = frame.permute(2, 0, 1)[None].float()  # (1, 3, H, W)
    kw = {} if mode in ("area", "nearest") else {"align_corners": False}
    return F.interpolate(x, size=size, mode=mode, **kw)[0].permute(1, 2, 0)


def downsample(video, size: tuple[int, int]) -> torch.Tensor:
    """Area-average every frame to `size` = (h, w): what the output looks like at the sketch's size."""
    v = _video(video)
    return torch.stack([_resize(f, size, "area").round().clamp(0, 255).to(torch.uint8) for f in v])


def _check_frames(video: torch.Tensor, sketch: torch.Tensor) -> None:
    if video.shape[0] != sketch.shape[0]:
        raise ValueError(f"the output has {video.shape[0]} frames and the sketch {sketch.shape[0]}; they must match")


def _mean(values: list[float]) -> float | str:
    """Mean of the finite values ("inf" when every value is infinite: identical frames), JSON-safe."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else "inf"


def sketch_fidelity(video, sketch) -> dict:
    """The output area-downsampled to the sketch's size against the sketch: mean PSNR (dB) and SSIM. The
    refinement must add detail, not change the picture the sketch fixed. SSIM is None for sketches under
    11 px (its window)."""
    v, s = _video(video), _video(sketch)
    _check_frames(v, s)
    down = downsample(v, tuple(s.shape[1:3]))
    small = min(s.shape[1:3]) < 11
    return {"psnr_db": _mean(psnr(down, s)), "ssim": None if small else sum(ssim(down, s)) / len(s)}


def _laplacian_energy(frame: torch.Tensor) -> float:
    """Mean squared 3x3 Laplacian of an (H, W, 3) float frame: its high-frequency energy."""
    x = frame.permute(2, 0, 1)[:, None].double()  # (3, 1, H, W)
    k = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float64).view(1, 1, 3, 3)
    return float((F.conv2d(x, k) ** 2).mean())


def bicubic(sketch, size: tuple[int, int]) -> torch.Tensor:
    """(F, H, W, 3) uint8: the sketch's frames bicubic-upscaled in pixel space to `size` = (H, W), the
    refinement's starting picture (`upscale_video`), quantised like any output."""
    from .upscale import to_uint8, upscale_video

    lo = _video(sketch).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # (1, 3, F, h, w) in [-1, 1]
    return to_uint8(upscale_video(lo, size))


def detail_gain(video, sketch, max_frames: int = 16) -> float:
    """High-frequency energy (mean squared Laplacian) of the output over that of the sketch bicubic-
    upscaled to the output's size (`upscale_video`'s resize, the refinement's starting picture). Above 1:
    refinement added detail the upscale lacked; about 1: it added nothing; below 1: it smoothed. The upscale
    is quantised like the output: on flat frames rounding alone adds Laplacian energy."""
    v, s = _video(video), _video(sketch)
    _check_frames(v, s)
    ids = _frame_ids(v.shape[0], max_frames)
    up = bicubic(s[ids], tuple(v.shape[1:3]))
    out = sum(_laplacian_energy(v[f].float()) for f in ids)
    ref = sum(_laplacian_energy(frame.float()) for frame in up)
    return (out + EPS**2) / (ref + EPS**2)


def reference_fidelity(video, reference) -> dict:
    """Mean PSNR/SSIM against a reference render of the same size (e.g. a ground truth, or an untiled
    render); see `supergen.metrics.compare_videos`."""
    r = compare_videos(reference, video)
    return {"psnr_db": r["psnr_db"]["mean"], "ssim": r["ssim"]["mean"]}


# -- the procedural world: does the video show its caption? ----------------------------------------------

def _ink(colour: torch.Tensor) -> torch.Tensor:
    """The colour a texture pattern paints on an object of `colour` (as `world.render` does): 0.3x for
    bright colours, 60% of the way to white for dark ones."""
    luma = float((colour * torch.tensor([0.3, 0.59, 0.11])).sum())
    return colour * 0.3 if luma > 0.35 else colour + (1 - colour) * 0.6


def _background_family(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The segment of colours a `name` background takes: plain is its end, a gradient runs along it."""
    c = torch.tensor(world.PALETTE[name])
    return c * world.GRADIENT_LOW, c


def _object_family(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The segment of colours a `name` object takes: plain at one end, pattern ink at the other, and an
    unresolved texture (faded to its mean, as in a sketch) in between."""
    c = torch.tensor(world.PALETTE[name])
    return c, _ink(c)


def _segment_distance(x: torch.Tensor, seg: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance of (..., 3) colours to the segment a->b, and where along it (0 at a, 1 at b) each lies."""
    a, b = seg
    ab = b - a
    t = (((x - a) * ab).sum(-1) / (ab * ab).sum().clamp_min(1e-12)).clamp(0, 1)
    return (x - (a + t[..., None] * ab)).norm(dim=-1), t


def _label(x: torch.Tensor, families: list[tuple[torch.Tensor, torch.Tensor]], tolerance: float) -> torch.Tensor:
    """Index of the nearest family of every (..., 3) colour in [0, 1]; -1 where none is within `tolerance`
    (anti-aliased edges, colours the caption does not mention)."""
    d = torch.stack([_segment_distance(x, seg)[0] for seg in families], dim=-1)
    best, idx = d.min(dim=-1)
    return torch.where(best <= tolerance, idx, torch.full_like(idx, -1))


def _analysis_frames(video, max_frames: int, max_side: int) -> torch.Tensor:
    """(n, h, w, 3) float in [0, 1]: at most `max_frames` evenly spaced frames (first and last kept, for
    motion), area-reduced so the long side is at most `max_side` (objects are >= 8% of the frame height,
    so this loses no object, and keeps blob counting cheap on a 4K clip)."""
    v = _video(video)
    H, W = v.shape[1:3]
    scale = min(1.0, max_side / max(H, W))
    size = (max(1, round(H * scale)), max(1, round(W * scale)))
    frames = [v[f] for f in _frame_ids(v.shape[0], max_frames)]
    return torch.stack([_resize(f, size, "area") if scale < 1 else f.float() for f in frames]) / 255


def _border(x: torch.Tensor) -> torch.Tensor:
    """(N, 3) pixels of each frame's outer ring (2% of the height wide): background almost everywhere,
    since world objects stay inside the frame."""
    n, H, W, _ = x.shape
    b = max(1, round(0.02 * H))
    ring = torch.ones(H, W, dtype=torch.bool)
    ring[b : H - b, b : W - b] = False
    return x[:, ring].reshape(-1, 3)


def _background(x: torch.Tensor, tolerance: float) -> dict:
    """`detect_background` of (n, H, W, 3) analysis frames in [0, 1]."""
    px = _border(x)
    names = list(world.PALETTE)
    lab = _label(px, [_background_family(n) for n in names], tolerance)
    votes = torch.bincount(lab[lab >= 0], minlength=len(names))
    if int(votes.sum()) == 0:
        return {"colour": None, "gradient": None, "share": 0.0, "shade_spread": None}
    k = int(votes.argmax())
    _, t = _segment_distance(px[lab == k], _background_family(names[k]))
    shade = world.GRADIENT_LOW + (1 - world.GRADIENT_LOW) * t  # fraction of the full colour
    spread = float(torch.quantile(shade, 0.95) / torch.quantile(shade, 0.05))
    return {"colour": names[k], "gradient": spread > 1.2, "share": float(votes[k]) / len(px), "shade_spread": spread}


def detect_background(video, tolerance: float = 0.2, max_frames: int = 16, max_side: int = 256) -> dict:
    """The palette colour of the frame borders (majority vote over border pixels, each matched to every
    colour's background segment, so a gradient matches its colour all along), and whether it is a
    gradient (the brightness of those pixels spreads by more than 1.2x between its 5th and 95th
    percentiles; a gradient spans 1/0.55 = 1.8x over the whole frame). `share`: the fraction of border
    pixels that voted for it."""
    return _background(_analysis_frames(video, max_frames, max_side), tolerance)


def _open(mask: torch.Tensor) -> torch.Tensor:
    """3x3 morphological opening of (n, H, W) masks: drops the 1-2 px rings anti-aliasing leaves around
    objects, which can take another object's colour."""
    m = mask[:, None].float()
    eroded = -F.max_pool2d(-m, 3, 1, 1)
    return F.max_pool2d(eroded, 3, 1, 1)[:, 0] > 0


def _components(mask: torch.Tensor, min_pixels: int) -> list[list[torch.Tensor]]:
    """Per frame of (n, H, W) masks, the 8-connected components of at least `min_pixels` as boolean masks.

    Plain torch, no scipy: every pixel starts with its own id as label; a 3x3 max pool spreads the larger
    label to neighbours, and a pointer jump (take the label of the pixel whose id is your label, which
    has spread at least as far) doubles the reach, so a blob settles in a few dozen rounds.
    """
    n, H, W = mask.shape
    flat = mask.reshape(n, H * W)
    lab = torch.arange(1, H * W + 1, dtype=torch.float32).expand(n, -1) * flat  # 0 off the mask
    while True:
        grown = F.max_pool2d(lab.view(n, 1, H, W), 3, 1, 1).view(n, H * W) * flat
        grown = torch.gather(grown, 1, (grown.long() - 1).clamp_min(0)) * flat
        if torch.equal(grown, lab):
            break
        lab = grown
    lab = lab.view(n, H, W)
    out = []
    for f in range(n):
        values, counts = torch.unique(lab[f][mask[f]], return_counts=True)
        out.append([lab[f] == v for v, c in zip(values, counts) if int(c) >= min_pixels])
    return out


def _object_masks(x: torch.Tensor, facts: dict, seen: str | None, tolerance: float) -> dict[str, torch.Tensor]:
    """(n, H, W) mask of every captioned object colour: the pixels nearest that colour's object segment
    among the caption's colours and the backgrounds, stated and `seen` (a wrong caption must not turn
    the real background into an object)."""
    colours = list(dict.fromkeys(s["colour"] for s in facts["shapes"]))
    backgrounds = list(dict.fromkeys([facts["background"]] + ([seen] if seen else [])))
    families = [_object_family(c) for c in colours] + [_background_family(b) for b in backgrounds]
    lab = _label(x, families, tolerance)
    return {c: _open(lab == i) for i, c in enumerate(colours)}


def _centroid(mask: torch.Tensor) -> tuple[float, float] | None:
    """(x, y) centre of a (H, W) mask in frame heights (the world's scene units), None when empty."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(ys) == 0:
        return None
    H = mask.shape[0]
    return float((xs.float() + 0.5).mean() / H), float((ys.float() + 0.5).mean() / H)


def _motion_ok(motion: str, track: list[tuple[float, float]], min_move: float) -> tuple[bool, list[float] | None]:
    """Whether a centroid track moves as `motion` says: along the stated direction by at least `min_move`
    frame heights, and more along it than across; a bouncing object must just travel that far."""
    if len(track) < 2:
        return False, None
    dx, dy = track[-1][0] - track[0][0], track[-1][1] - track[0][1]
    if motion == "bouncing":
        path = sum(math.dist(a, b) for a, b in zip(track, track[1:]))
        return path >= min_move, [round(dx, 4), round(dy, 4)]
    ux, uy = world.DIRECTIONS[motion]
    along, across = dx * ux + dy * uy, abs(dx * uy - dy * ux)
    return along >= min_move and along > across, [round(dx, 4), round(dy, 4)]


def world_adherence(video, caption: str, tolerance: float = 0.2, min_fraction: float = 0.002,
                    min_move: float = 0.02, max_frames: int = 16, max_side: int = 256) -> dict:
    """Whether a video shows what a world caption states: the background colour (and gradient or plain),
    every object colour as a blob, and every object's motion (the centroid track of its colour's pixels
    over the frames; y grows downward).

    Pixels are matched to colour *segments*, not points: a gradient background runs from 0.55x of its
    colour to the full colour and a textured object from its colour to the pattern's ink, so neither
    splits into several colours. Objects sharing a colour are present-checked together and their
    motion is not judged (whose centroid would it be?). Raises ValueError for a caption outside the
    grammar. Returns per-check booleans, `score` (the fraction passed) and `passed` (all of them).

    Known blind spot: a textured black object's ink greys (0.07 to 0.63) overlap a white gradient
    background's greys (0.52 to 0.95), so such an object may fragment; occlusion by a later object can
    also bend a centroid track. About 1 in 20 ground-truth world scenes fails a check for such reasons.
    """
    facts = world.parse_caption(caption)
    x = _analysis_frames(video, max_frames, max_side)
    n, H, W, _ = x.shape
    bg = _background(x, tolerance)
    checks = {"background": bg["colour"] == facts["background"], "gradient": bg["gradient"] == facts["gradient"]}
    masks = _object_masks(x, facts, bg["colour"], tolerance)
    comps = {c: _components(m, max(1, round(min_fraction * H * W))) for c, m in masks.items()}
    shared = {c for c in masks if sum(s["colour"] == c for s in facts["shapes"]) > 1}
    objects = []
    for i, s in enumerate(facts["shapes"]):
        c = s["colour"]
        present = sum(len(f) > 0 for f in comps[c]) * 2 >= n  # in at least half the frames
        track = [p for f in comps[c] if f and (p := _centroid(torch.stack(f).any(0))) is not None]
        moves, disp = (None, None) if c in shared else _motion_ok(s["motion"], track, min_move)
        checks[f"object{i}_present"] = present
        if moves is not None:
            checks[f"object{i}_motion"] = moves
        objects.append({"colour": c, "kind": s["kind"], "motion": s["motion"], "present": present,
                        "motion_ok": moves, "displacement": disp})
    return {"checks": checks, "score": sum(checks.values()) / len(checks), "passed": all(checks.values()),
            "background": bg, "objects": objects}


def count_objects(video, caption: str, tolerance: float = 0.2, min_fraction: float = 0.002, max_frames: int = 16,
                  max_side: int = 256) -> dict[str, int]:
    """Blobs of every captioned object colour: the median over frames of the number of connected
    components at least `min_fraction` of the frame (after an opening that removes edge rings)."""
    facts = world.parse_caption(caption)
    x = _analysis_frames(video, max_frames, max_side)
    H, W = x.shape[1:3]
    out = {}
    for c, m in _object_masks(x, facts, _background(x, tolerance)["colour"], tolerance).items():
        counts = sorted(len(f) for f in _components(m, max(1, round(min_fraction * H * W))))
        out[c] = counts[len(counts) // 2]
    return out


def duplication(video, sketch, caption: str, **kw) -> dict:
    """Objects of every captioned colour counted in the output and in the sketch (`count_objects`).
    `duplicated` when the output holds more blobs of some colour than the sketch: refinement painted the
    object again, typically once per tile, since every tile sees the whole prompt."""
    out, sk = count_objects(video, caption, **kw), count_objects(sketch, caption, **kw)
    facts = world.parse_caption(caption)
    counts = {c: {"output": out[c], "sketch": sk[c], "caption": sum(s["colour"] == c for s in facts["shapes"])}
              for c in out}
    return {"counts": counts, "duplicated": any(v["output"] > v["sketch"] for v in counts.values())}


# -- everything for one render -------------------------------------------------------------------------

def _rounded(x, digits: int = 4):
    """JSON-ready copy of nested results: floats rounded, infinities as "inf"."""
    if isinstance(x, float):
        return round(x, digits) if math.isfinite(x) else "inf"
    if isinstance(x, dict):
        return {k: _rounded(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_rounded(v, digits) for v in x]
    return x


def assess(video, sketch, spec: dict, reference=None, vae_spatial: int | None = None) -> dict:
    """Every check that applies to one render, as a JSON-ready dict.

    Args:
        video (`(F, H, W, 3)` uint8): the output.
        sketch (`(F, h, w, 3)` uint8): the native-size sketch it was refined from.
        spec (`dict`): the resolved spec (render.json's "spec"): tile grid, steps, shift, prompt.
        reference (`(F, H, W, 3)` uint8, *optional*): a reference render of the same size (a ground
            truth, an untiled render) for PSNR/SSIM.
        vae_spatial (`int`, *optional*): pixels per latent cell (the spec's width over the final latent's);
            8, every supported VAE's factor, when not given.

    World checks run only when the prompt parses as a world caption; otherwise, like a missing reference,
    they are skipped with the reason.
    """
    v, s = _video(video), _video(sketch)
    vae = vae_spatial or 8
    rows, cols = seam_lines(spec, vae)
    pitch = tile_pitch(spec, vae)
    out = {
        "video": list(v.shape[:3]), "sketch": list(s.shape[:3]), "vae_spatial": vae,
        "seam": {**seam_score(v, rows, cols), "rows_px": rows, "cols_px": cols},
        "periodicity": periodicity_score(v, pitch),
        "flicker": flicker(v),
        "sketch_fidelity": sketch_fidelity(v, s),
        "detail_gain": detail_gain(v, s),
    }
    try:
        world.parse_caption(spec["prompt"])
    except ValueError as e:
        out["world"] = {"skipped": str(e)}
    else:
        out["world"] = {"adherence": world_adherence(v, spec["prompt"]),
                        "duplication": duplication(v, s, spec["prompt"])}
    if reference is None:
        out["reference"] = {"skipped": "no reference given"}
    elif tuple(torch.as_tensor(reference).shape) != tuple(v.shape):
        out["reference"] = {"skipped": f"reference shape {list(torch.as_tensor(reference).shape)} differs from the "
                                       f"output's {list(v.shape)}"}
    else:
        out["reference"] = reference_fidelity(v, _video(reference))
    return _rounded(out)


# -- a picture of it --------------------------------------------------------------------------------------

def _energy_map(frame: torch.Tensor) -> torch.Tensor:
    """(H, W) |dx| + |dy| of an (H, W, 3) uint8 frame, channels averaged, in levels."""
    x = frame.float().mean(dim=2)
    e = torch.zeros_like(x)
    e[:, 1:] += (x[:, 1:] - x[:, :-1]).abs()
    e[1:, :] += (x[1:] - x[:-1]).abs()
    return e


def panel(video, sketch, spec: dict, vae_spatial: int | None = None, frames: int = 3, cell: int = 256):
    """A PIL image, one column per sampled frame: the sketch (nearest-upscaled, to show its real detail),
    the output, and its gradient-energy map with the last refinement step's seam lines dotted in red,
    so a person can see whether energy lines up with the grid. Cells are at most `cell` px wide; the
    energy map shrinks by max pooling, which keeps one-pixel seams visible."""
    from PIL import Image, ImageDraw

    v, s = _video(video), _video(sketch)
    _check_frames(v, s)
    H, W = v.shape[1:3]
    scale = min(1.0, cell / W)
    h, w = max(1, round(H * scale)), max(1, round(W * scale))
    rows, cols = seam_lines(spec, vae_spatial or 8)
    ids = _frame_ids(v.shape[0], frames)
    label_h = 14
    img = Image.new("RGB", (w * len(ids), 3 * (h + label_h)), "black")
    draw = ImageDraw.Draw(img)
    for j, f in enumerate(ids):
        lo = Image.fromarray(s[f].numpy()).resize((w, h), Image.NEAREST)
        hi = Image.fromarray(v[f].numpy()).resize((w, h), Image.BOX)
        e = F.adaptive_max_pool2d(_energy_map(v[f])[None, None], (h, w))[0, 0]
        e = (e / e.quantile(0.99).clamp_min(1.0)).clamp(0, 1) * 255
        em = Image.fromarray(e.round().to(torch.uint8).numpy()).convert("RGB")
        ed = ImageDraw.Draw(em)
        for y in rows:
            for x0 in range(0, w, 4):
                ed.point((x0, min(h - 1, round(y * scale))), fill=(255, 40, 40))
        for x in cols:
            for y0 in range(0, h, 4):
                ed.point((min(w - 1, round(x * scale)), y0), fill=(255, 40, 40))
        for r, (pic, name) in enumerate(((lo, "sketch"), (hi, "output"), (em, "energy + seams"))):
            img.paste(pic, (j * w, r * (h + label_h) + label_h))
            draw.text((j * w + 2, r * (h + label_h) + 1), f"{name} f{f}", fill=(220, 220, 220))
    return img
