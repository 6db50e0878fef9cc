"""SRDiffusion (`supergen.pair`): the model predicts the steps before the switch, the render model the rest,
in the sketch and the refinement; the adaptive switch rule; pairs that cannot share a trajectory refused."""

import copy
import json
import math
import shutil

import pytest
import torch

import supergen
from supergen import RenderSpec, SpecError, pair, sketch
from supergen.backends import load_backend, tiny
from supergen.executor import load_models, prepare

from test_method import _truncated


@pytest.fixture(scope="module")
def pair_dirs(tiny_dir, tmp_path_factory):
    """(model, render model): tiny Wan, and the same pipeline with a one-layer transformer of its own."""
    return tiny_dir("wan-t2v"), tiny.save_render_model("wan-t2v", str(tmp_path_factory.mktemp("render-model")))


def _spec(pair_dirs, **kw):
    big, small = pair_dirs
    return RenderSpec(**{"prompt": "a red circle moving left on a blue background", "model": big,
                         "render_model": small, "width": 128, "height": 96, "frames": 5, "steps": 8,
                         "refine_steps": 5, "guidance": 4.5, "seed": 3, "checkpoint_every": 0, **kw})


def test_a_fixed_switch_is_the_two_stock_pipelines_chained(pair_dirs):
    """Switch at s: the sketch is the model's stock pipeline for steps < s, continued by the render model's
    stock pipeline from its latent for steps >= s, bit for bit, and each model ran only its steps."""
    spec = prepare(_spec(pair_dirs, switch_step=3))
    both = load_models(spec)
    assert both.small.pipe.text_encoder is both.large.pipe.text_encoder and both.small.pipe.vae is both.large.pipe.vae
    ours, models = sketch.sketch(both, spec, None)
    assert models == {"switch_step": 3, "rule": "fixed at step 3", "why": "fixed at step 3"}
    assert both.large.forwards == 2 * 3 and both.small.forwards == 2 * (spec.steps - 3)

    big, small = (load_backend(m).pipe for m in pair_dirs)
    args = dict(prompt=spec.prompt, negative_prompt=spec.negative_prompt, height=spec.sketch_height,
                width=spec.sketch_width, num_frames=spec.frames, num_inference_steps=spec.steps,
                guidance_scale=spec.guidance, output_type="latent")

    def stop_at_switch(p, i, t, kw):
        p._interrupt = i == 3 - 1  # the steps after the switch are the render model's
        return kw

    first = sketch.first(both, spec, sketch.conditioning(both, spec, None))[0]
    half = big(latents=first.clone(), callback_on_step_end=stop_at_switch, **args).frames
    small = copy.copy(small)
    small.scheduler = _truncated(small.scheduler, 3)
    stock = small(latents=half.clone(), **args).frames
    assert not torch.equal(half, first) and not torch.equal(stock, half)
    assert torch.equal(ours, stock)


def _growing(changes):
    """Outputs whose relative change at step i is tanh^-1(changes[i - 1]): o_i = o_{i-1} (1 + r_i)."""
    out = [torch.full((1, 2, 1, 3, 3), 2.0)]
    for d in changes:
        out.append(out[-1] * (1 + math.atanh(d)))
    return out


@pytest.mark.parametrize("changes,lo,hi,step,why", [
    ([0.5, 0.3, 0.295, 0.29], 1, 30, 4, "self-diff 0.005 at step 3"),  # 0.3 -> 0.295: the change settles
    ([0.5, 0.3, 0.295, 0.29], 4, 30, 5, "self-diff 0.005 at step 4"),  # not before switch_min
    ([0.3, 0.4, 0.5, 0.6, 0.7], 1, 30, 30, "step 30 is the latest"),  # growing changes never switch
    ([0.5, 0.2, 0.1, 0.05], 1, 3, 3, "step 3 is the latest"),  # drops of more than the threshold: the max
])
def test_the_adaptive_rule_on_recorded_outputs(changes, lo, hi, step, why):
    rule = pair.SwitchRule(None, 0.01, lo, hi)
    rec = pair.decide(_growing(changes), rule)
    assert rec["switch_step"] == min(step, len(changes) + 1) and why in rec["why"]


def test_the_adaptive_sketch_decides_as_the_rule_on_its_outputs(pair_dirs):
    """The sketch's switch is the rule applied to the model's own guided outputs, step by step."""
    spec = prepare(_spec(pair_dirs, switch_threshold=0.5))
    both = load_models(spec)
    cond = sketch.conditioning(both, spec, None)
    carry, outputs = sketch.first(both, spec, cond), []
    for i in range(spec.steps):
        lean = sketch.for_branches(carry)  # what a branch on another worker receives: no rule state but the switch
        assert set(lean[1]) <= {pair.SWITCH} and lean[0] is carry[0]
        outs = [sketch.branch(both, spec, cond, i, lean, b) for b in range(cond.branches)]
        if pair.switch_of({k: v for k, v in carry[1].items() if k.startswith("pair_")}, pair.SwitchRule.from_spec(spec)) is None:
            outputs.append(cond.guide(outs))
        carry = sketch.advance(both, spec, cond, i, carry, outs)
    rec = sketch.models(spec, carry[1])
    assert rec == pair.decide(outputs, pair.SwitchRule.from_spec(spec))
    assert spec.switch_min <= rec["switch_step"] <= spec.switch_max


