"""Output sizes off the model's cell grid (rendered on the covering canvas, centre-cropped back) and the
default sketch's aspect-ratio guarantee, against the real families' size facts."""

import json
import math
import random

import numpy as np
import pytest
import torch

import supergen
from supergen import RenderSpec, SpecError
from supergen.backends import model_info
from supergen.backends.cogvideox import CogVideoXBackend
from supergen.backends.wan import WanBackend
from supergen.spec import (ASPECT_TOLERANCE, MIN_SKETCH_AREA, crop_box, crop_to_request, resolve, size_warnings,
                           stretch)

# 70x36 is not a whole number of the tiny model's 16-px cells: the canvas is 80x48, the output its centre,
# 5 px in from the left and 6 from the top (different margins, so a swapped axis shows)
SMALL = dict(prompt="a red circle moving", model="tiny", frames=1, steps=2, refine_steps=1, seed=3)


@pytest.fixture(scope="module")
def renders():
    off = supergen.render(RenderSpec(**SMALL, width=70, height=36))
    canvas = supergen.render(RenderSpec(**SMALL, width=80, height=48))
    return off, canvas


def test_off_grid_output_is_the_centre_of_the_canvas_render(renders):
    off, canvas = renders
    s = off.spec
    assert (s.width, s.height, s.canvas_width, s.canvas_height) == (70, 36, 80, 48)
    assert crop_box(s) == (6, 5, 36, 70)
    assert tuple(off.video.shape) == (1, 36, 70, 3) and off.video.is_contiguous()
    assert tuple(canvas.video.shape) == (1, 48, 80, 3)
    # the same render underneath: same sketch, same canvas latent, same tiles
    assert (s.sketch_width, s.sketch_height, s.tile) == (canvas.spec.sketch_width, canvas.spec.sketch_height,
                                                          canvas.spec.tile)
    assert off.tiles_per_step == canvas.tiles_per_step
    assert torch.equal(off.latent, canvas.latent) and off.latent.shape[-2:] == (6, 10)
    assert torch.equal(off.sketch_video, canvas.sketch_video)  # the sketch is the whole canvas's, uncropped
    assert torch.equal(off.video, canvas.video[:, 6:42, 5:75])
    assert not torch.equal(off.video, canvas.video[:, 5:41, 6:76])  # the pixels do differ across offsets
    assert len(off.warnings) == 1 and "80x48 canvas" in off.warnings[0]
    assert canvas.warnings == [] and off.report()["warnings"] == off.warnings


def test_store_writes_the_requested_size(renders, tmp_path):
    from PIL import Image

    from storage import RenderStore
    from supergen.outputs import read_mp4, write_outputs

    off, _ = renders
    store = RenderStore.create(str(tmp_path / "s"), off.spec)
    write_outputs(store, off)
    assert torch.equal(torch.from_numpy(store.video_frames()), off.video)
    assert read_mp4(str(tmp_path / "s" / "video.mp4")).shape == (1, 36, 70, 3)
    with Image.open(tmp_path / "s" / "contact_sheet.png") as im:
        assert im.size == (70, 2 * 36)
    rec = json.loads((tmp_path / "s" / "render.json").read_text())
    assert (rec["spec"]["width"], rec["spec"]["height"]) == (70, 36)
    assert (rec["spec"]["canvas_width"], rec["spec"]["canvas_height"]) == (80, 48)
    assert rec["video_shape"] == [1, 36, 70, 3] and rec["warnings"] == off.warnings
    assert tuple(store.load_stage("final").shape[-2:]) == (6, 10)  # latents stay canvas-sized
    assert RenderStore.open(str(tmp_path / "s")).spec() == off.spec  # the canvas survives the store


def test_cluster_export_crops_like_the_executor(renders, tmp_path):
    """`export_stage` (the cluster's last stage) decodes the stored final latent and crops it with the same
    function: the same frames as the in-process render."""
    from distributed import Client, LocalCluster

    from storage import RenderStore
    from tasks.model import ModelHolder
    from tasks.stages import export_stage

    off, _ = renders
    store = RenderStore.create(str(tmp_path / "s"), off.spec)
    store.save_stage("sketch", off.sketch_latent)
    store.save_stage("final", off.latent)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        client.register_plugin(ModelHolder())
        client.submit(export_stage, store, pure=False).result()
    st = RenderStore.open(str(tmp_path / "s"))
    assert torch.equal(torch.from_numpy(st.video_frames()), off.video)
    assert torch.equal(torch.from_numpy(st.sketch_frames()), off.sketch_video)


