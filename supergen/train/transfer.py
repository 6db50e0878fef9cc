"""Starting a world transformer of another shape from a trained one's weights.

Two variants of the world model begin where the trained text-to-video model is, not from noise:
* the image-to-video model (Wan 2.1 I2V's layout: 4 mask + 16 image-latent channels concatenated to the
  noisy latent) takes every weight as it is, its patch embedding widened with zero weights for the new
  input channels, so at step 0 it predicts exactly what the text-to-video model does and learns only
  how to use the image;
* SRDiffusion's render model (fewer blocks) takes evenly spaced blocks of the large one, first and last
  included, with everything around them: the usual start for a pruned transformer, far ahead of a random one.
"""

from __future__ import annotations

import re

import torch

BLOCK = re.compile(r"^blocks\.(\d+)\.(.*)$")


def kept_blocks(have: int, want: int) -> list[int]:
    """`want` evenly spaced block indices of `have`, the first and the last included."""
    if not 0 < want <= have:
        raise ValueError(f"cannot start {want} blocks from {have}")
    return [0] if want == 1 else [round(i * (have - 1) / (want - 1)) for i in range(want)]


def adapt(trained: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict for `model` from `trained` (the same architecture, possibly shallower and with more
    input channels); refuses any other difference."""
    fresh = model.state_dict()
    have = 1 + max((int(m.group(1)) for k in trained if (m := BLOCK.match(k))), default=-1)
    want = 1 + max((int(m.group(1)) for k in fresh if (m := BLOCK.match(k))), default=-1)
    source = kept_blocks(have, want)
    out = {}
    for name, new in fresh.items():
        m = BLOCK.match(name)
        key = f"blocks.{source[int(m.group(1))]}.{m.group(2)}" if m else name
        if key not in trained:
            raise ValueError(f"the trained transformer has no {key!r}")
        old = trained[key].to(new.dtype)
        if old.shape == new.shape:
            out[name] = old.clone()
        elif name == "patch_embedding.weight" and old.shape[0] == new.shape[0] and old.shape[2:] == new.shape[2:] \
                and old.shape[1] < new.shape[1]:
            grown = torch.zeros_like(new)
            grown[:, : old.shape[1]] = old  # the noisy latent's channels come first, the condition's after
            out[name] = grown
        else:
            raise ValueError(f"{name}: trained {tuple(old.shape)}, wanted {tuple(new.shape)}")
    return out
