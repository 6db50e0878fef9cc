"""A procedural video world with exact ground truth at any resolution.

Scenes of one to three textured shapes moving over a plain or gradient background, described by a
caption from a small grammar ("a red striped circle moving left on a blue background"). A scene lives in
continuous coordinates (the frame is `aspect` wide and 1 high) and is rendered analytically: every edge
and texture is a signed distance, turned into pixel coverage over the pixel's footprint, and a texture
finer than two pixels fades to its mean instead of aliasing. So the same scene rendered at 64x64 and at
256x256 is the sketch-size view and its exact 4x ground truth, and a crop of the scene (`view`) is what a
native-size tile of a larger canvas sees. This is the embedded model's training data and the quality
suite's reference; it is plain torch, batched, and runs on any device.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field

import torch

PALETTE = {
    "red": (0.85, 0.12, 0.12), "yellow": (0.95, 0.85, 0.10), "green": (0.15, 0.70, 0.22),
    "cyan": (0.10, 0.80, 0.85), "blue": (0.15, 0.25, 0.85), "purple": (0.55, 0.18, 0.75),
    "white": (0.95, 0.95, 0.95), "black": (0.07, 0.07, 0.07),
}
SHAPES = ("circle", "square", "triangle", "diamond")
TEXTURES = ("plain", "striped", "checkered", "speckled")
MOTIONS = ("left", "right", "up", "down", "bouncing")
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}  # y grows down
CLIP_FRAMES = 16  # velocities are scene units per 16 frames (2 s at the embedded model's 8 fps)
GRADIENT_LOW = 0.55  # a gradient background runs from this fraction of its colour to the full colour
MAX_SHAPES = 3


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    texture: str
    motion: str
    radius: float  # scene units (the frame is 1 high)
    start: tuple[float, float]  # centre (x, y) at frame 0
    velocity: tuple[float, float]  # scene units per CLIP_FRAMES frames; bouncing shapes reflect at the edges
    period: float = 0.05  # texture period, scene units
    angle: float = 0.0  # texture orientation, radians

    @property
    def phrase(self) -> str:
        texture = "" if self.texture == "plain" else f"{self.texture} "
        motion = "bouncing" if self.motion == "bouncing" else f"moving {self.motion}"
        return f"a {self.colour} {texture}{self.kind} {motion}"


@dataclass(frozen=True)
class Scene:
    background: str
    gradient: bool
    shapes: tuple[Shape, ...]
    aspect: float = 1.0  # frame width / height
    gradient_angle: float = 0.0  # direction in which the gradient brightens, radians
    seed: int = 0  # keys the speckle layout
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def caption(self) -> str:
        bg = f"{self.background} gradient" if self.gradient else self.background
        return " and ".join(s.phrase for s in self.shapes) + f" on a {bg} background"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("meta")
        d["caption"] = self.caption
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        d = {k: v for k, v in d.items() if k not in ("caption", "meta")}
        shapes = tuple(Shape(**{**s, "start": tuple(s["start"]), "velocity": tuple(s["velocity"])})
                       for s in d.pop("shapes"))
        return cls(shapes=shapes, **d)


def vocabulary() -> list[str]:
    """Every word a caption can use, for the embedded model's tokenizer."""
    words = ["a", "and", "on", "background", "gradient", "moving", "bouncing"]
    return words + list(PALETTE) + list(SHAPES) + [t for t in TEXTURES if t != "plain"] + list(DIRECTIONS)


def parse_caption(caption: str) -> dict:
    """The facts a caption states: {"background", "gradient", "shapes": [{kind, colour, texture, motion}]}.
    Raises ValueError on text outside the grammar (quality checks only judge what they can parse)."""
    text = caption.strip().lower().rstrip(".")
    head, sep, bg = text.rpartition(" on a ")
    if not sep or not bg.endswith(" background"):
        raise ValueError(f"not a world caption (no 'on a ... background'): {caption!r}")
    bg_words = bg[: -len(" background")].split()
    if not bg_words or bg_words[0] not in PALETTE or bg_words[1:] not in ([], ["gradient"]):
        raise ValueError(f"unknown background {bg!r} in {caption!r}")
    shapes = []
    for phrase in head.split(" and "):
        w = phrase.split()
        if len(w) < 3 or w[0] != "a" or w[1] not in PALETTE:
            raise ValueError(f"cannot parse {phrase!r} in {caption!r}")
        texture = w[2] if w[2] in TEXTURES else "plain"
        rest = w[3:] if texture != "plain" else w[2:]
        if not rest or rest[0] not in SHAPES:
            raise ValueError(f"unknown shape in {phrase!r}")
        motion = rest[1:]
        if motion == ["bouncing"]:
            m = "bouncing"
        elif len(motion) == 2 and motion[0] == "moving" and motion[1] in DIRECTIONS:
            m = motion[1]
        else:
            raise ValueError(f"unknown motion in {phrase!r}")
        shapes.append({"kind": rest[0], "colour": w[1], "texture": texture, "motion": m})
    return {"background": bg_words[0], "gradient": len(bg_words) == 2, "shapes": shapes}


