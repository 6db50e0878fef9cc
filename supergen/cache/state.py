"""Canvas-aligned cache state and the per-tile cached step.

State lives on full-canvas maps, so it survives tile shifting: a window reads whatever its cells hold.
Each tile reads its whole window but writes only its *core* (`tiling.cores`), so every cell has exactly
one writer per step; a worker that owns a set of tiles needs only those windows' share of the maps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..tiling import Window, crop, paste
from .policy import CacheConfig, Decision, Observation, welford

TENSORS = ("residual", "x_last", "x_r1", "x_r2", "o_r1", "o_r2")  # (B, C, F, H, W) like the latent
# Per-cell (H, W) maps: accumulated error, skips in a row, real forwards recorded (0..2), input seen,
# Welford (n, mean, m2) of the owning tile's mean|output|, and the threshold in force.
SCALARS = ("acc", "run", "real", "seen", "w_n", "w_mean", "w_m2", "tau")


def scalar_dtype(name: str) -> torch.dtype:
    """Counters are int32; accumulated error, Welford statistics and thresholds float64."""
    return torch.int32 if name in ("run", "real", "seen") else torch.float64


@dataclass
class TileState:
    """One window's crop of every state map (tensors (B, C, F, h, w), scalars (h, w))."""

    maps: dict[str, torch.Tensor]
    core: tuple[int, int, int, int]  # (dy, dx, h, w) of the owned cells inside the window

    def __getitem__(self, name):
        return self.maps[name]

    def at_core_center(self, name: str) -> float:
        dy, dx, h, w = self.core
        return float(self.maps[name][dy + h // 2, dx + w // 2])


def _mean_abs(a: torch.Tensor) -> float:
    return float(a.abs().mean(dtype=torch.float64))


def observe(ts: TileState, x: torch.Tensor) -> Observation:
    real = int(ts["real"].min())
    seen = bool(ts["seen"].min() > 0)
    return Observation(
        d_in=_mean_abs(x - ts["x_last"]) if seen else None,
        d_out_real=_mean_abs(ts["o_r1"] - ts["o_r2"]) if real >= 2 else None,
        d_in_real=_mean_abs(ts["x_r1"] - ts["x_r2"]) if real >= 2 else None,
        out_real=_mean_abs(ts["o_r1"]) if real >= 1 else None,
        acc=float(ts["acc"].mean(dtype=torch.float64)),
        run=int(ts["run"].max()),
        threshold=ts.at_core_center("tau"),
    )


def cached_tile_step(ts: TileState, x: torch.Tensor, decision: Decision,
                     predict: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, TileState]:
    """Apply `decision` to one tile: run `predict` (a real forward) or reuse input + cached residual.
    Returns the tile output and the tile's updated state (to be written back over its core)."""
    m = dict(ts.maps)
    if decision.compute:
        out = predict()
        m["x_r2"], m["x_r1"] = m["x_r1"], x
        m["o_r2"], m["o_r1"] = m["o_r1"], out
        m["residual"] = out - x
        m["real"] = (m["real"] + 1).clamp(max=2)
        m["acc"] = torch.zeros_like(m["acc"])
        m["run"] = torch.zeros_like(m["run"])
    else:
        out = x + m["residual"]  # reconstructions never enter o_r1/o_r2: the gain stays measured
        m["acc"] = torch.full_like(m["acc"], decision.acc)
        m["run"] = m["run"].max() + torch.ones_like(m["run"])
    m["x_last"] = x
    m["seen"] = torch.ones_like(m["seen"])
    n, mean, m2 = welford(ts.at_core_center("w_n"), ts.at_core_center("w_mean"), ts.at_core_center("w_m2"),
                          _mean_abs(out))
    m["w_n"], m["w_mean"], m["w_m2"] = (torch.full_like(m["w_n"], v) for v in (n, mean, m2))
    return out, TileState(m, ts.core)


class CanvasState:
    """The full-canvas maps of one render (allocated on the first read)."""

    def __init__(self, cfg: CacheConfig):
        self.cfg = cfg
        self.maps: dict[str, torch.Tensor] = {}

    def allocate(self, canvas: torch.Tensor) -> None:
        """Zero maps shaped like the latent canvas (once per render)."""
        if self.maps:
            return
        like = canvas
        for name in TENSORS:
            self.maps[name] = torch.zeros_like(like, dtype=torch.float32)
        hw = like.shape[-2:]
        for name in SCALARS:
            dtype = scalar_dtype(name)
            self.maps[name] = torch.zeros(hw, dtype=dtype, device=like.device)
        self.maps["tau"].fill_(self.cfg.threshold)

    def read(self, win: Window, core: Window) -> TileState:
        H, W = self.maps["acc"].shape
        rel = ((core.top - win.top) % H, (core.left - win.left) % W, core.height, core.width)
        return TileState({k: crop(v, win) for k, v in self.maps.items()}, rel)

    def write(self, win: Window, core: Window, ts: TileState) -> None:
        """Write the core part of a tile's state back onto the canvas maps."""
        dy, dx, h, w = ts.core
        for k, v in ts.maps.items():
            paste(self.maps[k], core, v[..., dy : dy + h, dx : dx + w])

    def set_thresholds(self, cores: list[Window], values: list[float]) -> None:
        for core, v in zip(cores, values):
            paste(self.maps["tau"], core, torch.full((core.height, core.width), v, dtype=torch.float64))

