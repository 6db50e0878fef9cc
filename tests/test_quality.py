"""The offline quality suite: every metric on cases whose answer is known, and `supergen quality` on a real
render store."""

import dataclasses
import json
import random
import shutil

import pytest
import torch

from flows.cli import main
from supergen import quality as q
from supergen import world
from supergen.upscale import to_uint8, upscale_video

# the embedded model's 4x preset: 64x64 sketch, 256x256 output, 8x8-cell (64 px) tiles, 9 refinement steps
SPEC = dict(prompt="a red circle moving left on a blue background", width=256, height=256, frames=5, steps=10,
            refine_steps=9, tile=[8, 8], boundary="wrap", shift_every=1, shift_loop=16)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The metrics work on small tensors: a second intra-op thread buys nothing, and on a busy 2-core box
    OpenMP's waiting threads make them some 30x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _render(scene, size, frames=5):
    return to_uint8(world.render([scene], size, size, frames))


def _scenes(n, seed=0):
    rng = random.Random(seed)
    return [world.sample_scene(rng, frames=5) for _ in range(n)]


def _smooth(seed, frames=5, size=256, sigma=6.0, sigma_t=1.0):
    """Gaussian-filtered noise, smooth in space and time: content with no preferred position or period."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(3, frames, size, size, generator=g)
    ft = torch.fft.fftfreq(frames).view(-1, 1, 1)
    fy, fx = torch.fft.fftfreq(size).view(1, -1, 1), torch.fft.fftfreq(size).view(1, 1, -1)
    k = torch.exp(-2 * torch.pi**2 * (sigma**2 * (fy**2 + fx**2) + sigma_t**2 * ft**2))
    z = torch.fft.ifftn(torch.fft.fftn(z, dim=(1, 2, 3)) * k, dim=(1, 2, 3)).real
    return (z / z.std() * 40 + 128).permute(1, 2, 3, 0).round().clamp(0, 255).to(torch.uint8)


def _lines(video, rows, cols, amplitude=6):
    """Darken one-pixel rows and columns: a drawn grid."""
    x = video.int().clone()
    x[:, rows] -= amplitude
    x[:, :, cols] -= amplitude
    return x.clamp(0, 255).to(torch.uint8)


def _mosaic(video, rows, cols, amplitude=6):
    """Offset every tile's brightness, alternately up and down: seams as steps, the way tiles that
    disagree look."""
    H, W = video.shape[1:3]
    ty = torch.bucketize(torch.arange(H), torch.tensor(rows), right=True)
    tx = torch.bucketize(torch.arange(W), torch.tensor(cols), right=True)
    sign = ((ty[:, None] + tx[None, :]) % 2) * 2 - 1  # (H, W) checkerboard of tiles
    return (video.int() + amplitude * sign[None, :, :, None]).clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def clean_videos():
    """256x256 clips with no grid: four world scenes and two smooth random fields."""
    return {**{f"world{i}": _render(s, 256) for i, s in enumerate(_scenes(4))},
            **{f"smooth{i}": _smooth(i) for i in range(2)}}


# -- geometry --------------------------------------------------------------------------------------------

def test_seam_lines_are_the_last_steps_window_edges():
    rows, cols = q.seam_lines(SPEC)
    # last step: 9 shifts of 1 cell -> windows start at cells 9, 17, 25 and 1 (wrapping): pixels x8
    assert rows == cols == [8, 72, 136, 200]
    assert q.tile_pitch(SPEC) == (64.0, 64.0)
    # 36 cells in 5 wrapping windows of 8 overlap: both edges of every window count, never the border
    odd = {**SPEC, "width": 288, "refine_steps": 1, "steps": 1}
    starts = [k * 36 // 5 + 1 for k in range(5)]
    assert q.seam_lines(odd)[1] == sorted({s * 8 for s in starts} | {(s + 8) % 36 * 8 for s in starts})
    assert q.tile_pitch(odd)[1] == pytest.approx(36 / 5 * 8)
    one = {**SPEC, "width": 64}
    assert q.seam_lines(one)[1] == [] and q.tile_pitch(one)[1] is None


# -- grid visibility -------------------------------------------------------------------------------------

@pytest.mark.parametrize("draw", [_lines, _mosaic])
def test_a_grid_at_the_tile_pitch_raises_seam_and_periodicity(clean_videos, draw):
    rows, cols = q.seam_lines(SPEC)
    pitch = q.tile_pitch(SPEC)
    for name, clean in clean_videos.items():
        assert q.seam_score(clean, rows, cols)["score"] < 1.1, name
        assert q.periodicity_score(clean, pitch)["score"] < 1.1, name
        grid = draw(clean, rows, cols)
        assert q.seam_score(grid, rows, cols)["score"] > 1.3, name
        assert q.periodicity_score(grid, pitch)["score"] > 1.3, name


def test_periodicity_needs_no_phase_but_the_seam_score_does(clean_videos):
    """A grid at the pitch but away from the last step's lines (an earlier step's grid) is periodic, yet
    the seam score, which looks only at the last step's lines, does not see it."""
    rows, cols = q.seam_lines(SPEC)
    elsewhere = [r + 23 for r in rows]
    for name, clean in clean_videos.items():
        grid = _lines(clean, elsewhere, elsewhere)
        assert q.periodicity_score(grid, q.tile_pitch(SPEC))["score"] > 1.3, name
        assert q.seam_score(grid, rows, cols)["score"] < 1.1, name