# -- sampling -------------------------------------------------------------------------------------

def sample_scene(rng: random.Random, aspect: float = 1.0, max_shapes: int = MAX_SHAPES,
                 frames: int = CLIP_FRAMES + 1) -> Scene:
    """A random scene whose straight-moving shapes stay inside the frame for `frames` frames."""
    n = rng.choices(range(1, max_shapes + 1), weights=(0.45, 0.35, 0.2)[:max_shapes])[0]
    background = rng.choice(list(PALETTE))
    shapes = []
    used = {background}
    span = (frames - 1) / CLIP_FRAMES
    for _ in range(n):
        colour = rng.choice([c for c in PALETTE if c not in used])
        used.add(colour)
        radius = rng.uniform(0.10, 0.22) if n == 1 else rng.uniform(0.08, 0.16)
        motion = rng.choice(MOTIONS)
        lo_x, hi_x, lo_y, hi_y = radius, aspect - radius, radius, 1 - radius
        if motion == "bouncing":
            speed, theta = rng.uniform(0.6, 1.1), rng.uniform(0, 2 * math.pi)
            velocity = (speed * math.cos(theta), speed * math.sin(theta))
            start = (rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y))
        else:
            dx, dy = DIRECTIONS[motion]
            travel = min(rng.uniform(0.25, 0.5), 0.9 * ((hi_x - lo_x) if dx else (hi_y - lo_y)) / span)
            velocity = (dx * travel, dy * travel)
            reach = travel * span
            x0 = rng.uniform(lo_x + max(0, -dx) * reach, hi_x - max(0, dx) * reach)
            y0 = rng.uniform(lo_y + max(0, -dy) * reach, hi_y - max(0, dy) * reach)
            start = (x0, y0)
        texture = rng.choice(TEXTURES)
        shapes.append(Shape(kind=rng.choice(SHAPES), colour=colour, texture=texture, motion=motion,
                            radius=radius, start=start, velocity=velocity,
                            period=rng.uniform(0.015, 0.06), angle=rng.uniform(0, math.pi)))
    return Scene(background=background, gradient=rng.random() < 0.5, shapes=tuple(shapes), aspect=aspect,
                 gradient_angle=rng.uniform(0, 2 * math.pi), seed=rng.randrange(2**31))


def random_view(rng: random.Random, aspect: float, max_zoom: float) -> tuple[float, float, float, float]:
    """A crop (x0, y0, w, h) of the frame with the frame's aspect, zoomed log-uniformly in [1, max_zoom]:
    what one native-size tile of a canvas that many times larger sees."""
    zoom = math.exp(rng.uniform(0, math.log(max_zoom)))
    w, h = aspect / zoom, 1 / zoom
    return (rng.uniform(0, aspect - w), rng.uniform(0, 1 - h), w, h)


# -- rendering ------------------------------------------------------------------------------------

def _pack(scenes: list[Scene], device) -> dict[str, torch.Tensor]:
    """Scenes as padded parameter tensors, one row per scene and MAX_SHAPES slots per row (absent slots
    have `present` 0). Built as Python lists first: one tensor per field, not one per value."""
    blank = Shape("circle", "black", "plain", "left", 1.0, (0.0, 0.0), (0.0, 0.0), 1.0, 0.0)
    rows = []
    for s in scenes:
        if len(s.shapes) > MAX_SHAPES:
            raise ValueError(f"a scene holds at most {MAX_SHAPES} shapes, got {len(s.shapes)}")
        rows.append((s, list(s.shapes) + [blank] * (MAX_SHAPES - len(s.shapes))))

    def per_shape(fn, dtype=torch.float32):
        return torch.tensor([[fn(sh) for sh in slots] for _, slots in rows], dtype=dtype, device=device)

    def per_scene(fn):
        return torch.tensor([fn(s) for s, _ in rows], dtype=torch.float32, device=device)

    return dict(
        present=torch.tensor([[1.0] * len(s.shapes) + [0.0] * (MAX_SHAPES - len(s.shapes)) for s, _ in rows],
                             device=device),
        kind=per_shape(lambda sh: SHAPES.index(sh.kind), torch.long),
        texture=per_shape(lambda sh: TEXTURES.index(sh.texture), torch.long),
        bounce=per_shape(lambda sh: float(sh.motion == "bouncing")),
        colour=per_shape(lambda sh: PALETTE[sh.colour]), radius=per_shape(lambda sh: sh.radius),
        start=per_shape(lambda sh: sh.start), velocity=per_shape(lambda sh: sh.velocity),
        period=per_shape(lambda sh: sh.period), angle=per_shape(lambda sh: sh.angle),
        bg=per_scene(lambda s: PALETTE[s.background]), gradient=per_scene(lambda s: float(s.gradient)),
        gradient_angle=per_scene(lambda s: s.gradient_angle), aspect=per_scene(lambda s: s.aspect),
        seed=per_scene(lambda s: (s.seed % 9973) / 9973.0),
    )


