"""LoRA adapters (`--lora PATH[:SCALE]`, `supergen.lora`): checked against the model before anything loads,
fused into the transformer at their scale, recorded in render.json; a tiny LoRA made in code (peft)."""

import json

import pytest
import torch

import supergen
from flows.cli import main
from supergen import RenderSpec, SpecError
from supergen.backends import load_backend, tiny
from supergen.executor import prepare

BASE = dict(prompt="a red circle moving", model="tiny", width=128, height=128, frames=5, steps=4, refine_steps=2,
            checkpoint_every=0)


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {k: tiny.lora(k, str(root / k), seed=1) for k in ("wan-t2v", "cogvideox15-t2v")}


def test_a_lora_changes_the_render_and_scale_zero_is_the_model(loras):
    plain = supergen.render(RenderSpec(**BASE))
    adapted = supergen.render(RenderSpec(**BASE, lora=(loras["wan-t2v"],)))
    assert (adapted.latent - plain.latent).abs().max() > 1e-2
    zero = supergen.render(RenderSpec(**BASE, lora=(f"{loras['wan-t2v']}:0",)))
    assert torch.equal(zero.latent, plain.latent)  # W + 0 * BA is W, bit for bit


def test_the_fused_adapter_is_the_adapter_at_its_scale(loras):
    """Fusing is an optimisation: the fused transformer computes what peft's adapter layers compute."""
    pipe = tiny.build("wan-t2v")
    pipe.load_lora_weights(loras["wan-t2v"], adapter_name="a")
    pipe.set_adapters(["a"], [0.5])
    fused = load_backend("tiny", lora=(f"{loras['wan-t2v']}:0.5",))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 2, 8, 8, generator=g)
    text = torch.randn(1, 8, 32, generator=g)
    t = torch.tensor([500])
    with torch.no_grad():
        want = pipe.transformer(x, t, text, return_dict=False)[0]
        got = fused.pipe.transformer(x, t, text, return_dict=False)[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not any("lora" in n for n, _ in fused.pipe.transformer.named_modules())  # unloaded once fused


def test_a_lora_for_another_model_is_refused_before_weights_load(loras, tmp_path, capsys):
    with pytest.raises(SpecError) as e:
        prepare(RenderSpec(**BASE, lora=(loras["cogvideox15-t2v"],)))
    assert e.value.field == "lora" and "made for another model" in str(e.value)
    with pytest.raises(SpecError, match="another model size"):  # Wan's modules, the world model's widths
        prepare(RenderSpec(**{**BASE, "model": "world"}, lora=(loras["wan-t2v"],)))
    out = tmp_path / "r"
    args = ["render", "--prompt", "x", "--model", "tiny", "--lora", loras["cogvideox15-t2v"], "--out", str(out)]
    assert main(args + ["--quiet"]) == 2
    assert "`lora`" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("entry,words", [("/no/such/lora.safetensors", "no LoRA weights"),
                                         ("x.safetensors:inf", "finite"), ("", "PATH or PATH:SCALE")])
def test_bad_lora_entries_name_their_cause(entry, words):
    with pytest.raises(SpecError, match=words):
        prepare(RenderSpec(**BASE, lora=(entry,)))


def test_render_json_records_each_adapter(loras, tmp_path, monkeypatch):
    monkeypatch.chdir(loras["wan-t2v"])  # a relative path is recorded as the absolute one workers open
    out = tmp_path / "r"
    assert main(["render", "--prompt", "x", "--model", "tiny", "--width", "128", "--height", "128", "--frames", "5",
                 "--steps", "2", "--refine-steps", "1", "--lora", "pytorch_lora_weights.safetensors:0.7",
                 "--out", str(out), "--quiet"]) == 0
    rec = json.loads((out / "render.json").read_text())
    (entry,) = rec["lora"]
    assert entry["path"] == f"{loras['wan-t2v']}/pytorch_lora_weights.safetensors" and entry["scale"] == 0.7
    assert len(entry["sha256"]) == 64 and rec["spec"]["lora"] == [f"{entry['path']}:0.7"]
