"""Models of two experts (Wan 2.2 A14B): the high-noise transformer runs at timesteps at or above the
boundary (`boundary_ratio` x the scheduler's training timesteps), the low-noise one below it.

The refinement re-noises to schedule index N - k, which may fall on either side of the switch. The two
experts are two models: a tile's cached residual from one says nothing about the other's output, and a
gain measured across the switch is meaningless. The region cache therefore starts afresh at the switch (as
maxdiffusion's MagCache fix does for Wan 2.2), and the user is told where the re-noise point falls."""

from __future__ import annotations

from collections.abc import Sequence


def expert(t: float, boundary: float | None) -> int:
    """0: the (high-noise) first transformer, 1: `transformer_2`. A one-model render is all 0."""
    return 0 if boundary is None or t >= boundary else 1


def switches(timesteps: Sequence[float], boundary: float | None, start: int) -> tuple[int, ...]:
    """Refinement steps (0-based from schedule index `start`) whose expert is not the previous step's:
    where the cache starts afresh."""
    ids = [expert(float(t), boundary) for t in timesteps[start:]]
    return tuple(i for i in range(1, len(ids)) if ids[i] != ids[i - 1])


def note(timesteps: Sequence[float], boundary: float | None, start: int) -> str | None:
    """Where the refinement starts relative to the experts' switch, in a sentence (None: one model)."""
    if boundary is None:
        return None
    n = len(timesteps)
    ids = [expert(float(t), boundary) for t in timesteps]
    switch = next((i for i in range(n) if ids[i] == 1), n)  # first schedule index of the low-noise expert
    where = (f"the experts switch at step {switch} of {n} (timestep < {boundary:g})" if switch < n
             else f"no step of the {n} falls below the experts' boundary (timestep {boundary:g})")
    if start >= switch:
        return (f"{where}; the refinement starts at step {start}, after the switch: it runs the low-noise "
                f"expert alone, and the high-noise expert only drew the sketch")
    if switch >= n:
        return f"{where}: the refinement (from step {start}) runs the high-noise expert alone"
    return (f"{where}; the refinement starts at step {start}, before it: its first {switch - start} steps run "
            f"the high-noise expert, the other {n - switch} the low-noise one, and the tile cache starts afresh "
            f"at the switch")
