"""The procedural world: exact ground truth at any resolution, captions that say what is drawn."""

import random

import pytest
import torch
import torch.nn.functional as F

from supergen import world


def _scenes(n, seed=0):
    rng = random.Random(seed)
    return [world.sample_scene(rng) for _ in range(n)]


def _psnr(a, b):
    return float(10 * torch.log10(4 / ((a - b) ** 2).mean()))


def test_the_4x_render_is_the_ground_truth_of_the_sketch_size_render():
    scenes = _scenes(6)
    lo = world.render(scenes, 64, 64, 5)
    hi = world.render(scenes, 256, 256, 5)
    down = F.avg_pool3d(hi, (1, 4, 4))
    assert _psnr(down, lo) > 35  # same scene, same coverage model: only anti-aliasing differs
    other = world.render(_scenes(6, seed=1), 64, 64, 5)
    assert _psnr(down, other) < 20


def test_a_crop_view_is_exactly_what_a_tile_of_the_larger_canvas_sees():
    scenes = _scenes(3)
    hi = world.render(scenes, 256, 256, 3)
    tile = world.render(scenes, 64, 64, 3, views=[(0.25, 0.5, 0.25, 0.25)] * 3)
    assert torch.allclose(tile, hi[..., 128:192, 64:128], atol=1e-4)


def test_textures_finer_than_two_pixels_fade_to_their_mean_instead_of_aliasing():
    shape = world.Shape("square", "red", "striped", "left", 0.4, (0.5, 0.5), (0.0, 0.0), period=0.01, angle=0.3)
    scene = world.Scene("blue", False, (shape,))
    inside = (slice(None), slice(None), slice(None), slice(24, 40), slice(24, 40))
    lo = world.render([scene], 64, 64, 1)[inside]  # period 0.64 px: must be flat
    hi = world.render([scene], 1024, 1024, 1)[:, :, :, 384:640, 384:640]  # period 10 px: visible stripes
    assert _spread(lo) < 0.02 and _spread(hi) > 0.2


def _spread(v):
    """Largest per-channel standard deviation over the pixels."""
    return v.flatten(2).std(dim=2).max()


def test_captions_parse_back_to_the_scene_and_scenes_round_trip():
    for s in _scenes(50):
        facts = world.parse_caption(s.caption)
        assert facts["background"] == s.background and facts["gradient"] == s.gradient
        assert [(f["kind"], f["colour"], f["texture"], f["motion"]) for f in facts["shapes"]] == \
               [(sh.kind, sh.colour, sh.texture, sh.motion) for sh in s.shapes]
        assert world.Scene.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="background"):
        world.parse_caption("a cat sitting on a mat")


def test_shapes_move_as_captioned_and_stay_in_the_frame():
    for s in _scenes(100, seed=3):
        c = world.shape_centres(s, world.CLIP_FRAMES + 1)
        for k, sh in enumerate(s.shapes):
            assert (c[:, k, 0] >= sh.radius - 1e-9).all() and (c[:, k, 0] <= s.aspect - sh.radius + 1e-9).all()
            assert (c[:, k, 1] >= sh.radius - 1e-9).all() and (c[:, k, 1] <= 1 - sh.radius + 1e-9).all()
            if sh.motion in world.DIRECTIONS:
                dx, dy = world.DIRECTIONS[sh.motion]
                moved = c[-1, k] - c[0, k]
                assert moved[0] * dx + moved[1] * dy > 0.2  # at least a fifth of the frame
