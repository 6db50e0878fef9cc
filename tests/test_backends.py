"""Every backend, built tiny from configs in code, saved and loaded back through the users' path."""

import pytest
import torch

import supergen
from supergen import RenderSpec, SpecError
from supergen.backends import load_backend, model_info
from supergen.executor import prepare

KINDS = {
    # kind: (family, frames); CogVideoX takes 1 + 8j frames; 1.5 pads 3 latent frames to 4
    "wan-t2v": ("wan2.1-t2v", 5),
    "wan-i2v": ("wan2.1-i2v", 5),
    "wan22-t2v": ("wan2.2-t2v", 5),
    "wan22-i2v": ("wan2.2-i2v", 5),
    "wan22-5b-t2v": ("wan2.2-ti2v", 5),
    "wan22-5b-i2v": ("wan2.2-ti2v", 5),
    "cogvideox-t2v": ("cogvideox1.0-t2v", 9),
    "cogvideox15-t2v": ("cogvideox1.5-t2v", 9),
    "cogvideox15-i2v": ("cogvideox1.5-i2v", 9),
    "cogvideox-i2v": ("cogvideox1.0-i2v", 9),
    "hunyuan-t2v": ("hunyuanvideo1.0-t2v", 5),
    "hunyuan15-t2v": ("hunyuanvideo1.5-t2v", 5),
    "hunyuan-i2v": ("hunyuanvideo1.0-i2v", 5),
    "hunyuan15-i2v": ("hunyuanvideo1.5-i2v", 5),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_render_through_saved_pipeline(kind, tiny_dir, image_path):
    path = tiny_dir(kind)
    family, frames = KINDS[kind]
    info = model_info(path)
    assert info.family == family and info.native_size == (64, 64)
    spec = RenderSpec(prompt="a red circle moving", model=path, width=128, height=96, frames=frames, steps=3,
                      refine_steps=2, image=image_path if info.is_i2v else None,
                      tile=(8, 8) if kind == "cogvideox-i2v" else None)
    r = supergen.render(spec)
    assert tuple(r.video.shape) == (frames, 96, 128, 3) and r.video.dtype == torch.uint8
    assert r.sketch_video.shape[0] == frames
    assert r.spec.sketch_width * r.spec.sketch_height <= 64 * 64
    # 128x96 canvas = 16x12 latent with 8x8 tiles -> 2x2 windows (rows overlap on the 12-cell axis)
    assert r.tiles_per_step == [4, 4]
    # steps x tiles x CFG branches, each its own model call (HunyuanVideo is guidance-distilled: one)
    assert r.forwards["refine"] == 2 * 4 * info.branches(spec.guidance or 5.0)
    assert torch.isfinite(r.latent).all()


def test_i2v_condition_is_cropped_per_tile(tiny_dir, image_path):
    from PIL import Image

    be = load_backend(tiny_dir("wan-i2v"))
    with Image.open(image_path) as im:
        cond = be.encode_conditioning("x", "", 5.0, im.convert("RGB"), (128, 96), 5)
    assert cond.image_latent.shape == (1, 4 + 16, 2, 12, 16)  # mask + image latent, full canvas
    assert "encoder_hidden_states_image" in cond.extra  # CLIP embedding: global, not cropped


@pytest.mark.parametrize("kind,tile,words", [
    ("cogvideox-i2v", (4, 4), "learned positional"),
    ("cogvideox15-t2v", (16, 16), "exceeds the largest tile"),
    ("wan-t2v", (9, 8), "multiple of the patch"),
    ("hunyuan-t2v", (9, 8), "multiple of the patch"),
])
def test_backend_refuses_tiles_it_cannot_take(kind, tile, words, tiny_dir, image_path):
    path = tiny_dir(kind)
    spec = RenderSpec(prompt="x", model=path, width=256, height=256, frames=9, steps=2, tile=tile,
                      image=image_path if "i2v" in kind else None)
    with pytest.raises(SpecError, match=words):
        supergen.render(spec)


def test_cogvideox_frames_must_give_an_odd_latent_count(tiny_dir):
    with pytest.raises(SpecError, match="`frames`.*1 \\+ a multiple of 8"):
        supergen.render(RenderSpec(prompt="x", model=tiny_dir("cogvideox15-t2v"), frames=5, steps=2))


def test_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(SpecError, match="model_index.json"):
        RenderSpec(prompt="x", model=str(tmp_path))


def test_vae_encode_shape_is_checked(tiny_dir):
    from supergen.backends.loading import vae_tiling

    assert vae_tiling(None, 8, (512, 512)) is None
    assert vae_tiling(128, 8, (96, 96)) is None  # fits in one tile: no tiling
    tile, stride = vae_tiling(128, 8, (256, 256))
    assert tile == 128 and stride == 96 and stride % 8 == 0
    be = load_backend(tiny_dir("wan-t2v"))
    z = be.encode(torch.zeros(1, 3, 5, 256, 256), vae_tile=128)
    assert z.shape == (1, 16, 2, 32, 32)


def test_vae_tiles_overlap_as_each_publisher_tiles(tiny_dir):
    """Wan's VAE tiles stride three quarters of a tile; CogVideoX's overlap by its `tile_overlap_factor`,
    a sixth (18% less VAE work at 512-px tiles than a quarter's overlap)."""
    wan, cog = (load_backend(tiny_dir(k)) for k in ("wan-t2v", "cogvideox15-t2v"))
    assert wan.vae_tiling((1440, 2560), 512, encode=True).cols.stride == 384
    tiling = cog.vae_tiling((1440, 2560), 512, encode=True)
    assert tiling.cols.stride == 424 and tiling.shape == (4, 7)
    assert cog.pipe.vae.tile_overlap_factor_width == 1 - 424 / 512


def test_embedded_configs_file_matches_the_built_models():
    """model_info of the embedded models reads tiny_configs.json (no diffusers import); it must say what
    building them says (if this fails, run `tiny.write_configs()`)."""
    from supergen.backends import tiny

    assert tiny.built_configs() == {m: tiny.embedded_configs(m) for m in tiny.EMBEDDED}
    import subprocess
    import sys

    probe = ("import sys; from supergen.backends import model_info; model_info('tiny'); "
             "print('diffusers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_hunyuanvideo_1_0_takes_no_image(tiny_dir, image_path):
    """Refused from the configs, before any weights load: an image (1.0 is text-to-video here)."""
    path = tiny_dir("hunyuan-t2v")
    with pytest.raises(SpecError, match="`image`.*text-to-video"):
        prepare(RenderSpec(prompt="x", model=path, image=image_path), check_memory=False)


@pytest.mark.parametrize("kind", ["hunyuan-i2v", "hunyuan15-i2v", "hunyuan15-t2v", "cogvideox15-i2v"])
def test_an_image_is_checked_against_the_configs_before_any_weights(kind, tiny_dir, image_path):
    """Image-to-video kinds need an image and text-to-video kinds refuse one, from the configs alone."""
    i2v = kind.endswith("i2v")
    with pytest.raises(SpecError, match="pass a conditioning image" if i2v else "takes no image"):
        prepare(RenderSpec(prompt="x", model=tiny_dir(kind), image=None if i2v else image_path), here=False)


def test_hunyuanvideo_i2v_33ch_is_refused_from_its_configs(tiny_dir, tmp_path):
    """HunyuanVideo-I2V-33ch (`latent_concat`) returns four frames fewer than asked: refused, saying why."""
    import json
    import shutil

    path = shutil.copytree(tiny_dir("hunyuan-i2v"), tmp_path / "33ch")
    cfg = json.loads((path / "transformer" / "config.json").read_text())
    (path / "transformer" / "config.json").write_text(json.dumps({**cfg, "image_condition_type": "latent_concat",
                                                                   "in_channels": 9}))
    with pytest.raises(SpecError, match="latent_concat.*first four frames"):
        prepare(RenderSpec(prompt="x", model=str(path), image="unused.png"), here=False)


def test_a_model_folder_is_the_same_model_on_a_worker_only_with_the_same_configs_and_files(tiny_dir, tmp_path):
    """What a worker host answers before a cluster render (`model_problem`): a folder missing there, or one
    whose configs or files differ from the submitter's, is named; a copy is the same model."""
    import json
    import shutil

    from supergen.backends import model_identity, model_problem

    src = tiny_dir("wan-t2v")
    copy = shutil.copytree(src, tmp_path / "copy")
    assert model_problem(str(copy), model_identity(src)) is None  # the same files at another path
    assert model_problem("world", model_identity("world")) is None
    assert "is not on this host" in model_problem(str(tmp_path / "gone"), model_identity(src))
    cfg = copy / "transformer" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "num_layers": 3}))
    assert "differs here from the submitting host's" in model_problem(str(copy), model_identity(src))
