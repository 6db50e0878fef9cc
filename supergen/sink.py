"""Where an executor persists a render as it goes: stage results and refinement checkpoints.

The protocol lives here so the core stays free of storage code; the Zarr render store (`storage/`)
implements it. A checkpoint carries whole-canvas tensors plus the step's grid: a sink may split them per
tile window (the render store does, one chunk per tile) and must restore them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from .tiling import Window


@dataclass
class Checkpoint:
    step: int  # the last completed refinement step (0-based)
    windows: list[Window]  # the grid of that step
    cores: list[Window]
    latent: torch.Tensor  # canvas after the step, float32
    scheduler: dict[str, torch.Tensor] = field(default_factory=dict)  # canvas-aligned solver history
    cache: dict[str, torch.Tensor] = field(default_factory=dict)  # canvas-aligned cache maps
    record: dict = field(default_factory=dict)  # counters and reports so far (JSON-able)


class RenderSink(Protocol):
    def load_stage(self, name: str) -> torch.Tensor | None:
        """A saved stage tensor ("sketch", "start", "final"), or None."""

    def save_stage(self, name: str, tensor: torch.Tensor, record: dict | None = None) -> None:
        """Persist a stage tensor with `record`, a small account kept with it (the sketch's: SRDiffusion's
        switch, which the refinement needs on resume)."""

    def stage_record(self, name: str) -> dict | None: ...

    def save_checkpoint(self, ckpt: Checkpoint) -> None:
        """Persist `ckpt`; it counts only once fully written (a crash mid-write keeps the previous one)."""

    def load_checkpoint(self) -> Checkpoint | None: ...

    def input_image(self) -> bytes | None:
        """The conditioning image's file as kept with the render, or None (then its path is read)."""