def test_the_render_model_refines_from_the_switch(pair_dirs):
    """In the refinement the tiles before the switch are the model's, from it the render model's: a switch
    after the refinement's start changes the video, one at the last step less than one at its start."""
    r = supergen.render(_spec(pair_dirs, switch_step=5))
    assert r.models["switch_step"] == 5 and "render model for steps 5-7" in " ".join(r.warnings)
    assert "weights differ" not in " ".join(r.warnings)  # the render model's VAE and encoder are the model's
    assert r.report()["models"] == r.models
    alone = supergen.render(_spec(pair_dirs, render_model=None))
    assert alone.models is None and not torch.equal(r.latent, alone.latent)


@pytest.mark.parametrize("change,words", [
    ("family", "pairs two models of one family"),
    ("vae", "VAE \\(the latent space\\) differs"),
    ("text_encoder", "text encoder differs"),
])
def test_a_pair_that_cannot_share_a_trajectory_is_refused_from_configs(change, words, pair_dirs, tiny_dir, tmp_path):
    big, small = pair_dirs
    if change == "family":
        other = tiny_dir("cogvideox15-t2v")
    else:
        other = shutil.copytree(small, tmp_path / "other")
        cfg = other / change / "config.json"
        data = json.loads(cfg.read_text())
        key = "base_dim" if change == "vae" else "d_ff"
        cfg.write_text(json.dumps({**data, key: data[key] * 2}))
        for f in (other / change).glob("*.safetensors"):
            f.write_bytes(b"not weights")  # refused from the configs: the weights are never read
    with pytest.raises(SpecError, match=words):
        prepare(_spec(pair_dirs, render_model=str(other)), here=False)


def test_a_render_model_trained_with_other_shared_weights_is_noted(pair_dirs, tmp_path):
    """Configs alike, weights not: the pair runs the model's VAE, so the render says the render model's VAE
    is not the one it runs with (a note: one VAE saved at another precision is still the same VAE)."""
    from diffusers import AutoencoderKLWan

    big, small = pair_dirs
    other = shutil.copytree(small, tmp_path / "other")
    torch.manual_seed(7)
    AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(str(other / "vae"))).save_pretrained(str(other / "vae"))
    assert pair.unshared(big, small) == [] and pair.unshared(big, str(other)) == ["VAE"]
    r = supergen.render(_spec(pair_dirs, render_model=str(other), steps=2, refine_steps=1))
    assert "render model's VAE weights differ from the model's" in " ".join(r.warnings)


@pytest.mark.parametrize("kw,field", [({"lora": ("adapter.safetensors",)}, "lora"),
                                      ({"switch_step": 3, "render_model": None}, "switch_step"),
                                      ({"switch_max": 9}, "switch_max"), ({"switch_min": 6, "switch_max": 5}, "switch_min"),
                                      ({"switch_step": 9}, "switch_step")])
def test_switch_settings_are_checked(kw, field, pair_dirs):
    with pytest.raises(SpecError) as e:
        prepare(_spec(pair_dirs, **kw), here=False)
    assert e.value.field == field


def test_workers_hold_the_render_models_transformer_beside_the_model(pair_dirs):
    """The memory estimate counts the render model's transformer (its VAE and encoders are the model's)."""
    from supergen import memory

    one = memory.estimate(prepare(_spec(pair_dirs, render_model=None), here=False))
    two = memory.estimate(prepare(_spec(pair_dirs), here=False))
    assert set(two["inputs"]["params"]) - set(one["inputs"]["params"]) == {"render_transformer"}
    assert two["inputs"]["params"]["render_transformer"] > 0 and two["peak_bytes"] > one["peak_bytes"]


def test_the_pair_is_the_model_but_for_its_predictions(pair_dirs, tiny_dir):
    """Everything but `predict_branch` is the model's: its `finish` (the image frame an I2V model writes),
    VAE, schedule; the switch rule's carry keeps the previous output on the host, whatever the device."""
    spec = prepare(_spec(pair_dirs))
    both = load_models(spec)
    assert both.finish.__self__ is both.large and both.decode.__self__ is both.large
    state = pair.advance_rule({}, 0, torch.ones(1, 2, 1, 2, 2), pair.SwitchRule(None, 0.01, 1, 5))
    assert state[pair.PREV].device.type == "cpu"
