"""LoRA adapters on the model's transformer: `--lora PATH[:SCALE]`, repeatable.

An adapter is checked against the model before anything loads: its low-rank pairs must name modules of
the transformer (built from its config on the meta device: no memory, no weights) with matching shapes.
It then loads through diffusers' LoRA loader of the model's pipeline, is fused into the weights at its
scale and unloaded, so every tile forward (compiled or not) runs the plain model, and every worker that
loads the same files fuses the same weights. render.json records each file's SHA-256.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

from .errors import SpecError

WEIGHTS = "pytorch_lora_weights.safetensors"  # the name diffusers' save_lora_weights gives a folder's file


@dataclass(frozen=True)
class Lora:
    path: str  # a .safetensors file, or a folder holding `WEIGHTS`
    scale: float = 1.0

    @property
    def file(self) -> str:
        return os.path.join(self.path, WEIGHTS) if os.path.isdir(self.path) else self.path

    def entry(self) -> str:
        return f"{self.path}:{self.scale:g}"


def parse(entry: str) -> Lora:
    """'PATH' or 'PATH:SCALE' (the scale is what follows the last colon when it reads as a number)."""
    if not isinstance(entry, str) or not entry.strip():
        raise SpecError("lora", f"each entry is PATH or PATH:SCALE, got {entry!r}")
    path, _, tail = entry.rpartition(":")
    try:
        scale = float(tail) if path else None
    except ValueError:
        scale = None
    if scale is None:
        return Lora(entry)
    if not math.isfinite(scale):
        raise SpecError("lora", f"the scale of {entry!r} must be a finite number")
    return Lora(path, scale)


def parse_all(entries) -> list[Lora]:
    if not isinstance(entries, (tuple, list)):
        raise SpecError("lora", f"must be a list of PATH[:SCALE] entries, got {type(entries).__name__}")
    return [parse(e) for e in entries]


def normalized(entries) -> tuple[str, ...]:
    """The entries with absolute paths and explicit scales: what a spec records, so that workers started
    elsewhere open the same files."""
    return tuple(Lora(os.path.abspath(x.path), x.scale).entry() for x in parse_all(entries))


def sha256(lora: Lora) -> str:
    h = hashlib.sha256()
    with open(lora.file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def state_dict(pipeline_class: str, lora: Lora) -> dict:
    """The adapter's tensors as the model's LoRA loader reads them (converted to diffusers' names)."""
    import diffusers

    if not os.path.isfile(lora.file):
        raise SpecError("lora", f"no LoRA weights at {lora.file!r} (a .safetensors file, or a folder with {WEIGHTS})")
    loader = getattr(diffusers, pipeline_class)
    if not hasattr(loader, "lora_state_dict"):
        raise SpecError("lora", f"{pipeline_class} has no LoRA loader in diffusers")
    try:
        out = loader.lora_state_dict(lora.file)
    except Exception as e:
        raise SpecError("lora", f"cannot read {lora.file!r} as a LoRA: {type(e).__name__}: {e}") from None
    return out[0] if isinstance(out, tuple) else out


def _meta_transformer(configs: dict):
    import diffusers
    import torch

    cfg = configs["transformer"]
    cls = getattr(diffusers, cfg.get("_class_name") or configs["index"]["transformer"][1])
    with torch.device("meta"):
        return cls.from_config(cfg)


def check(entries, configs: dict) -> None:
    """Refuse, naming the file and the module, an adapter that does not fit the model's transformer."""
    import torch

    loras = parse_all(entries)
    if not loras:
        return
    model = _meta_transformer(configs)
    modules = dict(model.named_modules())
    pipeline = configs["index"]["_class_name"]
    for lora in loras:
        sd = state_dict(pipeline, lora)
        pairs = [k for k in sd if k.endswith(".lora_A.weight")]
        if not pairs:
            raise SpecError("lora", f"{lora.file!r} holds no LoRA pairs (lora_A/lora_B weights)")
        for key in pairs:
            prefix, name = key[: -len(".lora_A.weight")].split(".", 1) if "." in key else ("", key)
            if prefix != "transformer":
                raise SpecError("lora", f"{lora.file!r} adapts {prefix or 'an unknown part'} ({key}); supergen "
                                        "applies LoRAs to the transformer only")
            target = modules.get(name)
            if not isinstance(target, torch.nn.Linear):
                raise SpecError("lora", f"{lora.file!r} adapts {name}, which this model's transformer does not have "
                                        f"as a linear layer: the LoRA was made for another model")
            a, b = sd[key], sd.get(key.replace(".lora_A.", ".lora_B."))
            if b is None or a.shape[1] != target.in_features or b.shape[0] != target.out_features \
                    or a.shape[0] != b.shape[1]:
                got = f"{tuple(a.shape)} and {None if b is None else tuple(b.shape)}"
                raise SpecError("lora", f"{lora.file!r} adapts {name} ({target.in_features} -> {target.out_features}) "
                                        f"with pairs of shapes {got}: the LoRA was made for another model size")


def apply(pipe, entries) -> None:
    """Load every adapter into the pipeline's transformer, fuse each at its scale, and unload the adapter
    layers (the fused weights stay)."""
    loras = parse_all(entries)
    if not loras:
        return
    names = [f"lora{k}" for k in range(len(loras))]
    for name, lora in zip(names, loras):
        pipe.load_lora_weights(lora.file, adapter_name=name)
    pipe.set_adapters(names, [x.scale for x in loras])
    pipe.fuse_lora(components=["transformer"], adapter_names=names, lora_scale=1.0)
    pipe.unload_lora_weights()


def record(entries, files=None) -> list[dict]:
    """render.json's account of the adapters: file, scale and SHA-256 (of `files`, the same adapters' bytes
    elsewhere on this host, where given: a worker's copies from the render store)."""
    loras = parse_all(entries)
    return [{"path": x.file, "scale": x.scale, "sha256": sha256(Lora(f) if f else x)}
            for x, f in zip(loras, files or [None] * len(loras))]
