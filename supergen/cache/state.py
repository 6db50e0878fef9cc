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


def empty_maps(like: torch.Tensor, threshold: float) -> dict[str, torch.Tensor]:
    """The state of a region no refinement step has seen yet, shaped after `like` (its latent): zeros, and
    the base threshold in force. The one empty state of every executor (a canvas, or one window)."""
    maps = {name: torch.zeros_like(like, dtype=torch.float32) for name in TENSORS}
    for name in SCALARS:
        maps[name] = torch.zeros(like.shape[-2:], dtype=scalar_dtype(name), device=like.device)
    maps["tau"].fill_(threshold)
    return maps


def core_sums(ts: TileState, x: torch.Tensor) -> dict:
    """One tile's share of the canvas-wide observation: sums over the cells it owns (its core), in float64.
    `canvas_observation` adds every tile's, so the uniform policy sees the same numbers whoever computes
    the parts."""
    dy, dx, h, w = ts.core
    c = {k: v[..., dy : dy + h, dx : dx + w] for k, v in ts.maps.items()}
    xc = x[..., dy : dy + h, dx : dx + w]
    f64 = torch.float64
    return {"n": xc.numel(), "d_in": float((xc - c["x_last"]).abs().sum(dtype=f64)),
            "d_out_real": float((c["o_r1"] - c["o_r2"]).abs().sum(dtype=f64)),
            "d_in_real": float((c["x_r1"] - c["x_r2"]).abs().sum(dtype=f64)),
            "out_real": float(c["o_r1"].abs().sum(dtype=f64)), "acc": float(c["acc"].sum(dtype=f64)),
            "cells": c["acc"].numel(), "run": int(c["run"].max()), "real": int(c["real"].min()),
            "seen": int(c["seen"].min()), "tau": float(c["tau"].flatten()[0])}


def canvas_observation(sums: list[dict]) -> Observation:
    """The uniform policy's whole-canvas observation from every tile's `core_sums`."""
    n = sum(s["n"] for s in sums)
    real, seen = min(s["real"] for s in sums), min(s["seen"] for s in sums)
    return Observation(
        d_in=sum(s["d_in"] for s in sums) / n if seen else None,
        d_out_real=sum(s["d_out_real"] for s in sums) / n if real >= 2 else None,
        d_in_real=sum(s["d_in_real"] for s in sums) / n if real >= 2 else None,
        out_real=sum(s["out_real"] for s in sums) / n if real >= 1 else None,
        acc=sum(s["acc"] for s in sums) / sum(s["cells"] for s in sums),
        run=max(s["run"] for s in sums), threshold=sums[0]["tau"])


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
        """Empty maps shaped like the latent canvas (once per render)."""
        if not self.maps:
            self.maps = empty_maps(canvas, self.cfg.threshold)

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

