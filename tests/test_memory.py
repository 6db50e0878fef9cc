"""Memory estimate, the pre-flight refusal of renders that cannot fit, and out-of-memory failures inside a
stage turned into a clear error that keeps the finished stages."""

import json
import os
import pickle
import subprocess
import sys
import textwrap
import time

import pytest

import supergen
from supergen import RenderSpec, memory
from supergen.backends import model_info
from supergen.executor import prepare
from supergen.memory import InsufficientMemory

HUGE = dict(prompt="x", model="tiny", width=16384, height=16384, frames=1025)


def _est(model, **kw):
    return memory.estimate(prepare(RenderSpec(prompt="x", model=model, **kw), check_memory=False))


@pytest.mark.parametrize("model,sizes,frames", [
    ("tiny", [64, 96, 128, 192, 256, 272, 384, 512, 1024, 2048], [1, 5, 9, 17, 33, 65]),
    ("world", [64, 128, 256, 496, 512, 528, 768, 1024, 2048], [1, 5, 17, 33, 81]),
])
def test_estimate_is_monotone_in_width_height_and_frames(model, sizes, frames):
    """Every stage's bytes never fall as the width, the height or the frames grow (across the sizes where the
    VAE switches from one tile to tiling), and the peak grows strictly when the canvas doubles. The sketch
    is pinned: the default one keeps the target's aspect ratio at the native area, so its own cost is no
    function of the output size; the peak still never falls with it."""
    def stages(sketch=True, **kw):
        pin = dict(sketch_width=64, sketch_height=64) if sketch else {}
        return memory.estimate(prepare(RenderSpec(prompt="x", model=model, **pin, **kw), check_memory=False))["stages"]

    for axis in ("width", "height"):
        other = "height" if axis == "width" else "width"
        prev = prev_peak = None
        for v in sizes:
            cur = stages(**{axis: v, other: 256, "frames": 9})
            peak = max(stages(sketch=False, **{axis: v, other: 256, "frames": 9}).values())
            if prev is not None:
                assert all(cur[s] >= prev[s] for s in memory.STAGES), (axis, v, prev, cur)
                assert peak >= prev_peak, (axis, v)
            prev, prev_peak = cur, peak
    prev = None
    for f in frames:
        cur = stages(width=256, height=256, frames=f)
        if prev is not None:
            assert all(cur[s] >= prev[s] for s in memory.STAGES), (f, prev, cur)
        prev = cur
    small, big = (_est(model, width=n, height=n, frames=17)["peak_bytes"] for n in (512, 1024))
    assert big > small


def test_estimate_shape_and_big_terms():
    """The return shape storage/flows record, and the video term is what the formula says it is."""
    e = _est("tiny", width=1024, height=512, frames=9)
    assert set(e) >= {"version", "device", "attention", "stages", "host", "peak_stage", "peak_bytes", "terms", "inputs"}
    assert set(e["stages"]) == set(memory.STAGES) == set(e["host"]) == set(e["terms"])
    assert e["peak_bytes"] == e["stages"][e["peak_stage"]] == max(e["stages"].values())
    assert e["device"] == "cpu" and all(v == 0 for v in e["host"].values())
    for st, t in e["terms"].items():
        assert sum(t["bytes"].values()) == e["stages"][st] and isinstance(t["phase"], str)
    assert e["inputs"]["video_bytes"] == 3 * 9 * 1024 * 512 * 4
    assert e["terms"]["upscale"]["bytes"]["weights"] > 0
    json.dumps(e)  # JSON-able, for render.json


def test_estimate_reads_configs_only():
    """World's parameters come from the safetensors headers (exact, no tensor read); the embedded tiny
    model has no files, so its come from the configs' closed forms."""
    w = _est("world")["inputs"]
    assert w["params_source"] == {"transformer": "safetensors", "text_encoder": "safetensors", "vae": "safetensors"}
    assert 3.8e6 < w["params"]["transformer"] < 4.0e6  # the 3.90 M parameters docs/benchmarks.md lists
    t = _est("tiny")["inputs"]
    assert t["params_source"]["transformer"] == "config" and t["params"]["transformer"] > 0


def _broken_copy(tiny_dir, tmp_path):
    from conftest import broken_copy

    return broken_copy(tiny_dir("wan-t2v"), tmp_path / "broken")


def test_a_canvas_that_cannot_fit_is_refused_quickly_before_weights_load(tiny_dir, tmp_path):
    """A folder whose weights are unreadable gets the memory refusal, not a load error: the check runs on
    configs alone, before any weight loads, and says the stage, both sizes and what to lower."""
    broken = _broken_copy(tiny_dir, tmp_path)
    for model in ("tiny", broken):
        t0 = time.perf_counter()
        with pytest.raises(InsufficientMemory) as info:
            supergen.render(RenderSpec(**{**HUGE, "model": model}))
        assert time.perf_counter() - t0 < 2.0
        e = info.value
        msg = str(e)
        assert isinstance(e, supergen.SupergenError) and isinstance(e, MemoryError) and not e.oom
        assert e.stage == "upscale" and e.needed > e.available > 0
        assert f"{e.needed / 2**30:.2f} GiB" in msg and f"{e.available / 2**30:.2f} GiB" in msg
        assert "upscale stage" in msg and "16384x16384" in msg and "1025" in msg
        assert "SUPERGEN_MEMORY_CHECK=off" in msg and "frames" in msg
    # the same spec with sane sizes gets past the check and fails loading the garbage weights
    with pytest.raises(supergen.BackendError, match="loading"):
        supergen.render(RenderSpec(prompt="x", model=broken, width=128, height=128, frames=5, steps=2))


