"""Model backends: one file per family behind the small protocol in `base.py`.

`model_info(model)` reads configs only (no weights), so a spec can be fully checked before loading;
`load_backend(model, device, dtype)` then loads the weights and wraps the pipeline.
"""

from __future__ import annotations

from .. import models
from . import tiny
from .base import Backend, Conditioning, ModelInfo
from .loading import backend_class, load_pipeline, read_configs

__all__ = ["Backend", "Conditioning", "ModelInfo", "model_configs", "model_info", "model_identity", "model_problem",
           "schedule", "expert_plan", "load_backend", "backend_for_pipeline", "model_folder"]


def _configs(model: str) -> dict:
    if model in tiny.EMBEDDED:
        # The embedded models' configs are fixed by code and kept as JSON beside it
        if model not in _EMBEDDED_CONFIGS:
            _EMBEDDED_CONFIGS[model] = tiny.embedded_configs(model)
        return _EMBEDDED_CONFIGS[model]
    return read_configs(models.folder(model) or model)


_EMBEDDED_CONFIGS: dict[str, dict] = {}


def model_folder(model: str) -> str | None:
    """A local folder holding the model's files: the packaged one, the given folder, or the hub cache's
    snapshot (never downloads); None for a model built in code or not on this machine."""
    import os

    if model in tiny.EMBEDDED:  # built in code: no files
        return None
    folder = models.folder(model) or (model if os.path.isdir(model) else None)
    if folder is not None:
        return folder
    if model.count("/") == 1 and not model.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(model, local_files_only=True)
        except Exception:  # not cached, or no huggingface_hub
            return None
    return None


def model_configs(model: str) -> dict:
    """The model's configs (model_index.json, the transformer's, VAE's and scheduler's, the sidecar):
    small JSON files only, no weights."""
    return _configs(model)


def model_identity(model: str) -> str:
    """What makes `model` this model, comparable across hosts: a hash of its configs and, for a folder, of
    its files' names and sizes (not their bytes: a 14B model's weights would take minutes to hash)."""
    import hashlib
    import json
    import os

    folder = models.folder(model) or (model if os.path.isdir(model) else None)
    files = []
    for d, dirs, names in os.walk(folder) if folder else ():
        dirs[:] = [x for x in dirs if not x.startswith(".")]  # a hub download's .cache differs host to host
        files += [(os.path.relpath(os.path.join(d, f), folder), os.path.getsize(os.path.join(d, f)))
                  for f in names if not f.startswith(".")]
    files.sort()
    text = json.dumps({"configs": _configs(model), "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_problem(model: str, identity: str) -> str | None:
    """Why this host (a cluster worker's) cannot load `model` as the submitting host sees it, whose
    `model_identity` is `identity`; None when it can. Hosts share no disk unless told: a folder must be at
    the same path on every worker host."""
    import os

    from ..errors import SupergenError

    if os.path.isabs(model) and not os.path.isdir(model):
        return (f"model folder {model} is not on this host: copy it to the same path on every worker host "
                "(or mount one shared folder there)")
    try:
        here = model_identity(model)
    except (SupergenError, OSError) as e:
        return f"cannot read model {model!r} here: {e}"
    if here != identity:
        return (f"model {model!r} differs here from the submitting host's (other configs or files): every worker "
                "host needs the same copy")
    return None


def model_info(model: str) -> ModelInfo:
    c = _configs(model)
    return backend_class(c["index"]["_class_name"]).info_from_configs(c)


def schedule(model: str, steps: int):
    """The timesteps of an N-step schedule from the model's scheduler config alone (no weights): what the
    loaded backend's `timesteps(steps)` gives (with the pipeline's own sigmas where it has them)."""
    import diffusers

    from .loading import fresh_scheduler

    c = _configs(model)
    name = c["scheduler"].get("_class_name") or c["index"]["scheduler"][1]
    sigmas = getattr(backend_class(c["index"]["_class_name"]), "pipeline_sigmas", lambda n: None)(steps)
    return fresh_scheduler(getattr(diffusers, name).from_config(c["scheduler"]), steps, sigmas).timesteps


def expert_plan(model: str, steps: int, start: int) -> tuple[tuple[int, ...], str | None]:
    """A two-expert model's refinement steps where the cache starts afresh, and the note for the user, for a
    refinement from schedule index `start` (`supergen.experts`), from the configs; ((), None) for one model,
    whose schedule is never built (the driver and the command line need no diffusers scheduler then)."""
    from .. import experts

    boundary = model_info(model).expert_boundary
    if boundary is None:
        return (), None
    ts = schedule(model, steps)
    return experts.switches(ts, boundary, start), experts.note(ts, boundary, start)


SHARED = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "image_encoder", "image_processor",
          "feature_extractor")  # what SRDiffusion's render model takes from the model (`supergen.pair.check`)


def load_backend(model: str, device: str = "cpu", dtype: str = "float32", compile: bool = False,
                 vae_dtype: str = "float32", lora: tuple[str, ...] = (), share: Backend | None = None) -> Backend:
    """The backend of `model`; `lora`'s adapters fused into its transformer (`supergen.lora`, in float32,
    before the cast); with `compile`, its transformers compile at their first forward (`supergen.compiled`).
    `share`: a loaded backend whose VAE and encoders this one uses instead of loading its own (SRDiffusion's
    render model: one copy of the text encoder, which for Wan is larger than the 1.3B transformer)."""
    if model in tiny.EMBEDDED:
        pipe = tiny.build(tiny.EMBEDDED[model])
    else:
        c = _configs(model)
        given = {} if share is None else {k: getattr(share.pipe, k) for k in SHARED
                                          if c["index"].get(k) and getattr(share.pipe, k, None) is not None}
        pipe = load_pipeline(models.folder(model) or model, c["index"]["_class_name"], **given)
        pipe.set_progress_bar_config(disable=True)
    if lora:
        from ..lora import apply

        apply(pipe, lora)
    be = backend_for_pipeline(pipe, device, dtype, sidecar=None if model not in tiny.EMBEDDED else tiny.sidecar(),
                              configs=_configs(model), vae_dtype=vae_dtype)
    if compile:
        from ..compiled import compile_backend

        compile_backend(be)
    return be


def backend_for_pipeline(pipe, device: str = "cpu", dtype: str = "float32", sidecar=None, configs=None,
                         vae_dtype: str = "float32") -> Backend:
    """Wrap an already built pipeline (tests, notebooks)."""
    c = configs or tiny.configs(pipe)
    if sidecar is not None:
        c = {**c, "sidecar": sidecar}
    cls = backend_class(type(pipe).__name__)
    return cls(pipe, cls.info_from_configs(c), device=device, dtype=dtype, vae_dtype=vae_dtype)