def _reflect(p: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Fold p into [lo, hi] as a ball bouncing between walls (a triangle wave)."""
    span = (hi - lo).clamp_min(1e-6)
    u = torch.remainder(p - lo, 2 * span)
    return lo + torch.where(u < span, u, 2 * span - u)


def _coverage(d: torch.Tensor, pw: torch.Tensor) -> torch.Tensor:
    """Fraction of a pixel of width `pw` inside the region whose signed distance at its centre is `d`."""
    return (0.5 - d / pw).clamp(0, 1)


def _band(pw: torch.Tensor, period: torch.Tensor) -> torch.Tensor:
    """How much of a pattern of `period` survives at pixel width `pw`: 1 when resolved, 0 below ~2 px."""
    return (1.6 - 2.0 * pw / period).clamp(0, 1)


def _stripes(u: torch.Tensor, period: torch.Tensor, pw: torch.Tensor) -> torch.Tensor:
    """Anti-aliased square wave of `period` along coordinate u: 1 on half of each period."""
    d = (torch.abs(torch.remainder(u / period, 1.0) - 0.5) - 0.25) * period
    keep = _band(pw, period)
    return keep * _coverage(d, pw) + (1 - keep) * 0.5


def _speckle(u: torch.Tensor, v: torch.Tensor, period: torch.Tensor, pw: torch.Tensor,
             seed: torch.Tensor) -> torch.Tensor:
    """Anti-aliased dots, one per cell of a `period` grid, jittered by a hash of the cell."""
    cu, cv = torch.floor(u / period), torch.floor(v / period)
    h = torch.sin(cu * 12.9898 + cv * 78.233 + seed * 437.585) * 43758.5453
    ju, jv = torch.remainder(h, 1.0) - 0.5, torch.remainder(h * 1.37, 1.0) - 0.5
    du = u - (cu + 0.5 + 0.35 * ju) * period
    dv = v - (cv + 0.5 + 0.35 * jv) * period
    radius = 0.22 * period
    keep = _band(pw, period)
    return keep * _coverage(torch.sqrt(du * du + dv * dv) - radius, pw) + (1 - keep) * math.pi * 0.22**2


def _sdf(kind: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor) -> torch.Tensor:
    """Signed distance, in radii, to a unit shape of each kind (negative inside)."""
    circle = torch.sqrt(qx * qx + qy * qy) - 1
    ax, ay = qx.abs() - 0.85, qy.abs() - 0.85
    square = torch.sqrt(ax.clamp_min(0) ** 2 + ay.clamp_min(0) ** 2) + torch.maximum(ax, ay).clamp_max(0)
    diamond = (qx.abs() + qy.abs() - 1.1) / math.sqrt(2)
    # equilateral triangle pointing up (image y grows down), half side r
    k, r = math.sqrt(3.0), 0.95
    px, py = qx.abs() - r, -qy + r / k - 0.2
    fold = px + k * py > 0
    px, py = torch.where(fold, (px - k * py) / 2, px), torch.where(fold, (-k * px - py) / 2, py)
    px = px - px.clamp(-2 * r, 0)
    triangle = -torch.sqrt(px * px + py * py) * torch.sign(py)
    out = torch.where(kind == 0, circle, square)
    out = torch.where(kind == 2, triangle, out)
    return torch.where(kind == 3, diamond, out)


def render(scenes: list[Scene], width: int, height: int, frames: int, views=None, first_frame: int = 0,
           device="cpu") -> torch.Tensor:
    """Render scenes to (B, 3, frames, height, width) in [-1, 1], float32.

    `views`: per scene a crop (x0, y0, w, h) in scene units (default: the whole frame, (0, 0, aspect, 1)).
    Pixels are square in scene units only when the view's aspect matches width / height.
    """
    p = _pack(scenes, device)
    b = len(scenes)
    if views is None:
        views = [(0.0, 0.0, s.aspect, 1.0) for s in scenes]
    v = torch.tensor(views, dtype=torch.float32, device=device).view(b, 4, 1, 1, 1)
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    X = (v[:, 0] + xs.view(1, 1, 1, width) * v[:, 2])  # (B, 1, 1, W)
    Y = (v[:, 1] + ys.view(1, 1, height, 1) * v[:, 3])  # (B, 1, H, 1)
    pw = torch.maximum(v[:, 2] / width, v[:, 3] / height)  # (B, 1, 1, 1) scene units per pixel

    # background: plain, or a linear ramp over the whole scene (not the view, so crops agree)
    ga = p["gradient_angle"].view(b, 1, 1, 1)
    aspect = p["aspect"].view(b, 1, 1, 1)
    ramp = ((X - aspect / 2) * torch.cos(ga) + (Y - 0.5) * torch.sin(ga)) / torch.sqrt(aspect**2 + 1) + 0.5
    shade = 1 - p["gradient"].view(b, 1, 1, 1) * (1 - GRADIENT_LOW) * (1 - ramp.clamp(0, 1))
    img = p["bg"].view(b, 3, 1, 1, 1) * shade.unsqueeze(1)  # (B, 3, 1, H, W)
    img = img.expand(b, 3, frames, height, width).clone()

    t = (torch.arange(frames, device=device, dtype=torch.float32) + first_frame) / CLIP_FRAMES
    t = t.view(1, frames, 1, 1)
    for j in range(MAX_SHAPES):
        r = p["radius"][:, j].view(b, 1, 1, 1)
        cx = p["start"][:, j, 0].view(b, 1, 1, 1) + p["velocity"][:, j, 0].view(b, 1, 1, 1) * t
        cy = p["start"][:, j, 1].view(b, 1, 1, 1) + p["velocity"][:, j, 1].view(b, 1, 1, 1) * t
        bounce = p["bounce"][:, j].view(b, 1, 1, 1) > 0
        cx = torch.where(bounce, _reflect(cx, r, aspect - r), cx)  # (B, F, 1, 1)
        cy = torch.where(bounce, _reflect(cy, r, 1 - r), cy)
        dx, dy = X - cx, Y - cy  # (B, F, H, W)
        kind = p["kind"][:, j].view(b, 1, 1, 1)
        alpha = _coverage(_sdf(kind, dx / r, dy / r) * r, pw) * p["present"][:, j].view(b, 1, 1, 1)
        # texture in the shape's own frame, so it moves with the shape
        ang = p["angle"][:, j].view(b, 1, 1, 1)
        u = dx * torch.cos(ang) + dy * torch.sin(ang)
        w = -dx * torch.sin(ang) + dy * torch.cos(ang)
        period = p["period"][:, j].view(b, 1, 1, 1)
        tex = p["texture"][:, j].view(b, 1, 1, 1)
        su = _stripes(u, period, pw)
        sw = _stripes(w, period, pw)
        pattern = torch.where(tex == 1, su, torch.zeros_like(su))
        pattern = torch.where(tex == 2, su * sw + (1 - su) * (1 - sw), pattern)
        pattern = torch.where(tex == 3, _speckle(u, w, period, pw, p["seed"].view(b, 1, 1, 1)), pattern)
        base = p["colour"][:, j].view(b, 3, 1, 1, 1)
        luma = (base * torch.tensor([0.3, 0.59, 0.11], device=device).view(1, 3, 1, 1, 1)).sum(1, keepdim=True)
        ink = torch.where(luma > 0.35, base * 0.3, base + (1 - base) * 0.6)  # the pattern's colour
        colour = base + (ink - base) * pattern.unsqueeze(1)
        a = alpha.unsqueeze(1)
        img = img * (1 - a) + colour * a
    return img * 2 - 1


def shape_centres(scene: Scene, frames: int, first_frame: int = 0) -> torch.Tensor:
    """(frames, n_shapes, 2) centre of every shape per frame, scene units: the ground truth of motion."""
    out = []
    for sh in scene.shapes:
        t = (torch.arange(frames, dtype=torch.float64) + first_frame) / CLIP_FRAMES
        cx, cy = sh.start[0] + sh.velocity[0] * t, sh.start[1] + sh.velocity[1] * t
        if sh.motion == "bouncing":
            r = torch.tensor(sh.radius, dtype=torch.float64)
            cx, cy = _reflect(cx, r, scene.aspect - r), _reflect(cy, r, 1 - r)
        out.append(torch.stack([cx, cy], -1))
    return torch.stack(out, 1)
