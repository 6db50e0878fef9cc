"""The skip decision and the region-aware thresholds as pure functions of scalars (SuperGen's inter-step
tile-level cache, paper Eq. 6, with the gain fix and a consecutive-skip cap).

For a tile at refinement step i, every quantity a mean absolute value over the tile's window:

    d_in      = mean|x_i - x_{i-1}|           step-to-step change of the (always real) noisy input
    g         = mean|o_r1 - o_r2| / mean|x_r1 - x_r2|   gain dO/dI between the last two *real* forwards
    e_i       = g * d_in / mean|o_r1|          predicted relative change of the output this step
    acc      += e_i while skipping; skip iff acc < threshold; acc := 0 on a real forward

The authors' released code lets reconstructions (x + cached residual) overwrite the previous output,
which pins g to exactly 1.0 during a skip run. Here o_r1/o_r2 and x_r1/x_r2 only ever come from real
forwards, so g keeps its measured value.
"""

from __future__ import annotations

from dataclasses import dataclass

EPS = 1e-12


@dataclass(frozen=True)
class CacheConfig:
    policy: str = "none"  # none | region (per-tile decisions and thresholds) | uniform (one decision per step)
    threshold: float = 0.2  # tau: larger skips more
    alpha: float = 0.5  # region-aware loosening: top tile tau*(1+alpha), second tau*(1+alpha/2)
    warmup: int = 5  # refinement steps that always compute
    max_consecutive_skips: int = 3
    update_every: int = 5  # steps between region-aware threshold updates
    fresh_at: tuple[int, ...] = ()  # refinement steps that start from an empty state (an expert switch)

    @classmethod
    def from_spec(cls, spec, fresh_at: tuple[int, ...] = ()) -> CacheConfig:
        """`fresh_at`: `supergen.experts.switches` of the render's schedule."""
        return cls(spec.cache, spec.cache_threshold, spec.cache_alpha, spec.cache_warmup, spec.max_consecutive_skips,
                   fresh_at=tuple(fresh_at))


@dataclass(frozen=True)
class Observation:
    """What a tile (or, for `uniform`, the whole canvas) reads from the canvas-aligned cache state."""

    d_in: float | None  # None: no previous input recorded here
    d_out_real: float | None  # mean|o_r1 - o_r2|; None: fewer than two real forwards recorded
    d_in_real: float | None  # mean|x_r1 - x_r2|
    out_real: float | None  # mean|o_r1|
    acc: float = 0.0
    run: int = 0  # skips in a row so far
    threshold: float = 0.0


@dataclass(frozen=True)
class Decision:
    compute: bool
    reason: str  # warmup | last | max_skips | no_history | threshold | skip | off
    e: float = 0.0  # the predicted change added this step
    acc: float = 0.0  # accumulated error after this step (0 after a compute)
    gain: float | None = None


def gain(obs: Observation) -> float | None:
    if obs.d_out_real is None or obs.d_in_real is None:
        return None
    return obs.d_out_real / max(obs.d_in_real, EPS)


def predicted_change(obs: Observation) -> float | None:
    """e_i (Eq. 6 with the gain from real forwards), or None when the history is too short."""
    g = gain(obs)
    if g is None or obs.d_in is None or obs.out_real is None:
        return None
    return g * obs.d_in / max(obs.out_real, EPS)


def decide(obs: Observation, step: int, steps: int, cfg: CacheConfig) -> Decision:
    """Compute or reuse, for one tile at refinement step `step` of `steps`."""
    if cfg.policy == "none":
        return Decision(True, "off")
    if step < cfg.warmup:
        return Decision(True, "warmup")
    if step == steps - 1:
        return Decision(True, "last")
    if obs.run >= cfg.max_consecutive_skips:
        return Decision(True, "max_skips")
    e = predicted_change(obs)
    if e is None:
        return Decision(True, "no_history")
    acc = obs.acc + e
    if acc < obs.threshold:
        return Decision(False, "skip", e, acc, gain(obs))
    return Decision(True, "threshold", e, 0.0, gain(obs))


def region_thresholds(stds: list[float], tau: float, alpha: float) -> list[float]:
    """Per-tile thresholds from each tile's running std of mean|output| (min-max normalised over *all*
    tiles): the most variable tile gets tau*(1+alpha), the second tau*(1+alpha/2), the rest tau; all tau
    when the stds are equal. (The official code loosens the most variable tiles; we keep that sign.)"""
    out = [tau] * len(stds)
    if len(stds) == 0 or max(stds) - min(stds) <= EPS:
        return out
    order = sorted(range(len(stds)), key=lambda k: (-stds[k], k))
    out[order[0]] = tau * (1 + alpha)
    if len(order) > 1:
        out[order[1]] = tau * (1 + alpha / 2)
    return out


def welford(n: float, mean: float, m2: float, value: float) -> tuple[float, float, float]:
    """One update of a running mean/variance (Welford 1962)."""
    n += 1
    delta = value - mean
    mean += delta / n
    m2 += delta * (value - mean)
    return n, mean, m2


def welford_std(n: float, m2: float) -> float:
    return (m2 / n) ** 0.5 if n > 0 else 0.0
