"""SuperGen's region-aware tile cache for the refinement stage.

`TileCache` drives one render's cache from any executor: per step, `begin_step` (the uniform policy's one
decision), `tile` (decide and compute-or-reuse for one window) and `end_step` (region-aware threshold
update). The decision rule is in `policy.py` (pure); the canvas-aligned state in `state.py`.

CFG: the cache stores the CFG-combined output, so one decision covers both branches and a hit skips both
forwards. Caching the branches separately would double the state for no saving: both run or neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..tiling import Grid, cores, crop
from .policy import CacheConfig, Decision, decide, region_thresholds, welford_std
from .state import CanvasState, cached_tile_step, canvas_observation, core_sums, observe

__all__ = ["CacheConfig", "TileCache", "CacheReport"]


@dataclass
class CacheReport:
    policy: str
    threshold: float
    alpha: float
    skip_map: list[list[int]] = field(default_factory=list)  # [step][tile]: 1 = reused, 0 = computed
    thresholds: list[list[float]] = field(default_factory=list)  # [step][tile] threshold in force
    reasons: dict[str, int] = field(default_factory=dict)

    def record(self, n: int, decision: Decision, threshold: float) -> None:
        """Tile n's decision at the latest step (`begin` opened its row)."""
        self.skip_map[-1][n] = 0 if decision.compute else 1
        self.thresholds[-1][n] = threshold
        self.reasons[decision.reason] = self.reasons.get(decision.reason, 0) + 1

    def begin(self, n_tiles: int) -> None:
        self.skip_map.append([0] * n_tiles)
        self.thresholds.append([0.0] * n_tiles)

    def progress(self) -> dict:
        """The report so far, JSON-able, for a checkpoint's record."""
        return {"skip_map": self.skip_map, "thresholds": self.thresholds, "reasons": self.reasons}

    def restore(self, progress: dict) -> None:
        self.skip_map = [list(r) for r in progress.get("skip_map", [])]
        self.thresholds = [list(r) for r in progress.get("thresholds", [])]
        self.reasons = dict(progress.get("reasons", {}))

    @property
    def computed(self) -> int:
        return sum(len(r) - sum(r) for r in self.skip_map)

    @property
    def needed(self) -> int:
        return sum(len(r) for r in self.skip_map)

    def to_dict(self) -> dict:
        skipped = self.needed - self.computed
        return {"policy": self.policy, "threshold": self.threshold, "alpha": self.alpha,
                "tile_forwards_executed": self.computed, "tile_forwards_needed": self.needed,
                "skip_ratio": round(skipped / self.needed, 4) if self.needed else 0.0,
                "reasons": self.reasons, "skip_map": self.skip_map,
                "thresholds": [[round(t, 6) for t in row] for row in self.thresholds]}


class TileCache:
    def __init__(self, cfg: CacheConfig, steps: int):
        self.cfg, self.steps = cfg, steps
        self.state = CanvasState(cfg)
        self.report = CacheReport(cfg.policy, cfg.threshold, cfg.alpha)
        self._uniform: Decision | None = None

    def snapshot(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Canvas maps and the report so far, for a checkpoint."""
        return dict(self.state.maps), self.report.progress()

    def restore(self, maps: dict[str, torch.Tensor], report: dict) -> None:
        self.state.maps = dict(maps)
        self.report.restore(report)

    def begin_step(self, i: int, grid: Grid, x: torch.Tensor) -> None:
        self.i, self.grid, self.cores = i, grid, cores(grid)
        self.report.begin(len(grid))
        self._uniform = None
        self._writes = []
        if self.cfg.policy != "none":
            if i in self.cfg.fresh_at:  # another model from here on (`supergen.experts`): nothing carries over
                self.state.maps = {}
            self.state.allocate(x)
        if self.cfg.policy == "uniform":  # one decision for the whole canvas (TeaCache-style)
            sums = [core_sums(self.state.read(core, core), crop(x, core)) for core in self.cores]  # owned cells only
            self._uniform = decide(canvas_observation(sums), i, self.steps, self.cfg)

    def tile(self, n: int, x_tile: torch.Tensor, predict) -> torch.Tensor:
        """Output for window `n` of the current grid: `predict()` or the cached reconstruction."""
        if self.cfg.policy == "none":
            return predict()
        win, core = self.grid.windows[n], self.cores[n]
        ts = self.state.read(win, core)
        obs = observe(ts, x_tile)
        d = self._uniform or decide(obs, self.i, self.steps, self.cfg)
        out, ts = cached_tile_step(ts, x_tile, d, predict)
        self._writes.append((win, core, ts))  # applied in end_step: every tile reads the step-start state
        self.report.record(n, d, obs.threshold)
        return out

    def end_step(self) -> None:
        """Write the step's tile states back (each tile its core), then, every `update_every` steps (after
        steps 4, 9, 14, ...), re-derive the region-aware thresholds from all tiles' running stds: the
        normalisation spans the whole render, never one worker."""
        for win, core, ts in self._writes:
            self.state.write(win, core, ts)
        self._writes = []
        if self.cfg.policy != "region" or (self.i + 1) % self.cfg.update_every:
            return
        stds = []
        for core in self.cores:
            c = crop(self.state.maps["w_n"], core), crop(self.state.maps["w_m2"], core)
            cy, cx = core.height // 2, core.width // 2
            stds.append(welford_std(float(c[0][cy, cx]), float(c[1][cy, cx])))
        self.state.set_thresholds(self.cores, region_thresholds(stds, self.cfg.threshold, self.cfg.alpha))
