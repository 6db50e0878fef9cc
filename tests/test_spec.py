import pytest

from supergen import RenderSpec, SpecError
from supergen.backends import model_info
from supergen.spec import crop_box, default_sketch_size, parse_tile, resolve, size_warnings

BAD = [
    # (field, value, words the message must contain)
    ("prompt", "", "non-empty"),
    ("prompt", 3, "non-empty"),
    ("negative_prompt", None, "string"),
    ("width", 0, ">= 8"),
    ("width", 100000, "<= 16384"),
    ("height", 12.5, "integer"),
    ("frames", 0, ">= 1"),
    ("steps", 0, ">= 1"),
    ("refine_steps", 0, ">= 1"),
    ("guidance", 0.5, ">= 1"),
    ("guidance", float("nan"), "finite"),
    ("seed", -1, ">= 0"),
    ("seed", "7", "integer"),
    ("model", "", "world"),
    ("model", "/no/such/folder", "neither"),
    ("model", "not a hub id", "neither"),
    ("dtype", "float64", "float32"),
    ("device", "tpu", "cuda"),
    ("tile", (0, 8), "positive"),
    ("tile", (8,), "pair"),
    ("shift_every", -1, ">= 0"),
    ("shift_loop", 0, ">= 1"),
    ("boundary", "reflect", "wrap"),
    ("vae_tile", 4, ">= 16"),
    ("fps", 0, ">= 1"),
    ("cache", "teacache", "none"),
    ("cache_threshold", -0.1, ">= 0"),
    ("image", "", "must be a path"),
    ("sketch_width", 64, "both"),
    ("canvas_width", 4, ">= 8"),
    ("canvas_width", 64, "both"),
]


@pytest.mark.parametrize("field,value,words", BAD, ids=[f"{b[0]}={b[1]!r}" for b in BAD])
def test_invalid_field_names_the_field(field, value, words):
    kwargs = {"prompt": "a cat", field: value}
    with pytest.raises(SpecError) as e:
        RenderSpec(**kwargs)
    assert e.value.field == field
    assert f"`{field}`" in str(e.value) and words in str(e.value)


def test_refine_steps_must_not_exceed_steps():
    with pytest.raises(SpecError, match="`refine_steps`.*<= steps"):
        RenderSpec(prompt="x", steps=4, refine_steps=5)


def test_device_cuda_is_a_value_refused_only_where_the_render_runs():
    import torch

    from supergen.executor import prepare

    if torch.cuda.is_available():
        pytest.skip("machine has CUDA")
    spec = prepare(RenderSpec(prompt="x", device="cuda"), here=False)  # a laptop builds it for a GPU cluster
    assert spec.device == "cuda"
    with pytest.raises(SpecError, match="`device`.*no CUDA"):
        prepare(RenderSpec(prompt="x", device="cuda"))  # to run here


def test_image_files_are_checked_where_they_are_read_not_in_the_spec(tmp_path):
    """The spec is a value: a path another host holds is a valid spec here. Where the file is read (the
    in-process render, a store being created) a missing or unreadable one is refused before anything loads
    or is written."""
    import supergen
    from storage import RenderStore

    bad = tmp_path / "x.png"
    bad.write_text("not an image")
    for path, words in ((str(tmp_path / "none.png"), "no such file"), (str(bad), "not a readable image")):
        spec = RenderSpec(prompt="x", model="tiny-i2v", image=path, frames=5, steps=2)
        with pytest.raises(SpecError, match=f"`image`.*{words}"):
            supergen.render(spec)
        with pytest.raises(SpecError, match=f"`image`.*{words}"):
            RenderStore.create(str(tmp_path / "store"), spec)
        assert not (tmp_path / "store").exists()


RESOLVE_BAD = [
    ("canvas_width", dict(width=100, canvas_width=128, canvas_height=256), "must be 112"),
    ("canvas_height", dict(height=72, canvas_width=256, canvas_height=96), "must be 80"),
    ("frames", dict(frames=10), "1 + a multiple of 4"),
    ("tile", dict(tile=(7, 8)), "multiple of the patch"),
    ("tile", dict(tile=(40, 8)), "larger than the latent canvas"),
    ("image", dict(image="IMAGE"), "text-to-video"),
    ("sketch_width", dict(sketch_width=512, sketch_height=64), "must not exceed"),
]


@pytest.mark.parametrize("field,kw,words", RESOLVE_BAD, ids=[r[0] for r in RESOLVE_BAD])
def test_resolve_checks_against_the_model(field, kw, words, tmp_path):
    if kw.get("image") == "IMAGE":
        from PIL import Image

        Image.new("RGB", (8, 8)).save(tmp_path / "i.png")
        kw = {**kw, "image": str(tmp_path / "i.png")}
    spec = RenderSpec(prompt="x", **kw)
    with pytest.raises(SpecError) as e:
        resolve(spec, model_info("tiny"))
    assert e.value.field == field and words in str(e.value)