def test_crop_to_request_is_pure_and_checks_its_input():
    spec = resolve(RenderSpec(prompt="x", model="tiny", width=70, height=36), model_info("tiny"))
    canvas = torch.arange(2 * 48 * 80 * 3).reshape(2, 48, 80, 3)
    out = crop_to_request(canvas, spec)
    assert torch.equal(out, canvas[:, 6:42, 5:75])
    assert np.array_equal(crop_to_request(canvas.numpy(), spec), out.numpy())  # numpy too, same pixels
    with pytest.raises(ValueError, match="80x48 canvas"):
        crop_to_request(out, spec)  # cropping twice is a mistake, not a no-op
    whole = resolve(RenderSpec(prompt="x", model="tiny", width=80, height=48), model_info("tiny"))
    assert crop_to_request(canvas, whole) is canvas


def test_sizes_that_stay_errors():
    with pytest.raises(SpecError, match="`width`.*even"):  # video.mp4 (H.264 4:2:0) takes even sides only
        RenderSpec(prompt="x", width=71)
    with pytest.raises(SpecError, match="`frames`"):  # time is never rounded or cropped
        resolve(RenderSpec(prompt="x", width=70, height=36, frames=6), model_info("tiny"))
    with pytest.raises(SpecError, match="`canvas_height`.*must be 48"):
        resolve(RenderSpec(prompt="x", width=70, height=36, canvas_width=80, canvas_height=64), model_info("tiny"))


# -- the default sketch's aspect ratio -------------------------------------------------------------------

def _wan(heads: int, ti2v: bool = False) -> object:
    return WanBackend.info_from_configs({
        "index": {"_class_name": "WanPipeline", **({"expand_timesteps": True} if ti2v else {})},
        "transformer": {"num_attention_heads": heads, "attention_head_dim": 128, "patch_size": [1, 2, 2]},
        "vae": {"z_dim": 48, "scale_factor_spatial": 16} if ti2v else {"z_dim": 16},
        "scheduler": {}})


def _cog(sample_w: int, sample_h: int, patch_t=None) -> object:
    return CogVideoXBackend.info_from_configs({
        "index": {"_class_name": "CogVideoXPipeline"},
        "transformer": {"patch_size": 2, "patch_size_t": patch_t, "sample_width": sample_w,
                        "sample_height": sample_h, "use_learned_positional_embeddings": False},
        "vae": {"block_out_channels": [128, 256, 256, 512], "latent_channels": 16, "temporal_compression_ratio": 4},
        "scheduler": {}})


# text-to-video families with their real native sizes and size grids (the model configs' facts, read by the
# backends' own `info_from_configs`), plus the embedded models
INFOS = {
    "world": model_info("world"),
    "tiny": model_info("tiny"),
    "wan2.1-1.3b": _wan(12),  # 832x480, 16-px cells
    "wan2.1-14b": _wan(40),  # 1280x720
    "wan2.2-ti2v-5b": _wan(24, ti2v=True),  # 1280x704, 16x VAE: 32-px cells
    "cogvideox1.0": _cog(90, 60),  # 720x480
    "cogvideox1.5": _cog(170, 96, patch_t=2),  # 1360x768
}
CASES = [(1920, 1080), (1080, 1920), (3840, 2160), (2560, 1440), (1280, 720), (720, 1280), (2560, 1080),
         (1024, 1024), (4096, 512), (512, 4096), (256, 144), (70, 36), (256, 96), (2048, 16)]
_rng = random.Random(11)
CASES += [(2 * _rng.randint(4, 2048), 2 * _rng.randint(4, 2048)) for _ in range(50)]
CASES += [(2 * _rng.randint(4, 256), 2 * _rng.randint(4, 256)) for _ in range(30)]  # small canvases


