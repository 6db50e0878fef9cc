"""What both trainers share: a time budget, the run log, seeding and periodic checkpoints."""

from __future__ import annotations

import datetime
import math
import platform
import random
import time

import torch

from . import checkpoint


class Session:
    """One training run of at most `minutes` (and `max_steps` in all, if given), resuming whatever `folder`
    already holds.

    `state.json` keeps every run's record (device, versions, start, seconds, steps, the loss curve), so the
    folder's log is the whole history across resumed runs.
    """

    def __init__(self, folder: str, minutes: float, device: str, config: dict, seed: int,
                 max_steps: int | None = None):
        self.folder, self.device = folder, torch.device(device)
        self.t0, self.budget, self.max_steps = time.perf_counter(), minutes * 60, max_steps
        self.state = checkpoint.read_state(folder) or {"step": 0, "seconds": 0.0, "runs": [], "config": config}
        self.step = self.state["step"]
        self.run = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else
                    platform.processor() or "cpu",
                    "versions": _versions(), "first_step": self.step, "losses": [], "evals": []}
        self.state["runs"].append(self.run)
        # a resumed run draws new data: seed from (seed, run number)
        self.rng = random.Random(seed * 1000 + len(self.state["runs"]))
        torch.manual_seed(seed * 1000 + len(self.state["runs"]))
        self._acc, self._n, self._last_save = 0.0, 0, time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def running(self) -> bool:
        return self.elapsed < self.budget and (self.max_steps is None or self.step < self.max_steps)

    def record(self, loss: float, every: int = 50) -> None:
        self.step += 1
        self.run.setdefault("first_loss", round(loss, 6))  # where a resumed run (or a new objective) starts
        self._acc, self._n = self._acc + loss, self._n + 1
        if self.step % every == 0:
            mean = self._acc / self._n
            self.run["losses"].append([self.step, round(mean, 6), round(self.elapsed, 1)])
            print(f"step {self.step} loss {mean:.5f} {self.elapsed:.0f}s", flush=True)
            self._acc, self._n = 0.0, 0
            if not math.isfinite(mean):
                raise FloatingPointError(f"loss is {mean} at step {self.step}")

    @property
    def progress(self) -> float:
        """How far through this run, 0..1, by time or by steps, whichever bound is nearer."""
        done = self.elapsed / self.budget
        if self.max_steps is not None:
            done = max(done, (self.step - self.run["first_step"]) / max(1, self.max_steps - self.run["first_step"]))
        return min(1.0, done)

    def lr(self, peak: float, warmup: int, cooldown: float = 0.3) -> float:
        """Warm up over `warmup` steps, hold, then cool down linearly to a twentieth of `peak` over the
        last `cooldown` of the run (warmup-stable-decay). Every run is a resumable slice of one long
        training, so each ends cooled: whichever run is the last, what it saves is a settled model."""
        steps = self.step - self.run["first_step"]
        cool = min(1.0, (1.0 - self.progress) / cooldown) if cooldown > 0 else 1.0
        return peak * min(1.0, (steps + 1) / warmup) * max(0.05, cool)

    def due(self, every_s: float = 120.0) -> bool:
        return time.perf_counter() - self._last_save > every_s

    def save(self, tensors: dict[str, dict[str, torch.Tensor]], **extra) -> None:
        for prefix, t in tensors.items():
            checkpoint.save_tensors(self.folder, prefix, t)
        self.run.update(last_step=self.step, seconds=round(self.elapsed, 1), **extra)
        self.state.update(step=self.step, seconds=round(sum(r.get("seconds", 0) for r in self.state["runs"]), 1))
        checkpoint.write_state(self.folder, self.state)
        self._last_save = time.perf_counter()


def autocast(device: torch.device):
    """bfloat16 mixed precision on GPUs; plain float32 elsewhere (the CPU tests)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out