# -- time ------------------------------------------------------------------------------------------------

def test_injected_flicker_raises_flicker(clean_videos):
    clips = {**{k: v for k, v in clean_videos.items() if k.startswith("world")}, "slow": _smooth(7, sigma_t=4.0)}
    for name, clean in clips.items():
        flicked = clean.int().clone()
        flicked[1::2] += 10  # every other frame brighter
        flicked = flicked.clamp(0, 255).to(torch.uint8)
        a, b = q.flicker(clean), q.flicker(flicked)
        assert b["flicker"] > a["flicker"] + 5 and b["excursion"] > a["excursion"] + 5, name
    still = clean_videos["world0"][:1].expand(5, -1, -1, -1)
    assert q.flicker(still) == {"flicker": 0.0, "excursion": 0.0, "frame_diff": 0.0}
    assert q.flicker(still[:2])["flicker"] is None


# -- against the sketch ----------------------------------------------------------------------------------

def test_sketch_fidelity_and_detail_gain_of_the_ground_truth():
    a, b = _scenes(2, seed=5)
    hi, lo, other = _render(a, 256), _render(a, 64), _render(b, 64)
    same = q.sketch_fidelity(hi, lo)
    assert same["psnr_db"] > 30 and same["ssim"] > 0.9
    wrong = q.sketch_fidelity(hi, other)
    assert wrong["psnr_db"] < 20 and wrong["ssim"] < same["ssim"] - 0.2
    assert q.detail_gain(hi, lo) > 1.5  # the 4x truth is sharper than the sketch's bicubic upscale...
    lo_f = lo.permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # (1, 3, F, h, w)
    upscaled = to_uint8(upscale_video(lo_f, (256, 256)))
    assert q.detail_gain(upscaled, lo) == pytest.approx(1.0, abs=0.05)  # ...which adds nothing by itself
    with pytest.raises(ValueError, match="frames"):
        q.sketch_fidelity(hi, lo[:3])


# -- the world's captions --------------------------------------------------------------------------------

def test_caption_adherence_on_ground_truth_and_on_wrong_captions():
    scenes = _scenes(20, seed=1)
    videos = [_render(s, 128) for s in scenes]
    results = [q.world_adherence(v, s.caption) for v, s in zip(videos, scenes)]
    assert sum(r["passed"] for r in results) >= 18, [r["checks"] for r in results if not r["passed"]]
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}
    swapped = 0
    for v, s, r in zip(videos, scenes, results):
        if not r["passed"]:
            continue
        other_bg = next(c for c in world.PALETTE if c not in {s.background} | {sh.colour for sh in s.shapes})
        wrong_bg = q.world_adherence(v, dataclasses.replace(s, background=other_bg).caption)
        assert not wrong_bg["checks"]["background"] and not wrong_bg["passed"], s.caption
        j = next((j for j, sh in enumerate(s.shapes) if sh.motion in opposite), None)
        if j is not None:
            shapes = list(s.shapes)
            shapes[j] = dataclasses.replace(shapes[j], motion=opposite[shapes[j].motion])
            wrong_way = q.world_adherence(v, dataclasses.replace(s, shapes=tuple(shapes)).caption)
            assert not wrong_way["checks"][f"object{j}_motion"] and not wrong_way["passed"], s.caption
            swapped += 1
    assert swapped >= 10
    with pytest.raises(ValueError, match="world caption"):
        q.world_adherence(videos[0], "a lion walking through tall grass")