def test_refusal_names_the_term_to_lower():
    """A huge VAE tile is the thing to lower when its activations dominate."""
    spec = prepare(RenderSpec(prompt="x", model="world", width=4096, height=4096, frames=17, vae_tile=4096),
                   check_memory=False)
    e = memory.estimate(spec)
    t = e["terms"]["export"]
    assert t["phase"] == "decode tiles" and t["bytes"]["VAE activations"] > t["bytes"]["decoded video"]
    assert memory._advice(spec, e["terms"]["export"]["bytes"]).startswith("lower vae_tile (4096 px")


def test_cli_refusal_writes_no_store(tmp_path, capsys):
    from flows.cli import main

    out = tmp_path / "r"
    assert main(["render", "--prompt", "x", "--model", "tiny", "--width", "16384", "--height", "16384",
                 "--frames", "1025", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "upscale stage needs an estimated" in err and "GiB" in err
    assert not out.exists()


def test_override_lets_the_spec_through_validation(monkeypatch):
    monkeypatch.setenv(memory.ENV, "off")
    spec = prepare(RenderSpec(**HUGE))
    assert (spec.width, spec.height, spec.frames) == (16384, 16384, 1025)
    assert memory.check(spec) is None
    monkeypatch.setenv(memory.ENV, "on")
    with pytest.raises(InsufficientMemory):
        memory.check(spec, model_info("tiny"))


def test_error_survives_pickling():
    e = InsufficientMemory("the upscale stage needs ...", "upscale", 10, 5, "cpu", oom=True)
    e2 = pickle.loads(pickle.dumps(e))
    assert (str(e2), e2.stage, e2.needed, e2.available, e2.device, e2.oom) == (str(e), "upscale", 10, 5, "cpu", True)


def test_other_errors_pass_through_the_guard():
    spec = prepare(RenderSpec(prompt="x", model="tiny"))
    with pytest.raises(ValueError, match="not memory"):
        with memory.guard("refine", spec):
            raise ValueError("not memory")
    with memory.guard("refine", spec):
        pass


def test_allocator_messages_are_recognised():
    """The messages PyTorch's allocators raise (CPU and CUDA), and nothing else."""
    assert memory.is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                                      "allocate memory: you tried to allocate 1811939328 bytes."))
    assert memory.is_oom(RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB"))
    assert memory.is_oom(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert memory.is_oom(MemoryError())
    assert not memory.is_oom(RuntimeError("shape mismatch"))
    assert not memory.is_oom(InsufficientMemory("refused", "upscale"))


OOM_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import torch
    from supergen import RenderSpec
    from supergen.backends import load_backend
    from supergen.executor import prepare, render
    from supergen.memory import InsufficientMemory

    torch.set_num_threads(2)

    class Sink:  # an in-memory render store
        def __init__(self):
            self.stages, self.ckpt = {}, None
        def load_stage(self, name):
            return self.stages.get(name)
        def save_stage(self, name, t, record=None):
            self.stages[name] = t.clone()
        def stage_record(self, name):
            return None
        def save_checkpoint(self, ckpt):
            self.ckpt = ckpt
        def load_checkpoint(self):
            return self.ckpt
        def input_image(self):
            return None

    class Stop(Exception):
        pass

    class StopAtUpscale:
        def start(self, stage, total):
            if stage == "upscale":
                raise Stop
        def advance(self, n=1):
            pass
        def finish(self):
            pass

    def vm_size():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

    spec = prepare(RenderSpec(prompt="a red circle", model="tiny", width=4096, height=4096, frames=9, steps=2,
                              refine_steps=1), check_memory=False)
    be, sink = load_backend(spec.model), Sink()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    # 1 GiB more address space: plenty for the 64x64 sketch, not for the 1.7 GiB bicubic 4096x4096 clip
    resource.setrlimit(resource.RLIMIT_AS, (vm_size() + 2**30, hard))
    out = {}
    try:
        render(spec, backend=be, sink=sink)
    except InsufficientMemory as e:
        out = dict(message=str(e), stage=e.stage, needed=e.needed, available=e.available, oom=e.oom,
                   suppressed=e.__suppress_context__, cause=repr(e.__cause__))
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    out["saved"] = sorted(sink.stages)
    calls = be.forwards
    try:  # resume: the saved sketch is loaded, not generated again
        render(spec, backend=be, sink=sink, progress=StopAtUpscale())
    except Stop:
        pass
    out["sketch_forwards_on_resume"] = be.forwards - calls
    print(json.dumps(out))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_a_real_allocator_failure_becomes_a_clear_error_and_keeps_saved_stages(tmp_path):
    """A genuine CPU allocation failure (the address space capped with RLIMIT_AS in a child process) in the
    upscale stage becomes InsufficientMemory naming the stage, the estimate and the memory left, without
    the allocator's traceback; the sketch saved before it is reused when the render resumes. The check is
    off (SUPERGEN_MEMORY_CHECK=off: the user says it fits) or it would have refused the render up front."""
    env = {**os.environ, memory.ENV: "off", "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "2"}
    p = subprocess.run([sys.executable, "-c", OOM_SCRIPT], capture_output=True, text=True, env=env, timeout=600,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["oom"] is True and r["stage"] == "upscale", r
    assert "ran out of memory in the upscale stage" in r["message"] and "can't allocate memory" in r["message"]
    assert f"estimated peak {r['needed'] / 2**30:.2f} GiB" in r["message"]
    assert f"{r['available'] / 2**30:.2f} GiB available" in r["message"]
    assert r["needed"] > r["available"]  # the capped address space is what the error reports as available
    assert r["suppressed"] and r["cause"] == "None"  # no raw allocator traceback chained on
    assert r["saved"] == ["sketch"]
    assert r["sketch_forwards_on_resume"] == 0
