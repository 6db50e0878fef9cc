"""SRDiffusion (arXiv 2505.19151): a large model sketches the high-noise steps of a trajectory, a small model
of the same family renders the rest, in both of supergen's stages.

The two models share the VAE, the latent space and the text encoder, so one conditioning serves both and
the trajectory (latent, scheduler, its state) is one: the small model only replaces the large one's
predictions from schedule index `switch` on. `ModelPair` is that as a backend: everything but the
predictions is the large model's, and which model predicts a step is read from the conditioning
(`Conditioning.model_switch`), so the pair itself holds no per-render state and a worker can keep one
for every render.

Where the switch falls: a fixed step (`switch_step`), or SRDiffusion's adaptive rule, decided during the
sketch from the large model's (guided) outputs o_i as the official code and its ports implement it:

    d_i        = tanh(mean|o_i - o_{i-1}| / mean|o_{i-1}|)     the relative change of the output
    selfdiff_i = d_{i-1} - d_i                                  how fast that change is shrinking
    the small model takes over after the first step i >= min with 0 < selfdiff_i < threshold (so at step
    i + 1), and at step max whatever the outputs say (as the ports count: min bounds the step that decides,
    max the first step of the small model; a self-diff exists from step 2 on)

The refinement re-noises to schedule index N - k and runs the same rule's step: its tiles before the
switch are the large model's, from it the small model's; the region cache starts afresh at the switch
(one model's residuals say nothing about the other's), as at Wan 2.2's expert switch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .backends.base import GuidedPredict
from .errors import SpecError

# the carry keys of the adaptive rule in the sketch's scheduler state (kept apart from the scheduler's)
PREV, CHANGE, SWITCH, REASON = "pair_prev", "pair_change", "pair_switch", "pair_reason"


@dataclass(frozen=True)
class SwitchRule:
    step: int | None  # fixed: the first schedule index the small model predicts; None: adaptive
    threshold: float
    min_step: int
    max_step: int

    @classmethod
    def from_spec(cls, spec) -> SwitchRule:
        return cls(spec.switch_step, spec.switch_threshold, spec.switch_min, spec.switch_max)

    def describe(self) -> str:
        if self.step is not None:
            return f"fixed at step {self.step}"
        return (f"adaptive: after the first step >= {self.min_step} whose self-diff is in (0, {self.threshold:g}), "
                f"at step {self.max_step} at the latest")


def relative_change(prev: torch.Tensor, out: torch.Tensor) -> float:
    """d_i: tanh of the mean absolute change of the output over its previous mean magnitude."""
    prev, out = prev.detach().double().cpu(), out.detach().double().cpu()  # the carry keeps outputs on the host
    return math.tanh(float((out - prev).abs().mean() / prev.abs().mean().clamp_min(1e-30)))


def switches_after(index: int, change_before: float | None, change: float | None, rule: SwitchRule) -> bool:
    """Whether the small model predicts from step `index` + 1 on, given the large model's relative changes at
    steps `index` - 1 and `index` (None where not yet defined)."""
    if index + 1 >= rule.max_step:
        return True
    if index < rule.min_step or change_before is None or change is None:
        return False
    return 0.0 < change_before - change < rule.threshold


def decide(outputs: list[torch.Tensor], rule: SwitchRule) -> dict:
    """`record` of the rule applied to a sequence of the large model's outputs step by step, as the sketch
    applies it while it runs (for recorded sequences and tests)."""
    state: dict = {}
    for i, out in enumerate(outputs):
        state = advance_rule(state, i, out, rule)
        if switch_of(state, rule) is not None:
            break
    return record(state, rule, len(outputs))


def reason(index: int, change_before: float | None, change: float | None, rule: SwitchRule) -> str:
    if change_before is not None and change is not None and index + 1 < rule.max_step:
        return (f"self-diff {change_before - change:.4g} at step {index} (relative change {change_before:.4g} -> "
                f"{change:.4g}) fell in (0, {rule.threshold:g})")
    return f"step {rule.max_step} is the latest switch the rule allows"


def advance_rule(state: dict, index: int, output: torch.Tensor, rule: SwitchRule) -> dict:
    """The rule's carry after the large model's guided output at step `index`: the output and its relative
    change, and the switch once decided (SWITCH: the step, with its reason's numbers)."""
    if SWITCH in state or rule.step is not None:
        return state
    change = relative_change(state[PREV], output) if PREV in state else None
    before = float(state[CHANGE]) if CHANGE in state else None
    out = {PREV: output.detach().float().cpu()}
    if change is not None:
        out[CHANGE] = torch.tensor(change, dtype=torch.float64)
    if switches_after(index, before, change, rule):
        out = {SWITCH: torch.tensor([index + 1, index], dtype=torch.int64),
               REASON: torch.tensor([float("nan") if before is None else before,
                                     float("nan") if change is None else change], dtype=torch.float64)}
    return out


def switch_of(state: dict, rule: SwitchRule) -> int | None:
    """The step the small model starts at, as far as the carry knows (None: the large model goes on)."""
    if rule.step is not None:
        return rule.step
    return int(state[SWITCH][0]) if SWITCH in state else None


def record(state: dict, rule: SwitchRule, steps: int) -> dict:
    """render.json's account of the switch: the step, the rule, and why it fell there."""
    s = switch_of(state, rule)
    if rule.step is not None:
        why = f"fixed at step {rule.step}"
    elif s is None:
        s, why = rule.max_step, reason(rule.max_step - 1, None, None, rule)
    else:
        before, change = (float(v) for v in state[REASON])
        before = None if math.isnan(before) else before
        change = None if math.isnan(change) else change
        why = reason(int(state[SWITCH][1]), before, change, rule)
    return {"switch_step": min(s, steps), "rule": rule.describe(), "why": why}


class ModelPair:
    """The large and the small model as one backend: `small` predicts the steps from `cond.model_switch`
    on, `large` the ones before; everything else (conditioning, VAE, schedule, steps, `finish`) is `large`'s."""

    predict = GuidedPredict.predict  # the guided sum of this pair's `predict_branch` (nothing else inherited)

    def __init__(self, large, small):
        self.large, self.small = large, small

    def __getattr__(self, name):
        return getattr(self.large, name)

    @property
    def forwards(self) -> int:
        return self.large.forwards + self.small.forwards

    def model_at(self, index: int, cond):
        s = cond.model_switch
        return self.small if s is not None and index >= s else self.large

    def predict_branch(self, x, steps, index, cond, branch, image_latent=None, place=None):
        return self.model_at(index, cond).predict_branch(x, steps, index, cond, branch, image_latent, place=place)


# -- the pair's configs -------------------------------------------------------------------------------
IGNORED = ("_name_or_path", "_diffusers_version", "transformers_version", "torch_dtype", "dtype", "architectures",
           "_commit_hash")


def _public(cfg: dict | None) -> dict | None:
    return None if cfg is None else {k: v for k, v in cfg.items() if k not in IGNORED}


def check(large: dict, small: dict, large_info, small_info) -> None:
    """Refuse a pair that cannot share one trajectory, naming what differs: the family, the VAE (and with it
    the latent space), the text and image encoders (their conditioning is computed once, by the large
    model's), image- against text-to-video."""
    if small_info.family != large_info.family:
        raise SpecError("render_model", f"the render model is {small_info.family}, the model {large_info.family}: "
                                        "SRDiffusion pairs two models of one family")
    for part, what in SHARED:
        what = "VAE (the latent space)" if part == "vae" else what
        a, b = _public(large.get(part)), _public(small.get(part))
        if a != b:
            keys = sorted(k for k in set(a or {}) | set(b or {}) if (a or {}).get(k) != (b or {}).get(k))
            raise SpecError("render_model", f"the render model's {what} differs from the model's ({', '.join(keys[:4])}"
                                            f"{'...' if len(keys) > 4 else ''}): the pair must share it")
    if small_info.guidance_embedded != large_info.guidance_embedded:
        raise SpecError("render_model", "one model of the pair is guidance-distilled and the other is not")


SHARED = (("vae", "VAE"), ("text_encoder", "text encoder"), ("text_encoder_2", "second text encoder"),
          ("image_encoder", "image encoder"))


def fingerprint(folder: str, samples: int = 16, chunk: int = 1 << 16) -> str | None:
    """A cheap identity of a component folder's weights: each weight file's name and size and the SHA-256 of
    `samples` evenly spaced `chunk`-byte pieces of it (an 11 GB text encoder hashes in milliseconds; two
    trainings of one architecture differ in every piece). None where the folder holds no weights."""
    import hashlib
    import os

    if not os.path.isdir(folder):
        return None
    h, found = hashlib.sha256(), False
    for name in sorted(os.listdir(folder)):
        if not name.endswith((".safetensors", ".bin")):
            continue
        found, path = True, os.path.join(folder, name)
        size = os.path.getsize(path)
        h.update(f"{name}:{size}".encode())
        with open(path, "rb") as f:
            for i in range(samples):
                f.seek(max(0, size - chunk) * i // max(1, samples - 1))
                h.update(f.read(chunk))
    return h.hexdigest() if found else None


def unshared(large_folder: str, small_folder: str) -> list[str]:
    """The components whose configs the pair shares (`check`) but whose weights differ between the two
    folders. The pair runs the large model's (`ModelPair`), so a render model trained with other ones
    renders in a latent space or conditioning it never learned: worth a note, not a refusal (one VAE saved
    at two precisions, say, is still the same VAE)."""
    import os

    out = []
    for part, what in SHARED:
        a, b = (fingerprint(os.path.join(f, part)) for f in (large_folder, small_folder))
        if a is not None and b is not None and a != b:
            out.append(what)
    return out


def fresh_at(expert_switches: tuple[int, ...], models: dict | None, start: int,
             refine_steps: int) -> tuple[int, ...]:
    """The refinement steps (0-based from schedule index `start`) at which the region cache starts afresh:
    a two-expert model's switches (`experts.switches`) and SRDiffusion's, where it falls inside the
    refinement."""
    s = models["switch_step"] - start if models else 0
    return tuple(sorted(set(expert_switches) | ({s} if 0 < s < refine_steps else set())))


def weights_note(model_folder: str, render_folder: str) -> str | None:
    """A sentence where the render model's shared components hold other weights than the model's."""
    parts = unshared(model_folder, render_folder)
    if not parts:
        return None
    return (f"the render model's {' and '.join(parts)} weights differ from the model's: the pair runs the model's, "
            "so the render model predicts on conditioning it was not trained with, unless the two are the same "
            "weights saved differently")


def note(models: dict | None, steps: int, start: int) -> str | None:
    """Which model predicts which steps of which stage, in a sentence (None: one model)."""
    if not models:
        return None
    s, last = models["switch_step"], steps - 1
    sketch = (f"SRDiffusion switches to the render model at step {s} of {steps} ({models['why']}): the model "
              f"predicts the sketch's {_span(0, s - 1)}" + (f", the render model {_span(s, last)}" if s < steps else ""))
    if s <= start:
        return f"{sketch}; the refinement ({_span(start, last)}) runs the render model alone"
    if s >= steps:
        return f"{sketch}; the refinement ({_span(start, last)}) runs the model alone"
    return (f"{sketch}; the refinement runs the model for {_span(start, s - 1)} and the render model for "
            f"{_span(s, last)}, the tile cache starting afresh at the switch")


def _span(a: int, b: int) -> str:
    return f"step {a}" if a == b else f"steps {a}-{b}"