def test_a_duplicated_object_is_counted_and_flagged():
    one = world.Shape("circle", "red", "striped", "right", 0.12, (0.25, 0.3), (0.3, 0.0))
    twin = dataclasses.replace(one, start=(0.7, 0.72))
    single = world.Scene("blue", True, (one,), gradient_angle=1.0)
    doubled = dataclasses.replace(single, shapes=(one, twin))
    sketch = _render(single, 64)
    dup = q.duplication(_render(doubled, 256), sketch, single.caption)
    assert dup["counts"]["red"] == {"output": 2, "sketch": 1, "caption": 1} and dup["duplicated"]
    fine = q.duplication(_render(single, 256), sketch, single.caption)
    assert fine["counts"]["red"]["output"] == 1 and not fine["duplicated"]


def test_assess_combines_what_applies():
    scene = _scenes(1, seed=3)[0]
    hi, lo = _render(scene, 128), _render(scene, 64)
    spec = {**SPEC, "prompt": scene.caption, "width": 128, "height": 128}
    r = q.assess(hi, lo, spec, reference=hi)
    assert set(r) == {"video", "sketch", "vae_spatial", "seam", "periodicity", "flicker", "sketch_fidelity",
                      "detail_gain", "world", "reference"}
    assert r["world"]["adherence"]["passed"] and not r["world"]["duplication"]["duplicated"]
    assert r["reference"] == {"psnr_db": "inf", "ssim": 1.0}
    json.dumps(r, allow_nan=False)  # plain JSON: no NaN or Infinity
    other = q.assess(hi, lo, {**spec, "prompt": "a lion at sunset"}, reference=lo)
    assert "skipped" in other["world"] and "skipped" in other["reference"]


def test_panel_draws_the_seams_on_the_energy_map():
    scene = _scenes(1)[0]
    img = q.panel(_render(scene, 256), _render(scene, 64), SPEC, frames=3)
    assert img.size == (3 * 256, 3 * (256 + 14))
    energy_row = torch.as_tensor(list(img.crop((0, 2 * 270 + 14, 256, 3 * 270)).getdata())).view(256, 256, 3)
    red = (energy_row[..., 0] == 255) & (energy_row[..., 1] == 40)
    assert red[:, 72].sum() == 64 and red[:, 101].sum() == 0  # a column seam, and a column between seams


# -- the command -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality") / "r"
    assert main(["render", "--model", "tiny", "--prompt", SPEC["prompt"], "--width", "128", "--height", "128",
                 "--frames", "5", "--steps", "2", "--out", str(out), "--quiet"]) == 0
    return out


def test_quality_command_reports_and_saves(rendered, tmp_path, capsys, monkeypatch):
    capsys.readouterr()
    assert main(["quality", str(rendered)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"seam", "periodicity", "flicker", "sketch_fidelity", "detail_gain", "world", "reference"} <= set(report)
    assert report["sketch_source"] == "sketch/frames" and report["vae_spatial"] == 8
    assert report["seam"]["rows_px"] == [16, 80] and "adherence" in report["world"]
    assert json.loads((rendered / "quality.json").read_text()) == report
    from PIL import Image

    with Image.open(rendered / "quality.png") as im:
        assert im.size == (3 * 128, 3 * (128 + 14))

    # --out elsewhere, a reference, and a store that refuses writes
    from storage import RenderStore, StoreError

    def refuse(self, name, data):
        raise StoreError(f"no permission to write to {self.url}")

    monkeypatch.setattr(RenderStore, "write_file", refuse)
    assert main(["quality", str(rendered), "--reference", str(rendered), "--out", str(tmp_path / "q")]) == 0
    assert json.loads(capsys.readouterr().out)["reference"]["ssim"] == 1.0
    assert (tmp_path / "q" / "quality.json").exists() and (tmp_path / "q" / "quality.png").exists()
    assert main(["quality", str(rendered)]) == 0
    assert "could not save" in capsys.readouterr().err


def test_quality_falls_back_to_the_sketch_mp4_and_refuses_incomplete_stores(rendered, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(rendered, old)
    shutil.rmtree(old / "data.zarr" / "sketch" / "frames")  # a store written before sketch/frames existed
    capsys.readouterr()
    assert main(["quality", str(old), "--out", str(tmp_path / "q")]) == 0
    assert json.loads(capsys.readouterr().out)["sketch_source"] == "sketch.mp4 (lossy)"
    (old / "COMPLETE").unlink()
    assert main(["quality", str(old)]) == 2
    assert "not a complete render" in capsys.readouterr().err
    assert main(["quality", str(rendered), "--reference", str(old)]) == 2
