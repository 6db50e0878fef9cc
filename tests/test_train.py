"""The embedded model's training recipe, end to end on the CPU at a few steps: resumable, and its export
loads through the same path as a user's `--model DIR`."""

import json
import os

import pytest

from supergen.train import checkpoint, dit, export, vae


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    a, b, v, d = (str(root / n) for n in ("vae-a", "vae-b", "vae", "dit"))
    vae.train(a, minutes=5, device="cpu", batch=2, eval_clips=2, eval_frames=5, max_steps=2)
    vae.train(b, minutes=5, device="cpu", batch=2, eval_clips=2, eval_frames=5, max_steps=1, seed=1)
    vae.freeze([a, b], v, device="cpu", clips=4)
    dit.train(d, v, minutes=5, device="cpu", batch=2, clips=4, max_steps=2)
    return root


def test_checkpoints_resume_where_they_stopped(trained):
    d = str(trained / "dit")
    dit.train(d, str(trained / "vae"), minutes=5, device="cpu", batch=2, clips=4, max_steps=3)
    state = checkpoint.read_state(d)
    assert state["step"] == 3 and [r["first_step"] for r in state["runs"]] == [0, 2]
    assert all(r["versions"]["torch"] and r["device"] for r in state["runs"])
    sizes = [os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors")]
    assert sizes and max(sizes) <= 16 * 2**20


def test_training_embeds_captions_exactly_as_inference_does_and_trains_the_text_encoder(trained):
    import torch

    from supergen.train import components

    pipe = components.pipeline()
    captions = ["a red striped circle moving left on a blue gradient background", ""]
    ids, mask = components.caption_tokens(pipe.tokenizer, captions)
    with torch.no_grad():
        trained_path = components.embed_tokens(pipe.text_encoder, ids, mask)
    with torch.no_grad():  # as inference runs it
        inference, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False, max_sequence_length=512,
                                          device="cpu")
    assert not inference[:, ids.shape[1]:].any()  # past the kept positions: padding only
    assert torch.equal(trained_path, inference[:, : ids.shape[1]])
    text = checkpoint.load_tensors(str(trained / "dit"), "text")
    assert any(not torch.equal(text[k], v) for k, v in pipe.text_encoder.state_dict().items())


def test_freeze_keeps_the_better_candidate_and_its_latent_statistics(trained):
    state = checkpoint.read_state(str(trained / "vae"))
    scores = {c: checkpoint.read_state(str(trained / c))["runs"][-1]["evals"][-1]["psnr_native_db"]
              for c in ("vae-a", "vae-b")}
    assert state["chosen"] == max(scores, key=scores.get)
    assert len(state["latent_stats"]["latents_std"]) == 16 and min(state["latent_stats"]["latents_std"]) > 0


def test_the_export_is_a_diffusers_folder_that_renders_like_a_users_model(trained, tmp_path):
    import torch

    import supergen
    from supergen import RenderSpec

    out = export.export(str(trained / "vae"), str(trained / "dit"), str(tmp_path / "world"))
    from supergen.models import folder

    with open(os.path.join(out, "supergen.json")) as f, open(os.path.join(folder("world"), "supergen.json")) as g:
        assert json.load(f) == json.load(g)  # an export keeps the shipped model's measured presets
    with open(os.path.join(out, "vae", "config.json")) as f:
        stats = checkpoint.read_state(str(trained / "vae"))["latent_stats"]
        assert json.load(f)["latents_std"] == pytest.approx(stats["latents_std"])
    r = supergen.render(RenderSpec(prompt="a red circle moving left on a blue background", model=out,
                                   width=64, height=64, frames=5, steps=2))
    assert tuple(r.video.shape) == (5, 64, 64, 3) and r.family == "wan2.1-t2v"
    from transformers import UMT5EncoderModel

    shipped = UMT5EncoderModel.from_pretrained(os.path.join(out, "text_encoder")).state_dict()
    text_ema = checkpoint.load_tensors(str(trained / "dit"), "text_ema")
    assert all(torch.equal(shipped[k], v) for k, v in text_ema.items())

    # and back: training goes on from a shipped folder, in the same latent space
    again = export.resume_from(out, str(tmp_path / "ck"))
    assert checkpoint.read_state(os.path.join(again, "vae"))["latent_stats"]["latents_std"] == \
        pytest.approx(stats["latents_std"])
    dit.train(os.path.join(again, "dit"), os.path.join(again, "vae"), minutes=5, device="cpu", batch=2, clips=4,
              max_steps=1)
    assert checkpoint.read_state(os.path.join(again, "dit"))["step"] == 1