def _all_sketches(cw: int, ch: int, native: tuple[int, int], m: int):
    """Every sketch size the spec allows (multiples of m, within the canvas and the native area), by brute
    force: (w, h, area, stretch) arrays."""
    w, h = np.meshgrid(np.arange(m, cw + 1, m), np.arange(m, ch + 1, m))
    w, h = w.ravel(), h.ravel()
    keep = w * h <= native[0] * native[1]
    w, h = w[keep], h[keep]
    r = (w * ch) / (h * cw)
    return w, h, w * h, np.maximum(r, 1 / r) - 1


@pytest.mark.parametrize("name", list(INFOS))
def test_default_sketch_keeps_the_aspect_whenever_the_grid_allows(name):
    info = INFOS[name]
    m_w, m_h = info.vae_spatial * info.patch[2], info.vae_spatial * info.patch[1]
    m = math.lcm(m_w, m_h, info.sketch_multiple)
    cap = info.native_size[0] * info.native_size[1]
    within = 0
    for width, height in CASES:
        try:
            s = resolve(RenderSpec(prompt="x", width=width, height=height), info)
        except SpecError as e:  # only a canvas too small for any sketch on the model's grid
            assert e.field == "sketch_width" and min(-(-width // m_w) * m_w, -(-height // m_h) * m_h) < m
            continue
        cw, ch = s.canvas_size
        assert cw % m_w == 0 and ch % m_h == 0 and 0 <= cw - width < m_w and 0 <= ch - height < m_h
        sw, sh = s.sketch_width, s.sketch_height
        assert sw % m == 0 and sh % m == 0 and sw <= cw and sh <= ch and sw * sh <= cap
        err = stretch(sw, sh, cw, ch)
        w, h, area, errs = _all_sketches(cw, ch, info.native_size, m)
        big = area >= MIN_SKETCH_AREA * min(cap, cw * ch)
        good = big & (errs <= ASPECT_TOLERANCE)
        case = f"{name} {width}x{height} (canvas {cw}x{ch}) -> sketch {sw}x{sh}"
        if good.any():  # some valid sketch keeps the aspect: the default does, at the largest such area
            within += 1
            assert err <= ASPECT_TOLERANCE, case
            assert sw * sh == area[good].max() and sw * sh >= MIN_SKETCH_AREA * min(cap, cw * ch), case
        elif big.any():  # none does: the closest of those of a sensible size
            assert math.isclose(err, errs[big].min(), rel_tol=1e-12, abs_tol=1e-12), case
        else:
            assert math.isclose(err, errs.min(), rel_tol=1e-12, abs_tol=1e-12), case
        stretched = [w for w in size_warnings(s) if "stretches" in w]
        assert bool(stretched) == (err > ASPECT_TOLERANCE), case
        if stretched:
            assert f"{100 * err:.1f}%" in stretched[0] and f"{sw}x{sh}" in stretched[0], case
    if name not in ("world", "tiny"):  # real models' fine grids keep almost every case within 2%
        assert within >= 0.9 * len(CASES)


def test_the_sizes_the_readme_names():
    wan = INFOS["wan2.1-1.3b"]
    s = resolve(RenderSpec(prompt="x", width=1920, height=1080), wan)
    assert (s.width, s.height, s.canvas_width, s.canvas_height) == (1920, 1080, 1920, 1088)
    assert crop_box(s) == (4, 0, 1080, 1920)
    assert stretch(s.sketch_width, s.sketch_height, 1920, 1088) <= ASPECT_TOLERANCE
    for w, h in ((1280, 720), (2560, 1440), (3840, 2160)):
        s = resolve(RenderSpec(prompt="x", width=w, height=h), wan)
        assert s.canvas_size == (w, h) and size_warnings(s) == []
    big = INFOS["wan2.1-14b"]
    for w, h in ((2560, 1440), (3840, 2160)):  # the paper's sizes: the sketch is the native 1280x720
        s = resolve(RenderSpec(prompt="x", width=w, height=h), big)
        assert (s.sketch_width, s.sketch_height) == (1280, 720)