def test_i2v_model_requires_image():
    with pytest.raises(SpecError, match="`image`.*image-to-video"):
        resolve(RenderSpec(prompt="x", model="tiny-i2v"), model_info("tiny-i2v"))


def test_resolve_fills_presets():
    s = resolve(RenderSpec(prompt="x"), model_info("tiny"))
    assert (s.width, s.height, s.sketch_width, s.sketch_height) == (256, 256, 64, 64)
    assert (s.canvas_width, s.canvas_height) == (256, 256)
    assert s.tile == (8, 8) and s.frames == 9 and s.steps == 10 and s.refine_steps == 9
    assert RenderSpec.from_dict(s.to_dict()) == s


def test_sizes_off_the_cell_grid_render_on_the_covering_canvas():
    s = resolve(RenderSpec(prompt="x", width=100, height=72), model_info("tiny"))
    assert (s.width, s.height, s.canvas_width, s.canvas_height) == (100, 72, 112, 80)
    assert s.canvas_size == (112, 80) and s.tile == (8, 8)  # tiles cover the 14x10-cell canvas
    assert resolve(s, model_info("tiny")) == s  # a resolved spec (render.json's) resolves to itself
    assert RenderSpec.from_dict(s.to_dict()) == s and s.to_dict()["canvas_width"] == 112
    assert crop_box(s) == (4, 6, 72, 100)
    assert "112x80 canvas" in size_warnings(s)[0]
    assert size_warnings(resolve(RenderSpec(prompt="x"), model_info("tiny"))) == []
    with pytest.raises(SpecError, match="`canvas_width`.*>= width"):
        RenderSpec(prompt="x", width=100, canvas_width=96, canvas_height=96)
    with pytest.raises(SpecError, match="`frames`"):  # time is never rounded
        resolve(RenderSpec(prompt="x", width=100, height=72, frames=8), model_info("tiny"))


def test_default_sketch_keeps_aspect_at_native_area():
    assert default_sketch_size(2560, 1440, (1280, 720), 16) == (1280, 720)
    assert default_sketch_size(3840, 2160, (1280, 720), 16) == (1280, 720)
    assert default_sketch_size(1920, 1080, (832, 480), 16) == (832, 464)  # 16:9 at <= 832*480 px
    w, h = default_sketch_size(1080, 1920, (832, 480), 16)
    assert h > w and w * h <= 832 * 480


def test_parse_tile():
    assert parse_tile("60x104") == (60, 104)
    with pytest.raises(SpecError, match="`tile`"):
        parse_tile("60")


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(SpecError, match="`colour`"):
        RenderSpec.from_dict({"prompt": "x", "colour": 1})


def test_the_vae_dtype_preset_follows_the_models_publisher(tiny_dir):
    """CogVideoX's published pipelines run the VAE in the pipeline's dtype, Wan's in float32; a given
    vae_dtype wins, and an unknown one is refused by name."""
    cog, wan = model_info(tiny_dir("cogvideox15-t2v")), model_info(tiny_dir("wan-t2v"))
    spec = RenderSpec(prompt="x", dtype="bfloat16")
    assert resolve(spec, cog).vae_dtype == "bfloat16" and resolve(spec, wan).vae_dtype == "float32"
    assert resolve(RenderSpec(prompt="x"), cog).vae_dtype == "float32"
    assert resolve(spec.replace(vae_dtype="float32"), cog).vae_dtype == "float32"
    assert resolve(spec.replace(vae_dtype="bfloat16"), wan).vae_dtype == "bfloat16"
    with pytest.raises(SpecError) as e:
        RenderSpec(prompt="x", vae_dtype="fp8")
    assert e.value.field == "vae_dtype"


def test_the_boundary_preset_is_the_models_measured_rule():
    """The world model clamps its windows up to half the schedule refined and wraps them deeper
    (docs/quality.md); a model without the rule wraps (the paper's torus); a given boundary wins."""
    from supergen.executor import prepare

    def boundary(**kw):
        return prepare(RenderSpec(prompt="a red circle", **kw), check_memory=False).boundary

    assert boundary() == "clamp"  # the preset depth: 6 of 20
    assert boundary(steps=20, refine_steps=10) == "clamp"
    assert boundary(steps=20, refine_steps=11) == "wrap"
    assert boundary(steps=20, refine_steps=18, boundary="clamp") == "clamp"
    assert boundary(boundary="wrap") == "wrap"
    assert boundary(model="tiny", width=128, height=128, frames=5) == "wrap"