def test_a_render_model_trains_on_the_models_text_encoder_and_pairs_with_it(trained, tmp_path):
    """SRDiffusion's render model for the world: a shallower transformer trained on the model's text encoder,
    frozen (the pair shares one conditioning); exported, the two folders make a pair supergen accepts."""
    import torch

    from supergen import RenderSpec
    from supergen.executor import prepare

    small = str(tmp_path / "dit-small")
    dit.train(small, str(trained / "vae"), minutes=5, device="cpu", batch=2, clips=4, max_steps=1, layers=2,
              text_from=str(trained / "dit"))
    shared, own = (checkpoint.load_tensors(d, "text_ema") for d in (str(trained / "dit"), small))
    assert all(torch.equal(shared[k], own[k]) for k in shared)  # the encoder stayed the model's
    model = checkpoint.load_tensors(small, "ema")
    assert {k.split(".")[1] for k in model if k.startswith("blocks.")} == {"0", "1"}
    big_out = export.export(str(trained / "vae"), str(trained / "dit"), str(tmp_path / "world"))
    small_out = export.export(str(trained / "vae"), small, str(tmp_path / "world-small"))
    with open(os.path.join(small_out, "transformer", "config.json")) as f:
        assert json.load(f)["num_layers"] == 2
    spec = prepare(RenderSpec(prompt="a red circle moving left on a blue background", model=big_out,
                              render_model=small_out, width=64, height=64, frames=5, steps=4), here=False)
    assert spec.render_model == small_out


def test_a_widened_decoder_decodes_exactly_as_the_narrow_one_and_its_new_channels_learn():
    import torch
    from diffusers import AutoencoderKLWan

    from supergen.train import components
    from supergen.train.widen import widen_decoder

    narrow = dict(components.VAE_CONFIG, decoder_base_dim=None)
    torch.manual_seed(0)
    old = AutoencoderKLWan(**narrow).eval()
    for p in old.parameters():  # away from the initialisation's symmetries (unit gains, zero biases)
        p.data.add_(0.05 * torch.randn_like(p))
    wide = components.vae().eval()
    wide.load_state_dict(widen_decoder(old.state_dict(), wide))
    assert sum(p.numel() for p in wide.decoder.parameters()) > 2 * sum(p.numel() for p in old.decoder.parameters())
    z = torch.randn(1, 16, 2, 4, 4)
    with torch.no_grad():
        assert torch.allclose(wide.decode(z).sample, old.decode(z).sample, atol=1e-5)
    wide.decode(z).sample.square().mean().backward()
    grad = wide.decoder.up_blocks[3].resnets[0].conv1.weight.grad
    assert grad[narrow["base_dim"]:].abs().sum() > 0  # the new channels' incoming weights are trained


