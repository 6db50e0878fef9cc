"""Resumable training state in files of at most 16 MiB (what one device call may return per file).

A checkpoint folder holds `state.json` (step, seconds, the run log) and safetensors shards of named
tensors. Adam's moments are not kept: with beta2 = 0.99 they re-estimate within a few hundred steps, and
leaving them out halves what each device call must carry back and forth.
"""

from __future__ import annotations

import json
import os

import torch

MAX_SHARD = 15 * 2**20


def save_tensors(folder: str, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    shards, size = [{}], 0
    for name, t in tensors.items():
        t = t.detach().to("cpu", copy=True).contiguous()  # a copy: tied weights (UMT5's embeddings) share memory
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > MAX_SHARD:
            shards.append({})
            size = 0
        shards[-1][name], size = t, size + nbytes
    for index, shard in enumerate(shards):  # atomic: a reader never sees half a file
        path = os.path.join(folder, f"{prefix}-{index}.safetensors")
        save_file(shard, path + ".tmp")
        os.replace(path + ".tmp", path)


def load_tensors(folder: str, prefix: str) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    names = sorted(f for f in os.listdir(folder) if f.startswith(prefix + "-") and f.endswith(".safetensors")) \
        if os.path.isdir(folder) else []
    if not names:
        return None
    out = {}
    for name in names:
        out.update(load_file(os.path.join(folder, name)))
    return out


def read_state(folder: str) -> dict:
    path = os.path.join(folder, "state.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_state(folder: str, state: dict) -> None:
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, "state.json.tmp")
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, os.path.join(folder, "state.json"))