def test_the_image_to_video_variant_starts_as_the_text_model_conditions_as_the_pipeline_and_renders(
        trained, tmp_path, image_path):
    """The I2V world model: its training condition is the stock pipeline's, it starts from the trained
    text-to-video model predicting exactly what that predicts (the image's channels enter at zero weight),
    and its export is a WanImageToVideoPipeline folder that renders from an image as a user's I2V model does."""
    import torch

    import supergen
    from supergen import RenderSpec
    from supergen.train import components

    v, d, i2v = str(trained / "vae"), str(trained / "dit"), str(tmp_path / "dit-i2v")
    stats = checkpoint.read_state(v)["latent_stats"]
    encoder = vae.load(v).eval()
    encoder.register_to_config(**stats)
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    pipe = components.pipeline(encoder, components.transformer(config=components.I2V_TRANSFORMER_CONFIG))
    with torch.no_grad():
        ours = components.image_condition(encoder, image, stats, frames=9)
        stock = pipe.prepare_latents(image, 1, 16, 64, 64, 9, torch.float32, "cpu", None, torch.zeros(1, 16, 3, 8, 8))[1]
    assert torch.allclose(ours, stock, atol=1e-6)

    dit.train(i2v, v, minutes=5, device="cpu", batch=2, clips=4, max_steps=0, i2v=True, init=d, text_from=d)
    t2v = components.transformer()
    t2v.load_state_dict({k: w.float() for k, w in checkpoint.load_tensors(d, "ema").items()})
    start = components.transformer(config=components.I2V_TRANSFORMER_CONFIG)
    start.load_state_dict({k: w.float() for k, w in checkpoint.load_tensors(i2v, "ema").items()})
    x, text = torch.randn(1, 16, 3, 8, 8), torch.randn(1, 8, components.TEXT_DIM)
    with torch.no_grad():
        want = t2v(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text).sample
        got = start(hidden_states=torch.cat([x, ours], 1), timestep=torch.tensor([500.0]),
                    encoder_hidden_states=text).sample
    assert torch.allclose(got, want, atol=1e-5)

    dit.train(i2v, v, minutes=5, device="cpu", batch=2, clips=4, max_steps=1)  # resumes as an I2V model
    assert checkpoint.read_state(i2v)["step"] == 1
    out = export.export(v, i2v, str(tmp_path / "world-i2v"))
    r = supergen.render(RenderSpec(prompt="a red circle moving left on a blue background", model=out,
                                   image=image_path, width=64, height=64, frames=5, steps=2))
    assert r.family == "wan2.1-i2v" and tuple(r.video.shape) == (5, 64, 64, 3)


def test_a_shallower_transformer_starts_from_evenly_spaced_blocks():
    import torch

    from supergen.train import components, transfer

    assert transfer.kept_blocks(6, 3) == [0, 2, 5] and transfer.kept_blocks(6, 1) == [0]
    big = components.transformer(seed=3)
    small = components.transformer(config={**components.TRANSFORMER_CONFIG, "num_layers": 3})
    small.load_state_dict(transfer.adapt(big.state_dict(), small))
    assert torch.equal(small.blocks[1].ffn.net[0].proj.weight, big.blocks[2].ffn.net[0].proj.weight)
    assert torch.equal(small.proj_out.weight, big.proj_out.weight)
    with pytest.raises(ValueError, match="cannot start 7 blocks from 6"):
        transfer.adapt(big.state_dict(), components.transformer(config={**components.TRANSFORMER_CONFIG,
                                                                        "num_layers": 7}))


def test_a_distilled_run_learns_the_teachers_guided_predictions(trained, tmp_path):
    """With the teacher as its own starting point, the student's distillation loss starts at zero (the
    flow target's would not: the data's noise is not what any model predicts, ~0.1 here)."""
    d, folder = str(trained / "dit"), str(tmp_path / "guided")
    dit.train(folder, str(trained / "vae"), minutes=5, device="cpu", batch=2, clips=4, max_steps=1, init=d,
              text_from=d, teacher=d, teacher_guidance=5.0)
    run = checkpoint.read_state(folder)["runs"][-1]
    assert run["teacher"] == d and run["teacher_guidance"] == 5.0
    assert run["first_loss"] < 1e-6


def test_the_guided_distillation_loss_sees_branch_errors_that_guidance_amplifies():
    import torch

    teacher = torch.randn(4, 3)
    err = torch.full((2, 3), 0.1)
    alike = teacher + torch.cat([err, err])  # both branches off the same way: the guided output is off by 0.1
    apart = teacher + torch.cat([err, -err])  # off apart: the guided output by (2g - 1) * 0.1
    plain = torch.nn.functional.mse_loss
    assert plain(alike, teacher) == pytest.approx(plain(apart, teacher))
    assert dit.guided_distillation_loss(teacher, teacher, 5.0) == 0
    assert dit.guided_distillation_loss(apart, teacher, 5.0) > 5 * dit.guided_distillation_loss(alike, teacher, 5.0)
